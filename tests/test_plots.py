"""Figures say SMOKE when they come from smoke runs and land apart from real ones; the
speed helpers measure something sensible."""
from __future__ import annotations

from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.container import ErrorbarContainer  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from kdtp import latency, plots  # noqa: E402


@pytest.fixture(autouse=True)
def _figures(tmp_path, monkeypatch):
    monkeypatch.setenv("KDTP_FIGURES_DIR", str(tmp_path / "figures"))
    yield
    plt.close("all")


def fake_run(name: str, acc: float, smoke: bool = False, epochs: int = 3) -> SimpleNamespace:
    hist = {"train_loss": [2.0 - 0.3 * i for i in range(epochs)],
            "train_acc": [0.3 + 0.1 * i for i in range(epochs)],
            "val_acc": [0.3 + 0.1 * i for i in range(epochs)],
            "train_ce": [1.0 - 0.1 * i for i in range(epochs)],
            "train_kd": [1.0 - 0.2 * i for i in range(epochs)]}
    return SimpleNamespace(name=name, test_acc=acc, smoke=smoke, history=hist,
                           metrics={"test_acc": acc, "params": 1000})


def test_smoke_mode_figure_is_labelled_and_saved_in_the_smoke_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("KDTP_SMOKE", "1")
    fig = plots.accuracy_bars([fake_run("teacher_resnet50", 0.5, smoke=True),
                               fake_run("student_pretrained_baseline", 0.4, smoke=True)])
    assert "SMOKE" in fig.get_suptitle()
    path = plots.save(fig, "comparison_test_accuracy")
    assert path == tmp_path / "figures" / "smoke" / "comparison_test_accuracy.png"
    assert path.stat().st_size > 0
    assert not (tmp_path / "figures" / "comparison_test_accuracy.png").exists()


def test_real_figure_has_no_smoke_label_and_goes_to_the_root(tmp_path, monkeypatch):
    monkeypatch.setenv("KDTP_SMOKE", "0")
    fig = plots.learning_curves([fake_run("teacher_resnet50", 0.9), fake_run("student_scratch_baseline", 0.8)])
    assert "SMOKE" not in fig.get_suptitle()
    path = plots.save(fig, "comparison_learning_curves")
    assert path == tmp_path / "figures" / "comparison_learning_curves.png"
    assert len(fig.axes[1].lines) == 2  # one validation curve per run


def test_smoke_results_are_labelled_even_outside_smoke_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("KDTP_SMOKE", "0")
    fig = plots.accuracy_bars([fake_run("teacher_resnet50", 0.9), fake_run("x", 0.5, smoke=True)])
    assert "SMOKE" in fig.get_suptitle()
    assert plots.save(fig, "mixed").parent.name == "smoke"


def test_save_labels_an_unlabelled_figure_in_smoke_mode(monkeypatch):
    monkeypatch.setenv("KDTP_SMOKE", "1")
    fig, ax = plt.subplots()
    ax.plot([1, 2], [3, 4])
    path = plots.save(fig, "homemade.png")
    assert path.name == "homemade.png" and path.parent.name == "smoke"
    assert "SMOKE" in fig.get_suptitle()


def test_loss_terms_plots_each_weighted_term():
    fig = plots.loss_terms(fake_run("student_pretrained_kd_logits", 0.5), smoke=False)
    labels = sorted(line.get_label() for line in fig.axes[0].lines)
    assert labels == ["ce", "kd"]


def test_temperature_figure_one_panel_per_temperature():
    logits = torch.tensor([1.0, 0.0, 2.0, 7.0, 2.5, 5.0, 2.0, 1.0, 0.5, 0.3])
    fig = plots.temperature_figure(logits, [1, 4, 16], true_label=3, smoke=False)
    assert len(fig.axes) == 3
    heights = [[b.get_height() for b in ax.patches] for ax in fig.axes]
    assert all(abs(sum(h) - 1) < 1e-5 for h in heights)
    assert max(heights[0]) > max(heights[1]) > max(heights[2])  # higher T, flatter


