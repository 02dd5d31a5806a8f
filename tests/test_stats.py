"""Standard errors and verdicts, checked against numbers computed by hand."""
from __future__ import annotations

import math

import pytest

from kdtp import stats


def row(run, seed, acc, n_test=10_000, smoke=False, **extra):
    return {"run": run, "seed": seed, "test_acc": acc, "n_test": n_test, "smoke": smoke, **extra}


# hand-computed: 0.8283 * 0.1717 = 0.14221911, / 10000 -> sqrt = 0.0037712
#                0.8342 * 0.1658 = 0.13831036, / 10000 -> sqrt = 0.0037190
#                sqrt(1.4221911e-5 + 1.3831036e-5) = sqrt(2.8052947e-5) = 0.0052965
SE_A, SE_B, SE_DIFF = 0.0037712, 0.0037190, 0.0052965


def test_binomial_se_by_hand():
    assert stats.binomial_se(0.8283, 10_000) == pytest.approx(SE_A, abs=1e-7)
    assert stats.binomial_se(0.8342, 10_000) == pytest.approx(SE_B, abs=1e-7)
    assert stats.binomial_se(0.5, 100) == pytest.approx(0.05)
    assert stats.binomial_se(1.0, 100) == 0.0
    for acc, n in ((1.2, 100), (-0.1, 100), (0.5, 0), (0.5, None)):
        with pytest.raises(ValueError):
            stats.binomial_se(acc, n)


def test_summarize_by_hand():
    # 0.80, 0.82, 0.81: mean 0.81, deviations -0.01, 0.01, 0 -> var 0.0002/2 = 0.0001
    s = stats.summarize([0.80, 0.82, 0.81])
    assert s.n == 3
    assert s.mean == pytest.approx(0.81)
    assert s.std == pytest.approx(0.01)
    assert s.se == pytest.approx(0.01 / math.sqrt(3))  # 0.0057735
    mean, std, n, se = s  # a plain tuple too
    assert n == 3


def test_summarize_one_value_has_no_std():
    s = stats.summarize([0.83])
    assert s == stats.Summary(0.83, None, 1, None)
    with pytest.raises(ValueError):
        stats.summarize([])
    with pytest.raises(ValueError):
        stats.summarize([0.8, float("nan")])


A = {0: 0.80, 1: 0.82, 2: 0.81}
B = {0: 0.83, 1: 0.84, 2: 0.83}


def test_paired_difference_by_hand():
    # diffs 0.03, 0.02, 0.02: mean 0.023333; deviations 0.006667, -0.003333, -0.003333
    # -> sum of squares 6.6667e-5, / 2 = 3.3333e-5, std 0.0057735, se 0.0057735/sqrt(3) = 0.0033333
    d = stats.paired_difference(A, B)
    assert d.method == "paired" and d.paired and d.n == 3 and d.seeds == (0, 1, 2)
    assert d.mean == pytest.approx(0.0233333, abs=1e-7)
    assert d.std == pytest.approx(0.0057735, abs=1e-7)
    assert d.se == pytest.approx(0.0033333, abs=1e-7)
    assert d.t == pytest.approx(7.0)
    assert stats.verdict(d.mean, d.se) == "significant gain"


def test_paired_difference_uses_only_common_seeds():
    d = stats.paired_difference({**A, 7: 0.1}, {**B, 9: 0.9})
    assert d.n == 3 and d.mean == pytest.approx(0.0233333, abs=1e-7)
    with pytest.raises(ValueError, match="no seed in common"):
        stats.paired_difference({0: 0.8}, {1: 0.8})


def test_single_pair_falls_back_to_the_binomial_se():
    d = stats.paired_difference({0: 0.8283}, {0: 0.8342}, n_test=10_000)
    assert d.method == "binomial" and d.n == 1 and d.std is None
    assert d.mean == pytest.approx(0.0059)
    assert d.se == pytest.approx(SE_DIFF, abs=1e-7)
    assert d.t == pytest.approx(0.0059 / SE_DIFF)  # 1.114
    assert stats.verdict(d.mean, d.se) == "within noise"
    with pytest.raises(ValueError, match="n_test"):
        stats.paired_difference({0: 0.8283}, {0: 0.8342})


