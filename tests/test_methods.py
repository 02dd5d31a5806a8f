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


def test_the_baseline_must_be_among_the_results():
    with pytest.raises(ValueError, match="include it"):
        methods.method_rows({"student_ps_kd": _result("student_ps_kd", 0.8)}, RECIPE)