def test_comparison_final_table_and_csv(monkeypatch):
    monkeypatch.setenv("KDTP_SMOKE", "1")
    rows = [{"run": "teacher_resnet50", "arch": "resnet50", "test_acc": 0.5, "params": 23_528_522,
             "size_mb": 94.1, "latency_ms": 10.0, "throughput": 300.0, "device": "cpu", "smoke": True},
            {"run": "student_pretrained_kd_logits", "arch": "resnet18", "test_acc": 0.45,
             "params": 11_181_642, "size_mb": 44.7, "latency_ms": 4.0, "throughput": 900.0,
             "device": "cpu", "smoke": True}]
    fig = plots.comparison_final(rows)
    assert len(fig.axes) == 4 and "SMOKE" in fig.get_suptitle()
    table = plots.summary_table(rows)
    assert "teacher_resnet50" in table and "23,528,522" in table and plots.SMOKE_NOTE in table
    csv_path = plots.save_csv(rows, "comparison")
    text = csv_path.read_text()
    assert csv_path.parent.name == "smoke" and text.splitlines()[0].endswith("smoke")


def test_image_figures_from_uint8_batches():
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(20) % 10
    grid = plots.image_grid(images, labels, per_class=2, smoke=False)
    assert len(grid.axes) == 20
    aug = plots.augmentations(images[:2], n=3, smoke=False)
    assert len(aug.axes) == 2 * 4
    maps = plots.feature_maps(images[:2], {"t": torch.randn(2, 8, 4, 4), "s": torch.randn(2, 4, 1, 1)}, smoke=False)
    assert len(maps.axes) == 2 * 3


def test_measure_reports_median_time_and_restores_training_mode():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    model.train()
    speed = latency.measure(model, batch_size=4, image_size=16, precision="fp32", min_seconds=0.0)
    assert speed.seconds > 0 and speed.iterations >= 3
    assert speed.throughput == pytest.approx(4 / speed.seconds)
    assert speed.latency_ms == pytest.approx(1000 * speed.seconds)
    assert model.training, "measure must leave the model as it found it"
    both = latency.latency_and_throughput(model, image_size=16, throughput_batch=8,
                                          precision="fp32", min_seconds=0.0)
    assert both["latency_ms"] > 0 and both["throughput"] > 0 and both["throughput_batch"] == 8


def test_forward_cost_counts_on_the_meta_device():
    small = latency.forward_cost("resnet50", 32)
    large = latency.forward_cost("resnet50", 224)
    assert small["feature_shape"] == (2048, 1, 1) and large["feature_shape"] == (2048, 7, 7)
    assert latency.forward_cost("resnet18", 32, cifar_stem=True)["feature_shape"] == (512, 4, 4)
    assert 40 < large["flops"] / small["flops"] < 55  # cost grows with the pixel count (49x)


# ----------------------------------------------------------------------------- accuracy bars with errors
def acc_row(run: str, seed: int, acc: float, n_test: int = 10_000, smoke: bool = False) -> dict:
    return {"run": run, "seed": seed, "test_acc": acc, "n_test": n_test, "smoke": smoke}


def _errorbars(ax):
    return [c for c in ax.containers if isinstance(c, ErrorbarContainer)]


def _half_widths(container) -> list[float]:
    (segments,) = [lc.get_segments() for lc in container.lines[2]]
    return [float(s[1][1] - s[0][1]) / 2 for s in segments]


def test_accuracy_axis_zooms_on_the_differences(monkeypatch):
    monkeypatch.setenv("KDTP_SMOKE", "0")
    fig = plots.accuracy_bars([acc_row("student_pretrained_baseline", 0, 0.8283),
                               acc_row("student_pretrained_kd_logits", 0, 0.8342)])
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    # mean - 3 SE = 0.8283 - 3 * 0.00377 = 0.8170: the axis starts near there, not at 0
    assert 0.78 < low < 0.8170 and 0.8455 < high <= 1.05
    assert "not start at 0" in ax.get_ylabel()
    assert [round(b.get_height(), 4) for b in ax.patches] == [0.8283, 0.8342]
    assert "SMOKE" not in fig.get_suptitle()
    full = plots.accuracy_bars([acc_row("a", 0, 0.8283)], from_zero=True).axes[0]
    assert full.get_ylim()[0] == 0


