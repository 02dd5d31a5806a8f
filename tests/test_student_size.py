"""Notebook 11's family of students: sizes, networks, run declarations, rows, gains and figure."""
from pathlib import Path

import pytest
import torch

from kdtp import runs, stats
from kdtp import student_size as ss
from kdtp.checkpoint import config_hash
from kdtp.cli_parser import build_parser
from kdtp.data import CifarData
from kdtp.distillers.attention import ATTENTION_LAYERS
from kdtp.distillers.relations import EMBEDDING_NODE
from kdtp.env import ConfigError
from kdtp.models import FEATURE_LAYER, build_model, count_parameters, feature_tap
from kdtp.recipes import RECIPES, get_recipe
from kdtp.results import RunResult

NEW_ARCHS = ("cnn_w4", "cnn_w8", "cnn_w16", "cnn_w32")


@pytest.mark.parametrize("name", list(RECIPES))
@pytest.mark.parametrize("smoke", [False, True])
def test_each_family_grows_spans_more_than_10x_and_stays_below_its_teacher(name, smoke):
    recipe = get_recipe(name, smoke=smoke)
    sizes = [ss.parameters(arch, recipe) for arch in ss.family(recipe)]
    assert len(sizes) >= 4
    assert all(a < b for a, b in zip(sizes, sizes[1:])), f"{name}: sizes must grow: {sizes}"
    assert sizes[-1] / sizes[0] > 10
    assert sizes[-1] < ss.parameters(recipe.teacher_arch, recipe)
    assert recipe.student_arch in ss.family(recipe), "the lab's own student is one of the sizes"
    trained = [ss.parameters(p.arch, recipe) for p in ss.points_to_train(recipe)]
    assert trained == sizes if not smoke else (len(trained) >= 3 and trained[-1] / trained[0] > 10)


def test_parameters_are_counted_on_the_network_the_recipe_builds():
    fast, paper = get_recipe("fast", smoke=False), get_recipe("paper", smoke=False)
    assert ss.parameters("resnet18", paper) == 11_181_642
    assert ss.parameters("resnet18", fast) == count_parameters(build_model("resnet18", cifar_stem=True)) < 11_181_642


def test_existing_cnns_are_unchanged():
    # their checkpoints' hashes and sizes are pinned (tests/fixtures/run_configs_v1.json)
    assert [count_parameters(build_model(a)) for a in ("cnn_large", "cnn_small", "cnn_tiny")] == [657_154, 165_286, 41_824]


@pytest.mark.parametrize("arch", NEW_ARCHS)
def test_new_archs_build_run_and_tap_like_the_other_cnns(arch):
    base = int(arch[5:])
    model = build_model(arch).eval()
    x = torch.randn(2, 3, 32, 32)
    out = feature_tap(model, [FEATURE_LAYER[arch]])(x)
    assert FEATURE_LAYER[arch] == "layer3" and out["layer3"].shape == (2, 8 * base, 4, 4)
    assert torch.allclose(out["logits"], model(x), atol=1e-6)
    assert ATTENTION_LAYERS[arch] == ATTENTION_LAYERS["cnn_small"]
    assert EMBEDDING_NODE[arch] == EMBEDDING_NODE["cnn_small"]
    with pytest.raises(ValueError, match="pretrained=False"):
        build_model(arch, pretrained=True)


def test_doubling_the_width_about_quadruples_the_parameters():
    counts = [count_parameters(build_model(a)) for a in NEW_ARCHS]
    assert all(3.5 < b / a < 4.0 for a, b in zip(counts, counts[1:]))


@pytest.mark.parametrize("name", list(RECIPES))
def test_each_recipes_doubling_series_quadruples_its_parameters(name):
    """11's demo (nbval runs it in one recipe only): every recipe's series doubles its widths."""
    series = ss.doubling_widths(name)
    counts = [count_parameters(build_model(a)) for a in series]
    assert len(series) >= 3 and all(3.5 < b / a < 4.0 for a, b in zip(counts, counts[1:]))
    assert get_recipe(name, smoke=False).student_arch in series or name != "cpu_air"


def _data(n=8):
    x = torch.zeros(n, 3, 2, 2, dtype=torch.uint8)
    y = torch.zeros(n, dtype=torch.long)
    return CifarData(x, y, x, y, x, y, "cifar10")


