"""The all-methods comparison: every registered method times a step, rows say what each needs."""
from pathlib import Path

import pytest

from kdtp import methods, runs
from kdtp.distillers import METHODS
from kdtp.recipes import get_recipe
from kdtp.results import RunResult

RECIPE = get_recipe("cpu", smoke=True)   # cnn_large teacher, cnn_small students, 32 px


def _result(name, acc, smoke=False):
    spec = runs.get_run(name)
    config = {"data_sizes": {"test": 10_000}, "smoke": smoke, "data": "cifar10", "method": spec.method}
    return RunResult(name, None, config, {}, {"test_acc": acc, "val_acc": acc}, Path("x"), "loaded", RECIPE)


def test_every_course_method_has_a_run_and_a_measured_step():
    used = {s.method for s in runs.REGISTRY.values()}
    assert set(METHODS) <= used, f"methods no run uses: {set(METHODS) - used}"
    for name in ("student_pretrained_baseline", "student_kd_attention", "student_ps_kd"):
        assert methods.step_seconds(name, RECIPE, batch_size=8, min_run_time=0.05) > 0


def test_rows_carry_accuracy_se_cost_and_what_the_teacher_gives():
    results = {n: _result(n, a) for n, a in (("student_pretrained_baseline", 0.80),
                                              ("student_pretrained_kd_logits", 0.82),
                                              ("student_kd_relations", 0.81), ("student_ps_kd", 0.805))}
    rows = methods.method_rows(results, RECIPE, batch_size=8)
    by = {r["run"]: r for r in rows}
    assert by["student_pretrained_baseline"]["cost_vs_baseline"] == 1.0
    assert by["student_pretrained_kd_logits"]["cost_vs_baseline"] > 1.0     # one more forward pass
    assert by["student_pretrained_kd_logits"]["se"] == pytest.approx((0.82 * 0.18 / 10_000) ** 0.5)
    assert by["student_pretrained_baseline"]["needs"] == "labels only"
    assert "distances and angles" in by["student_kd_relations"]["needs"]
    assert by["student_ps_kd"]["learns_from"] == "-"
    text = methods.methods_table(rows)
    assert "student_kd_relations" in text and "x" in text
    fig = methods.methods_figure(rows, smoke=True)
    assert "SMOKE" in fig._suptitle.get_text()


def test_the_figures_long_names_are_folded_so_neighbours_do_not_overlap():
    # 13's eleven bars are narrow: "KD CA-MKD weights" ran into "KD mean of teachers"
    rows = [{"run": name, "test_acc": 0.85, "se": 0.003, "method": "kd_logits", "recipe": RECIPE,
             "smoke": True} for name in ("student_multi_mean", "student_multi_confidence", "born_again_gen2")]
    labels = [t.get_text() for t in methods.methods_figure(rows, smoke=True).axes[0].get_xticklabels()]
    assert any("teachers" in label for label in labels) and any("gen1" in label for label in labels)
    assert all(len(line) <= 14 for label in labels for line in label.split("\n")), labels
    from kdtp.plot_style import wrapped
    assert wrapped("scratch\nKD logits\nof born again gen1") == "scratch\nKD logits\nof born again\ngen1"


def test_the_baseline_must_be_among_the_results():
    with pytest.raises(ValueError, match="include it"):
        methods.method_rows({"student_ps_kd": _result("student_ps_kd", 0.8)}, RECIPE)


def _seeded(name, acc, seed=0, teacher="T0", **extra):
    r = _result(name, acc)
    r.config.update(seed=seed, temperature=1.0, **extra)
    if runs.get_run(name).teachers:
        r.config["teacher_config"] = teacher
    r.config_hash = f"{name}-{seed}-{teacher}"
    return r


def _row(result, **config):
    return {"run": result.name, "seed": result.config["seed"], "test_acc": result.test_acc, "n_test": 10_000,
            "smoke": False, "config_hash": result.config_hash, "config": {**result.config, **config}}