def test_verdict_threshold_and_sign():
    assert stats.verdict(0.011, 0.005) == "significant gain"
    assert stats.verdict(-0.011, 0.005) == "significant loss"
    assert stats.verdict(0.010, 0.005) == "within noise"       # not strictly above 2 SE
    assert stats.verdict(0.011, 0.005, threshold=3) == "within noise"
    with pytest.raises(ValueError):
        stats.verdict(0.01, None)


def test_describe_gain_in_points():
    text = stats.describe_gain("baseline", "KD logits", stats.paired_difference(A, B))
    assert text == "KD logits vs baseline: +2.33 ± 0.33 points (3 seeds, paired) — significant gain (t=7.0)"
    single = stats.paired_difference({0: 0.8283}, {0: 0.8342}, n_test=10_000)
    assert stats.describe_gain("baseline", "KD", single) == \
        "KD vs baseline: +0.59 ± 0.53 points (1 run each, test-set SE) — within noise (t=1.1)"
    loss = stats.paired_difference(B, A)
    assert stats.describe_gain("KD", "baseline", loss.as_dict()).startswith(
        "baseline vs KD: -2.33 ± 0.33 points (3 seeds, paired) — significant loss (t=-7.0)")


def test_compare_runs_pairs_seeds_in_common():
    rows = [row("baseline", s, a) for s, a in A.items()] + [row("kd", s, a) for s, a in B.items()]
    rows.append(row("baseline", 5, 0.5))  # no partner: left out of the pairing
    d = stats.compare_runs(rows, "baseline", "kd")
    assert d.method == "paired" and d.n == 3 and d.t == pytest.approx(7.0)


def test_seeds_in_common_counts_the_seeds_both_runs_have():
    rows = [row("baseline", s, a) for s, a in A.items()] + [row("kd", s, a) for s, a in B.items()]
    rows += [row("baseline", 5, 0.5), row("kd", 6, 0.5)]
    assert stats.seeds_in_common(rows, "baseline", "kd") == len(set(A) & set(B)) == 3
    assert stats.seeds_in_common(rows, "baseline", "absent") == 0
    assert stats.seeds_in_common([], "baseline", "kd") == 0


def test_compare_runs_latest_row_per_seed_wins():
    rows = [row("baseline", 0, 0.5), row("baseline", 0, 0.8283), row("kd", 0, 0.8342)]
    d = stats.compare_runs(rows, "baseline", "kd")
    assert d.method == "binomial" and d.mean == pytest.approx(0.0059)
    assert d.se == pytest.approx(SE_DIFF, abs=1e-7)


def test_compare_runs_without_common_seeds_compares_means():
    # teacher seed 0 vs student seeds 1, 2: se_a binomial(0.93) = sqrt(0.93*0.07/1e4) = 0.0025515,
    # student values 0.82, 0.84: mean 0.83, std 0.0141421, se 0.0141421/sqrt(2) = 0.01
    rows = [row("teacher", 0, 0.93), row("student", 1, 0.82), row("student", 2, 0.84)]
    d = stats.compare_runs(rows, "teacher", "student")
    assert d.method == "unpaired" and (d.n_a, d.n_b) == (1, 2)
    assert d.mean == pytest.approx(-0.10)
    assert d.se == pytest.approx(math.sqrt(0.0025515 ** 2 + 0.01 ** 2), abs=1e-6)  # 0.0103204
    assert "1 vs 2 seeds, unpaired" in stats.describe_gain("teacher", "student", d)


def test_compare_runs_refuses_unknown_runs_smoke_and_different_test_sets():
    with pytest.raises(ValueError, match="no test_acc rows"):
        stats.compare_runs([row("a", 0, 0.8)], "a", "b")
    with pytest.raises(ValueError, match="smoke results never enter"):
        stats.compare_runs([row("a", 0, 0.8), row("b", 0, 0.3, smoke=True)], "a", "b")
    with pytest.raises(ValueError, match="different test sets"):
        stats.compare_runs([row("a", 0, 0.8), row("b", 0, 0.8, n_test=2000)], "a", "b")