def test_single_runs_get_binomial_error_bars(monkeypatch):
    monkeypatch.setenv("KDTP_SMOKE", "0")
    fig = plots.accuracy_bars([acc_row("student_pretrained_baseline", 0, 0.8283),
                               acc_row("student_pretrained_kd_logits", 0, 0.8342)])
    ax = fig.axes[0]
    (bars,) = _errorbars(ax)
    # sqrt(0.8283 * 0.1717 / 10000) = 0.0037712, sqrt(0.8342 * 0.1658 / 10000) = 0.0037190
    assert _half_widths(bars) == pytest.approx([0.0037712, 0.0037190], abs=1e-6)
    assert "binomial" in bars.get_label()
    assert not [c for c in ax.collections if isinstance(c, PathCollection)]  # one seed: no dots


def test_several_seeds_give_a_mean_bar_seed_dots_and_the_se_of_the_mean(monkeypatch):
    monkeypatch.setenv("KDTP_SMOKE", "0")
    rows = [acc_row("student_pretrained_baseline", s, a) for s, a in {0: 0.80, 1: 0.82, 2: 0.81}.items()]
    rows += [acc_row("student_pretrained_kd_logits", s, a) for s, a in {0: 0.83, 1: 0.84, 2: 0.83}.items()]
    rows.append(acc_row("teacher_resnet50", 0, 0.93))
    ax = plots.accuracy_bars(rows).axes[0]
    assert [round(b.get_height(), 4) for b in ax.patches] == [0.81, 0.8333, 0.93]  # one bar per run
    dots = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert [len(c.get_offsets()) for c in dots] == [3, 3]
    assert sorted(round(float(y), 2) for y in dots[0].get_offsets()[:, 1]) == [0.80, 0.81, 0.82]
    by_label = {c.get_label(): c for c in _errorbars(ax)}
    seeds = next(c for label, c in by_label.items() if "over seeds" in label)
    single = next(c for label, c in by_label.items() if "binomial" in label)
    # std 0.01 / sqrt(3) = 0.0057735; std of 0.83, 0.84, 0.83 = 0.0057735 / sqrt(3) = 0.0033333
    assert _half_widths(seeds) == pytest.approx([0.0057735, 0.0033333], abs=1e-6)
    assert _half_widths(single) == pytest.approx([(0.93 * 0.07 / 10_000) ** 0.5], abs=1e-7)
    assert ax.get_ylim()[0] > 0.7


def test_run_results_give_seed_and_test_size_from_their_config(monkeypatch):
    monkeypatch.setenv("KDTP_SMOKE", "0")
    runs = [SimpleNamespace(name="student_scratch_baseline", test_acc=acc, smoke=False, metrics={"test_acc": acc},
                            config={"seed": seed, "data_sizes": {"test": 10_000}})
            for seed, acc in ((0, 0.83), (1, 0.84))]
    ax = plots.accuracy_bars(runs).axes[0]
    assert len(ax.patches) == 1 and ax.patches[0].get_height() == pytest.approx(0.835)
    (bars,) = _errorbars(ax)
    assert _half_widths(bars) == pytest.approx([0.005])  # std 0.0070711 / sqrt(2)


def test_smoke_seeds_still_say_smoke(monkeypatch):
    monkeypatch.setenv("KDTP_SMOKE", "0")
    fig = plots.accuracy_bars([acc_row("a", s, 0.3 + 0.01 * s, n_test=100, smoke=True) for s in range(3)])
    assert "SMOKE" in fig.get_suptitle()
    assert plots.save(fig, "smoke_seeds").parent.name == "smoke"


def test_own_run_is_drawn_among_the_class_seeds_on_a_zoomed_axis(monkeypatch):
    monkeypatch.setenv("KDTP_SMOKE", "0")
    class_rows = [{"run": run, "seed": s, "test_acc": acc, "n_test": 10000}
                  for run, accs in (("student_pretrained_baseline", (0.828, 0.825, 0.830)),
                                    ("student_pretrained_kd_logits", (0.834, 0.836, 0.833)))
                  for s, acc in enumerate(accs)]
    own = [{"run": "student_pretrained_kd_logits", "seed": 7, "test_acc": 0.8355, "n_test": 10000}]
    fig = plots.own_run_among_class(own, class_rows)
    ax = fig.axes[0]
    sizes = [len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection)]
    assert sizes.count(3) == 2 and 1 in sizes          # each run's seeds, and the student's star
    assert ax.get_ylim()[0] > 0.8                        # zoomed: the differences show
    assert "your run" in [t.get_text() for t in ax.get_legend().get_texts()]
    plt.close(fig)
    with pytest.raises(ValueError, match="no published sweep"):
        plots.own_run_among_class(own, [])