def test_a_sweep_adds_the_same_experiment_at_other_seeds_and_nothing_else():
    base, kd = "student_scratch_baseline", "student_pretrained_kd_logits"
    gen1 = "born_again_gen1"                             # its teacher: the baseline of its own seed
    results = {base: _seeded(base, 0.80), kd: _seeded(kd, 0.82), gen1: _seeded(gen1, 0.81, teacher=f"{base}-0-T0")}
    b1, b2 = _seeded(base, 0.81, seed=1), _seeded(base, 0.79, seed=2)
    sweep_rows = [
        _row(b1), _row(b2),
        _row(_seeded(kd, 0.84, seed=1)), _row(_seeded(kd, 0.83, seed=2)),
        _row(_seeded(kd, 0.70, seed=3), temperature=4.0),          # another grid point: not this run
        _row(_seeded(kd, 0.70, seed=4, teacher="T1")),             # another teacher: not this run
        _row(_seeded(gen1, 0.82, seed=1, teacher=b1.config_hash)),  # the seed-1 baseline's student: yes
        _row(_seeded(gen1, 0.70, seed=2, teacher="someone-else")),  # learnt from another network: no
    ]
    per_run = methods.seed_rows(results, sweep_rows)
    assert sorted(r["seed"] for r in per_run[base]) == [0, 1, 2]
    assert sorted(r["seed"] for r in per_run[kd]) == [0, 1, 2]
    assert sorted(r["seed"] for r in per_run[gen1]) == [0, 1]
    rows = {r["run"]: r for r in methods.method_rows(results, RECIPE, baseline=base, time_steps=False,
                                                     sweep_rows=sweep_rows)}
    assert rows[kd]["test_acc"] == pytest.approx((0.82 + 0.84 + 0.83) / 3) and rows[kd]["n_seeds"] == 3
    assert rows[kd]["se"] == pytest.approx(0.01 / 3 ** 0.5)         # std 0.01 over 3 seeds
    assert rows[gen1]["seeds"] == [0, 1]
    assert methods.method_rows(results, RECIPE, baseline=base, time_steps=False)[1]["n_seeds"] == 1
    assert " 3 " in methods.methods_table(list(rows.values()))


def test_the_table_gives_the_std_over_seeds_and_the_test_set_se_for_one_run():
    one = {"run": "student_ps_kd", "test_acc": 0.80, "se": 0.004, "std": None, "n_seeds": 1,
           "cost_vs_baseline": 1.0, "needs": "nothing"}
    three = {"run": "student_pretrained_kd_logits", "test_acc": 0.83, "se": 0.01 / 3 ** 0.5, "std": 0.01,
             "n_seeds": 3, "cost_vs_baseline": 1.2, "needs": "its logits",
             "seed_rows": [{"test_acc": a} for a in (0.82, 0.83, 0.84)], "method": "kd_logits"}
    lines = methods.methods_table([one, three]).splitlines()
    assert "0.0040" in lines[1] and "SE, 1 run" in lines[1]
    assert "0.0100" in lines[2] and "std, 3 seeds" in lines[2]      # the std, not its SE 0.0058
    assert "0.0058" not in lines[2]
    one["method"] = "ps_kd"
    fig = methods.methods_figure([one, three], smoke=True)
    from matplotlib.collections import PathCollection
    dots = [c for c in fig.axes[0].collections if isinstance(c, PathCollection)]
    assert [list(map(float, d.get_offsets()[:, 1])) for d in dots] == [[0.82, 0.83, 0.84]]


def test_a_born_again_bar_names_the_student_it_learnt_from():
    labels = {n: runs.short_label(runs.get_run(n), RECIPE)
              for n in ("student_pretrained_kd_logits", "born_again_gen1", "born_again_gen2")}
    assert len(set(labels.values())) == 3, labels          # three bars, three different labels
    assert labels["born_again_gen2"].endswith("of born again gen1")
    assert "\nof " not in labels["student_pretrained_kd_logits"]   # a teacher-role teacher is not named