def test_every_size_has_two_declared_runs_of_its_arch_that_the_cli_knows():
    for name in RECIPES:
        recipe = get_recipe(name, smoke=False)
        for p in ss.size_points(recipe):
            base, kd = runs.get_run(p.baseline), runs.get_run(p.kd)
            assert (base.method, kd.method) == ("baseline", "kd_logits")
            assert kd.teachers == (runs.TEACHER,) and not base.pretrained and not kd.pretrained
            assert runs.arch_of(base, recipe) == runs.arch_of(kd, recipe) == p.arch
    cpu = get_recipe("cpu", smoke=False)
    assert ss.size_points(cpu)[2] == ("cnn_small", "student_scratch_baseline", "student_scratch_kd_scores")
    assert "student_w4_kd_logits" in ss.run_names(cpu)
    assert build_parser().parse_args(["train", "student_w16_kd_logits"]).name == "student_w16_kd_logits"


def test_run_hashes_differ_by_arch_and_a_kd_run_names_its_teachers_hash():
    recipe, data = get_recipe("cpu", smoke=False), _data()
    teacher_hash = config_hash(runs.run_config(runs.get_run(runs.TEACHER), recipe, data))
    cfgs = {arch: runs.run_config(runs.get_run(ss.SIZE_RUNS[arch][1]), recipe, data, teacher_hash)
            for arch in ("cnn_w4", "cnn_w8")}
    assert {c["arch"] for c in cfgs.values()} == {"cnn_w4", "cnn_w8"}
    assert len({config_hash(c) for c in cfgs.values()}) == 2
    assert all(c["teacher_config"] == teacher_hash and c["teacher_arch"] == "cnn_large" for c in cfgs.values())
    # the same declaration in a ResNet recipe: the same network, the recipe's teacher
    fast_cfg = runs.run_config(runs.get_run("student_w8_kd_logits"), get_recipe("fast", smoke=False), data, "t")
    assert (fast_cfg["arch"], fast_cfg["teacher_arch"], fast_cfg["pretrained"]) == ("cnn_w8", "resnet50", False)


def test_a_family_without_runs_for_a_size_says_what_to_do():
    with pytest.raises(ConfigError, match="declare them"):
        ss.size_points(get_recipe("cpu", smoke=False, student_arch="cnn_tiny"))


def test_speed_is_measured_with_the_latency_module():
    measured = ss.speed(build_model("cnn_w4"), get_recipe("cpu", smoke=True))
    assert measured["latency_ms"] > 0 and measured["throughput"] > 0 and measured["throughput_batch"] == 16


# ----------------------------------------------------------------------------- rows and figure
RECIPE = get_recipe("cpu", smoke=True)
N_TEST = 10_000


def _result(name, arch, acc, *, seed=0, smoke=False, teacher_config="T"):
    config = {"run": name, "arch": arch, "seed": seed, "data_sizes": {"test": N_TEST}, "smoke": smoke,
              "data": "synthetic" if smoke else "cifar10", "teacher_config": teacher_config}
    return RunResult(name, build_model(arch), config, {}, {"test_acc": acc, "val_acc": acc}, Path("x"),
                     "loaded", RECIPE, config_hash=f"h-{name}")


def _family(smoke=False):
    accs = {"cnn_w4": (0.70, 0.74), "cnn_w8": (0.80, 0.81)}
    results = {arch: {ss.LABELS: _result(ss.SIZE_RUNS[arch][0], arch, a, smoke=smoke),
                      ss.KD: _result(ss.SIZE_RUNS[arch][1], arch, b, smoke=smoke)}
               for arch, (a, b) in reversed(accs.items())}      # out of order on purpose
    teacher = _result(runs.TEACHER, "cnn_large", 0.86, smoke=smoke, teacher_config=None)
    speeds = {a: {"latency_ms": 1.0 + i, "throughput": 100.0, "device": "cpu"}
              for i, a in enumerate(("cnn_w4", "cnn_w8", "cnn_large"))}
    return results, teacher, speeds