def test_table_by_hand():
    rows = [row("baseline", s, a) for s, a in A.items()] + [row("kd", 0, 0.8342)]
    t = stats.table(rows)
    assert [r["run"] for r in t] == ["baseline", "kd"]
    base, kd = t
    assert base["n_seeds"] == 3 and base["mean"] == pytest.approx(0.81)
    assert base["std"] == pytest.approx(0.01) and base["se"] == pytest.approx(0.0057735, abs=1e-7)
    assert base["se_kind"] == "seeds" and base["smoke"] is False
    assert kd["n_seeds"] == 1 and kd["std"] is None
    assert kd["se"] == pytest.approx(SE_B, abs=1e-7) and kd["se_kind"] == "binomial"


def test_table_val_acc_and_missing_n_test():
    rows = [{"run": "a", "seed": 0, "test_acc": 0.8, "val_acc": 0.7}]
    (line,) = stats.table(rows, key="val_acc")
    assert line["mean"] == pytest.approx(0.7) and line["se"] is None  # no n_test: SE unknown


def test_table_refuses_to_mix_smoke_and_real_rows():
    with pytest.raises(ValueError, match="smoke results never enter a real results table"):
        stats.table([row("a", 0, 0.83), row("b", 0, 0.31, n_test=100, smoke=True)])
    smoke_only = stats.table([row("a", 0, 0.31, n_test=100, smoke=True)])
    assert smoke_only[0]["smoke"] is True


def test_the_labs_results_table_gives_each_run_its_test_set_standard_error():
    from kdtp.results import format_table
    text = format_table([{"run": "student", "test_acc": 0.8283, "n_test": 10000, "recipe": "cpu"}])
    assert " 0.0038 " in text            # sqrt(0.8283 * 0.1717 / 10000) = 0.00377


def test_same_images_difference_is_the_mean_and_se_of_per_image_differences():
    import math

    from kdtp.stats import same_images_difference, unpaired_difference
    a = [True] * 80 + [False] * 20
    b = [True] * 78 + [False] * 2 + [True] * 7 + [False] * 13      # 85 right, mostly the same images
    d = same_images_difference(a, b)
    diffs = [int(y) - int(x) for x, y in zip(a, b)]
    mean = sum(diffs) / 100
    std = math.sqrt(sum((v - mean) ** 2 for v in diffs) / 99)
    assert d.mean == pytest.approx(0.05) and d.se == pytest.approx(std / 10) and d.method == "same images"
    assert d.se < unpaired_difference([0.80], [0.85], n_test=100).se      # pairing removes the shared part
    with pytest.raises(ValueError, match="same test images"):
        same_images_difference(a, b[:-1])


def test_describe_gain_says_where_a_same_images_error_comes_from():
    from kdtp.stats import describe_gain, same_images_difference
    d = same_images_difference([True] * 80 + [False] * 20, [True] * 85 + [False] * 15)
    text = describe_gain("baseline", "KD", d)
    assert "100 test images compared one by one" in text and "unpaired" not in text


def test_single_run_comparison_reads_the_numbers_it_is_given():
    from kdtp.stats import binomial_se, single_run_comparison
    diff, text = single_run_comparison("baseline", 0.80, "KD", 0.83, 10_000)
    assert diff.mean == pytest.approx(0.03)
    assert diff.se == pytest.approx((binomial_se(0.80, 10_000) ** 2 + binomial_se(0.83, 10_000) ** 2) ** 0.5)
    assert "KD is higher" in text and "exceeds its SE" in text and "significant gain" in text
    _, close = single_run_comparison("baseline", 0.800, "KD", 0.801, 10_000)
    assert "does not exceed" in close and "within noise" in close


def test_a_percentage_among_fractions_is_refused_not_called_significant():
    with pytest.raises(ValueError, match="mix fractions"):
        stats.paired_difference({0: 0.85, 1: 0.84}, {0: 85.5, 1: 84.9}, 10000)
    with pytest.raises(ValueError, match="mix fractions"):
        stats.unpaired_difference([0.85, 0.84], [86.0], 10000)
    with pytest.raises(ValueError, match="mix fractions"):
        stats.compare_runs([{"run": "a", "seed": 0, "test_acc": 0.85}, {"run": "b", "seed": 0, "test_acc": 85.9}],
                           "a", "b")
    with pytest.raises(ValueError, match="nan"):
        stats.verdict(float("nan"), 0.1)
