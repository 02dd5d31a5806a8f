"""How sure are we? Standard errors and verdicts for accuracy comparisons.

The lab's claim is that a distilled student beats the same student trained on labels
alone. The gaps are small (0.8283 vs 0.8342 on CIFAR-10's 10,000 test images), about
as small as the noise of a single run, so no difference is reported without its
uncertainty. Two sources of noise are covered:

* the test set: a finite sample of images, so one run's accuracy has a binomial
  standard error ``sqrt(acc (1 - acc) / n)`` (``binomial_se``);
* the seed: another seed gives another network; with several seeds the spread between
  them measures this directly (``summarize``, ``paired_difference``).

Results are rows (dicts, as in ``kdtp.results``) with at least ``run``, ``seed``,
``test_acc`` and ``n_test`` (number of test images); ``val_acc`` and ``smoke`` are
optional. Pure Python: nothing beyond the standard library is needed.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Hashable, Iterable, Mapping, NamedTuple, Sequence

SMOKE_MIX_MESSAGE = "smoke results never enter a real results table"


# ----------------------------------------------------------------------------- basics
def binomial_se(acc: float, n: int) -> float:
    """Standard error of one run's accuracy from the test set alone: sqrt(acc(1-acc)/n).

    Each test image is right or wrong, so the count of right answers is binomial: an
    accuracy measured on 10,000 images near 0.83 is uncertain by about 0.004 (0.4
    points) even before another seed is tried. It is the only error a single run has.
    """
    acc = float(acc)
    if not 0.0 <= acc <= 1.0 or math.isnan(acc):
        raise ValueError(f"an accuracy is a fraction in [0, 1], got {acc!r}")
    if n is None or int(n) != n or n < 1:
        raise ValueError(f"n (the number of test images) must be a positive integer, got {n!r}")
    return math.sqrt(acc * (1.0 - acc) / int(n))


class Summary(NamedTuple):
    """Mean, sample std (ddof=1), count and standard error of the mean of some values."""
    mean: float
    std: float | None
    n: int
    se: float | None


def _finite(values: Iterable[Any], what: str = "values") -> list[float]:
    out = [float(v) for v in values]
    if not out:
        raise ValueError(f"no {what} to summarize")
    if any(math.isnan(v) or math.isinf(v) for v in out):
        raise ValueError(f"{what} must be finite numbers, got {out}")
    return out


def _one_scale(a: Iterable[Any], b: Iterable[Any]) -> tuple[list[float], list[float]]:
    """Both sides' values, finite and on one scale. A percentage among fractions (85.1 next
    to 0.851) would otherwise make a gain of 84 points, 'significant': refused."""
    a, b = _finite(a, "accuracies of a"), _finite(b, "accuracies of b")
    fractions = [v for v in a + b if 0.0 < v < 1.0]      # 0 and 1 read the same on both scales
    larger = [v for v in a + b if v > 1.0]
    if fractions and larger:
        raise ValueError(f"these accuracies mix fractions {fractions} and percentages {larger}: "
                         "give all of them as fractions in [0, 1] (divide the percentages by 100)")
    return a, b


def summarize(values: Iterable[float]) -> Summary:
    """Mean, sample standard deviation (ddof=1), n and standard error of the mean.

    The sample std (n - 1 in the denominator) is the unbiased choice for the handful of
    seeds a lab can afford. With one value there is no spread to measure: ``std`` and
    ``se`` are None (not NaN, not 0), so nobody mistakes one run for a noiseless one.
    """
    xs = _finite(values)
    n = len(xs)
    mean = sum(xs) / n
    if n < 2:
        return Summary(mean, None, n, None)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return Summary(mean, std, n, std / math.sqrt(n))


# ----------------------------------------------------------------------------- differences
@dataclass(frozen=True)
class Difference:
    """A difference ``b - a`` of accuracies with its standard error.

    ``method``: "paired" (per-seed differences, ``n`` pairs), "same images" (two models
    scored image by image on one test set, ``n`` images), "binomial" (one run each,
    test-set error only, ``n`` = 1) or "unpaired" (means over different seeds; ``n`` is
    None, ``n_a``/``n_b`` the seeds per side). ``std`` is the std of the per-seed
    differences (paired only, else None). ``t = mean / se``.
    """
    mean: float
    std: float | None
    se: float
    n: int | None
    t: float
    method: str
    seeds: tuple = ()
    n_a: int = 1
    n_b: int = 1

    @property
    def paired(self) -> bool:
        return self.method == "paired"

    def as_dict(self) -> dict:
        return asdict(self)


def _t(mean: float, se: float) -> float:
    if se > 0:
        return mean / se
    return 0.0 if mean == 0 else math.copysign(math.inf, mean)


def _sort_key(seed: Any) -> tuple:
    return (str(type(seed)), seed) if isinstance(seed, (int, float, str)) else (str(type(seed)), str(seed))


def paired_difference(a_by_seed: Mapping[Hashable, float], b_by_seed: Mapping[Hashable, float],
                      n_test: int | None = None) -> Difference:
    """Difference ``b - a`` over the seeds present in both, with its standard error.

    Pairing by seed removes what the two runs share (the same initial weights, data
    order and augmentations), so the spread of the per-seed differences measures the
    noise of the *difference*, usually much smaller than the noise of each accuracy:
    mean and std (ddof=1) of the differences, ``se = std / sqrt(n)``, ``t = mean / se``.

    With a single pair there is no spread to measure, so the standard error falls back
    to the test set's: ``sqrt(se_a**2 + se_b**2)`` with ``se = binomial_se(acc,
    n_test)``, as for two independent samples. This is conservative (too large): both
    runs are scored on the same test images, and the images both get right or both
    get wrong cancel out of the difference; a paired test (McNemar) on per-image
    predictions would be tighter, but rows hold only accuracies. ``n_test`` is needed
    for this fallback only.
    """
    _one_scale(a_by_seed.values(), b_by_seed.values())
    common = sorted(set(a_by_seed) & set(b_by_seed), key=_sort_key)
    if not common:
        raise ValueError(f"no seed in common to pair: a has seeds {sorted(a_by_seed, key=_sort_key)}, "
                         f"b has {sorted(b_by_seed, key=_sort_key)}")
    if len(common) == 1:
        seed = common[0]
        if n_test is None:
            raise ValueError("one pair of runs has no seed-to-seed spread: its standard error comes "
                             "from the test set, so n_test (number of test images) is needed")
        a, b = float(a_by_seed[seed]), float(b_by_seed[seed])
        se = math.hypot(binomial_se(a, n_test), binomial_se(b, n_test))
        return Difference(b - a, None, se, 1, _t(b - a, se), "binomial", (seed,))
    s = summarize(float(b_by_seed[k]) - float(a_by_seed[k]) for k in common)
    assert s.std is not None and s.se is not None
    return Difference(s.mean, s.std, s.se, s.n, _t(s.mean, s.se), "paired", tuple(common),
                      s.n, s.n)


def _side_se(values: list[float], n_test: int | None) -> float:
    if len(values) >= 2:
        se = summarize(values).se
        assert se is not None
        return se
    if n_test is None:
        raise ValueError("a single run's standard error comes from the test set: n_test "
                         "(number of test images) is needed")
    return binomial_se(values[0], n_test)


def unpaired_difference(a_values: Sequence[float], b_values: Sequence[float],
                        n_test: int | None = None) -> Difference:
    """Difference of means ``mean(b) - mean(a)`` of runs that share no seeds.

    Each side's standard error is the SE of its mean over seeds (two or more) or the
    binomial SE of its single run; they add in quadrature, ``sqrt(se_a**2 + se_b**2)``.
    Used when pairing is impossible, e.g. the teacher (``teacher_seed``) against a
    student (``seed``). For one run each it is the same as the single-pair fallback of
    ``paired_difference``, and conservative for the same reason.
    """
    a, b = _one_scale(a_values, b_values)
    se = math.hypot(_side_se(a, n_test), _side_se(b, n_test))
    mean = sum(b) / len(b) - sum(a) / len(a)
    if len(a) == 1 and len(b) == 1:
        return Difference(mean, None, se, 1, _t(mean, se), "binomial")
    return Difference(mean, None, se, None, _t(mean, se), "unpaired", (), len(a), len(b))


def same_images_difference(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> Difference:
    """``acc(b) - acc(a)`` of two models scored on the *same* test images, with its SE.

    Per image the difference is -1, 0 or +1; its mean is the accuracy gap and its SE is
    ``std / sqrt(n)``. Two models are mostly right on the same images, so this is much
    smaller than the unpaired ``sqrt(se_a**2 + se_b**2)`` (the idea of McNemar's test).
    It covers the test set's sampling only: a second seed can still move the gap by
    more (``paired_difference`` over seeds covers that).
    """
    a = [bool(v) for v in correct_a]
    b = [bool(v) for v in correct_b]
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"both models must be scored on the same test images (got {len(a)} and "
                         f"{len(b)} answers; at least 2)")
    d = [int(y) - int(x) for x, y in zip(a, b)]
    s = summarize(d)
    assert s.se is not None
    return Difference(s.mean, s.std, s.se, len(d), _t(s.mean, s.se), "same images")


# ----------------------------------------------------------------------------- verdicts
def verdict(gain: float, se: float, threshold: float = 2.0) -> str:
    """"significant gain" / "significant loss" when ``|gain| > threshold * se``, else
    "within noise".

    Two standard errors is the usual rough line (about 95% for a normal error). It is a
    rule of thumb, not a test: with 3 seeds the SE is itself estimated from 2 degrees
    of freedom and Student's t would ask for 4.3 SE; pass ``threshold`` to be stricter.
    A gain "within noise" is not shown to be zero, only not shown to be real.
    """
    if se is None or math.isnan(float(se)) or se < 0:
        raise ValueError(f"a verdict needs a standard error >= 0, got {se!r}")
    gain = float(gain)
    if math.isnan(gain):
        raise ValueError("a verdict needs a gain, got nan (an accuracy that was never measured?)")
    if abs(gain) > threshold * float(se):
        return "significant gain" if gain > 0 else "significant loss"
    return "within noise"


def _points(x: float) -> str:
    return f"{100 * x:.2f}"


def describe_gain(name_a: str, name_b: str, diff: Difference | Mapping[str, Any],
                  threshold: float = 2.0) -> str:
    """One sentence for a notebook or a report: ``name_b`` against ``name_a`` (the baseline).

    ``diff`` is ``b - a`` (a ``Difference`` or its ``as_dict()``); numbers are in points
    (x100), e.g. "KD logits vs baseline: +0.59 ± 0.27 points (3 seeds, paired) —
    significant gain (t=4.1)". The parenthesis says where the ± comes from, since a
    seed-paired SE and a test-set SE mean different things.
    """
    d = diff.as_dict() if isinstance(diff, Difference) else dict(diff)
    mean, se, t, method = float(d["mean"]), float(d["se"]), float(d["t"]), d.get("method", "paired")
    if method == "paired":
        how = f"{d['n']} seeds, paired"
    elif method == "binomial":
        how = "1 run each, test-set SE"
    elif method == "same images":
        how = f"1 run each, {d['n']} test images compared one by one"
    else:
        how = f"{d.get('n_a')} vs {d.get('n_b')} seeds, unpaired"
    sign = "+" if mean >= 0 else "-"
    t_text = f"{t:.1f}" if math.isfinite(t) else ("inf" if t > 0 else "-inf")
    return (f"{name_b} vs {name_a}: {sign}{_points(abs(mean))} ± {_points(se)} points ({how}) — "
            f"{verdict(mean, se, threshold)} (t={t_text})")


def single_run_comparison(name_a: str, acc_a: float, name_b: str, acc_b: float,
                          n_test: int) -> tuple[Difference, str]:
    """``b - a`` for one run each on the same ``n_test`` test images, and what to print.

    The text says which run is higher, whether the gap exceeds its standard error (test set
    only, ``unpaired_difference``) and the verdict of ``describe_gain``: the notebooks' result
    cells read the measured numbers through it instead of claiming a winner in prose.
    """
    diff = unpaired_difference([acc_a], [acc_b], n_test)
    who = "equal accuracy" if diff.mean == 0 else f"{name_b if diff.mean > 0 else name_a} is higher"
    beyond = "exceeds" if abs(diff.mean) > diff.se else "does not exceed"
    text = (f"{name_b} - {name_a}: {100 * diff.mean:+.2f} points: {who}; the difference {beyond} its SE "
            f"({100 * diff.se:.2f} points, test set of {n_test})\n    {describe_gain(name_a, name_b, diff)}")
    return diff, text


# ----------------------------------------------------------------------------- rows
def by_run_and_seed(rows: Iterable[Mapping[str, Any]], key: str = "test_acc") -> dict[str, dict]:
    """``{run: {seed: row}}``, runs in order of first appearance.

    A later row for the same run and seed replaces an earlier one (the results file is
    append-only: the latest line is the current result). Rows without a ``seed`` share
    the seed ``None``; rows without ``key`` are skipped.
    """
    out: dict[str, dict] = {}
    for row in rows:
        if row.get(key) is None:
            continue
        out.setdefault(str(row["run"]), {})[row.get("seed")] = row
    return out


def _n_test(run: str, rows: Iterable[Mapping[str, Any]]) -> int | None:
    sizes = {int(r["n_test"]) for r in rows if r.get("n_test") is not None}
    if len(sizes) > 1:
        raise ValueError(f"rows of {run} were scored on test sets of different sizes {sorted(sizes)}")
    return sizes.pop() if sizes else None


def _check_no_smoke_mix(rows: Sequence[Mapping[str, Any]]) -> None:
    smoke = {bool(r.get("smoke", False)) for r in rows}
    if len(smoke) > 1:
        runs = sorted({str(r["run"]) for r in rows if r.get("smoke")})
        raise ValueError(f"{SMOKE_MIX_MESSAGE}: smoke rows of {runs} are mixed with real rows; "
                         "compare smoke rows with smoke rows only")


def run_summary(run: str, rows_by_seed: Mapping[Hashable, Mapping[str, Any]],
                key: str = "test_acc") -> dict:
    """One run's line of ``table`` from its rows (one per seed).

    ``se`` is the SE of the mean over seeds when there are two or more (``se_kind``
    "seeds"), the binomial test-set SE for a single run ("binomial"; None when the
    row has no ``n_test``).
    """
    rows = list(rows_by_seed.values())
    s = summarize(float(r[key]) for r in rows)
    if s.n >= 2:
        se, kind = s.se, "seeds"
    else:
        n = _n_test(run, rows)
        se, kind = (binomial_se(s.mean, n), "binomial") if n else (None, None)
    return {"run": run, "n_seeds": s.n, "mean": s.mean, "std": s.std, "se": se, "se_kind": kind,
            "seeds": sorted(rows_by_seed, key=_sort_key), "values": [float(r[key]) for r in rows],
            "n_test": _n_test(run, rows), "smoke": any(bool(r.get("smoke", False)) for r in rows)}


def table(rows: Sequence[Mapping[str, Any]], key: str = "test_acc") -> list[dict]:
    """Per run: run, n_seeds, mean, std (None for one seed), se, se_kind, smoke.

    ``se`` is std/sqrt(n) over seeds for two or more seeds, else the binomial SE of the
    one run. Smoke rows (synthetic data) and real rows are refused together (ValueError):
    a smoke accuracy next to real ones would read as a result.
    """
    rows = list(rows)
    _check_no_smoke_mix(rows)
    return [run_summary(run, seeds, key) for run, seeds in by_run_and_seed(rows, key).items()]


def seeds_in_common(rows: Sequence[Mapping[str, Any]], run_a: str, run_b: str, key: str = "test_acc") -> int:
    """How many seeds both runs have rows for: 2 or more allow a comparison paired by seed."""
    grouped = by_run_and_seed(rows, key)
    return len(set(grouped.get(run_a, {})) & set(grouped.get(run_b, {})))


def compare_runs(rows: Sequence[Mapping[str, Any]], baseline: str, other: str,
                 key: str = "test_acc") -> Difference:
    """``other - baseline`` from result rows, with the best standard error the rows allow.

    Seeds the two runs have in common (two or more) are paired (``paired_difference``);
    one run each falls back to the test-set SE (conservative, see there); runs with
    several seeds but fewer than two in common are compared by their means
    (``unpaired_difference``). Smoke and real rows are never compared.
    """
    grouped = by_run_and_seed(rows, key)
    for name in (baseline, other):
        if name not in grouped:
            raise ValueError(f"no {key} rows for run {name!r} (runs present: {list(grouped)})")
    a_rows, b_rows = grouped[baseline], grouped[other]
    _check_no_smoke_mix(list(a_rows.values()) + list(b_rows.values()))
    n_a, n_b = _n_test(baseline, a_rows.values()), _n_test(other, b_rows.values())
    if n_a is not None and n_b is not None and n_a != n_b:
        raise ValueError(f"{baseline} ({n_a} test images) and {other} ({n_b}) were scored on "
                         "different test sets; their accuracies are not comparable at this precision")
    n_test = n_a if n_a is not None else n_b
    a = {s: float(r[key]) for s, r in a_rows.items()}
    b = {s: float(r[key]) for s, r in b_rows.items()}
    common = set(a) & set(b)
    if len(common) >= 2 or (len(common) == 1 and len(a) == len(b) == 1):
        return paired_difference(a, b, n_test)
    return unpaired_difference(list(a.values()), list(b.values()), n_test)