def test_rows_are_measured_sorted_by_size_and_carry_the_test_set_se():
    results, teacher, speeds = _family()
    rows = ss.size_rows(results, teacher, RECIPE, speeds=speeds)
    assert [(r["arch"], r["training"]) for r in rows] == [
        ("cnn_w4", ss.LABELS), ("cnn_w4", ss.KD), ("cnn_w8", ss.LABELS), ("cnn_w8", ss.KD), ("cnn_large", "teacher")]
    assert rows[0]["params"] == count_parameters(results["cnn_w4"][ss.LABELS].model)
    assert rows[1]["err"] == pytest.approx(stats.binomial_se(0.74, N_TEST)) and rows[1]["err_kind"] == "binomial SE, 1 run"
    assert rows[-1]["latency_ms"] == 3.0 and not any(r["smoke"] for r in rows)
    gains = ss.kd_gains(rows)
    assert [g["arch"] for g in gains] == ["cnn_w4", "cnn_w8"]
    assert gains[0]["gain"] == pytest.approx(0.04) and gains[0]["method"] == "binomial"
    assert gains[0]["verdict"] == "significant gain" and gains[1]["verdict"] == "within noise"
    best = ss.best_size(gains)
    assert best["arch"] == "cnn_w4" and best["stands_out"]
    text = ss.size_table(rows, gains)
    assert "+4.00" in text and "(smoke)" not in text


def _answers(acc: float, n: int = N_TEST, shift: int = 0) -> list[bool]:
    right = round(acc * n)
    return [(i + shift) % n < right for i in range(n)]


def test_one_run_each_is_compared_on_the_same_images_when_answers_are_given():
    results, teacher, speeds = _family()
    rows = ss.size_rows(results, teacher, RECIPE, speeds=speeds)
    names = {arch: (r[ss.LABELS].name, r[ss.KD].name) for arch, r in results.items()}
    # cnn_w4: KD gets right every image the baseline gets right, and 4% more
    correct = {names["cnn_w4"][0]: _answers(0.70), names["cnn_w4"][1]: _answers(0.74),
               names["cnn_w8"][0]: _answers(0.80), names["cnn_w8"][1]: _answers(0.81)}
    gains = ss.kd_gains(rows, correct)
    g = gains[0]
    d = [0.0] * round(0.70 * N_TEST) + [1.0] * round(0.04 * N_TEST) + [0.0] * round(0.26 * N_TEST)
    mean = sum(d) / len(d)
    se = (sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d)) ** 0.5     # by hand
    assert g["method"] == "same images" and g["gain"] == pytest.approx(0.04) and g["se"] == pytest.approx(se)
    assert g["se"] < ss.kd_gains(rows)[0]["se"] / 2, "tighter than two independent test-set SEs"
    assert gains[1]["verdict"] == "significant gain", "+1 point with nested answers: beyond 2 SE paired"
    # the answers of another run (or another test set) are refused, not silently paired
    with pytest.raises(ValueError, match="correct_per_image"):
        ss.kd_gains(rows, {**correct, names["cnn_w4"][1]: _answers(0.60)})
    with pytest.raises(ValueError, match="test images"):
        ss.kd_gains(rows, {**correct, names["cnn_w4"][1]: _answers(0.74, n=N_TEST // 2)})


def test_other_seeds_of_the_same_configuration_give_mean_and_std():
    results, teacher, speeds = _family()
    base = results["cnn_w4"][ss.LABELS]
    sweep = [{"run": base.name, "seed": s, "test_acc": a, "n_test": N_TEST, "smoke": False,
              "config": {**base.config, "seed": s}} for s, a in ((1, 0.72), (2, 0.71))]
    sweep.append({"run": base.name, "seed": 3, "test_acc": 0.1, "n_test": N_TEST, "smoke": False,
                  "config": {**base.config, "seed": 3, "temperature": 8.0}})     # another experiment
    rows = ss.size_rows(results, teacher, RECIPE, speeds=speeds, sweep_rows=sweep)
    row = rows[0]
    assert row["n_seeds"] == 3 and row["acc"] == pytest.approx(0.71)
    assert row["err"] == pytest.approx(stats.summarize([0.70, 0.72, 0.71]).std) and row["err_kind"] == "std over 3 seeds"
    assert ss.kd_gains(rows)[0]["method"] == "unpaired"      # 3 seeds against 1


@pytest.mark.parametrize("smoke", [True, False])
def test_the_figure_says_smoke_exactly_when_results_are_smoke(smoke, monkeypatch):
    monkeypatch.delenv("KDTP_SMOKE", raising=False)
    results, teacher, speeds = _family(smoke=smoke)
    rows = ss.size_rows(results, teacher, RECIPE, speeds=speeds)
    fig = ss.size_figure(rows)
    assert ("SMOKE" in fig._suptitle.get_text()) == smoke
    assert len(fig.axes) == 3 and fig.axes[0].get_xscale() == "log"
    assert ("(smoke)" in ss.size_table(rows)) == smoke
    import matplotlib.pyplot as plt
    plt.close(fig)
