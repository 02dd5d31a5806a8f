"""Students of increasing size, each trained on labels alone and with logit KD (notebook 11).

The question a course must answer with numbers, not lore: *where on the size axis does
distillation pay most?* A very small student may be too far from its teacher to follow it
(the capacity gap of Cho & Hariharan 2019; Mirzadeh et al. 2020), a large one may need it
least. So each recipe gets a *family* of students spanning more than 10x in parameters, all
below its teacher, each trained twice from the same seed and settings: labels only, and KD
on logits from the lab's teacher. Everything on the axes is measured: parameters counted on
the networks, latency and throughput timed with ``kdtp.latency``, accuracy read from the runs
with its uncertainty (``kdtp.stats``: the binomial test-set SE of one run, mean ± std over
seeds where a sweep trained several).

Every point trains from scratch, also in the ImageNet recipes: a CNN has no ImageNet
weights, and a pretrained ResNet18 next to scratch CNNs would mix size with initialisation.
The recipe's own student (``cnn_small`` in ``cpu``, ``air_small`` in ``cpu_air``, ``resnet18``
in ``fast``/``paper``) is the lab's scratch pair of 05 (``student_scratch_baseline`` /
``student_scratch_kd_scores``): no new run; in the ``cpu`` recipes, where nothing is
pretrained, those reuse 02's and 03's finished runs. The other sizes are the ``student_w*``
and ``student_air_w*`` runs declared in ``kdtp.course``.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import torch
from torch import nn

from . import stats
from .env import ConfigError
from .latency import latency_and_throughput
from .models import build_model, count_parameters
from .plot_style import KD_COLOR, STUDENT_COLOR, TEACHER_COLOR, finish, is_smoke
from .recipes import Recipe
from .results import RunResult
from .sweep_rows import seed_rows as _seed_rows_of_runs

# each recipe's students, smallest first (checked by measurement: tests and notebook 11)
FAMILY: dict[str, tuple[str, ...]] = {
    "cpu": ("cnn_w4", "cnn_w8", "cnn_small", "cnn_w16"),          # teacher cnn_large
    "cpu_air": ("air_w4", "air_w8", "air_small", "air_w24"),      # teacher air_large
    "fast": ("cnn_w8", "cnn_w16", "cnn_w32", "resnet18"),         # teacher resnet50
    "paper": ("cnn_w8", "cnn_w16", "cnn_w32", "resnet18"),
}
# each recipe's design at widths that double, smallest first: 11's parameters-and-latency demo
# (doubling a width about quadruples the parameters); cpu_air's air_w24 is 1.5x air_small, left out
DOUBLING: dict[str, tuple[str, ...]] = {"cpu_air": ("air_w4", "air_w8", "air_small")}
DOUBLING_DEFAULT = ("cnn_w4", "cnn_w8", "cnn_w16", "cnn_w32")


def doubling_widths(recipe_name: str) -> tuple[str, ...]:
    """The networks of ``recipe_name``'s design whose widths double, smallest first."""
    return DOUBLING.get(recipe_name, DOUBLING_DEFAULT)


# the runs of the sizes that are not a recipe's own student (declared in kdtp/course.py)
SIZE_RUNS: dict[str, tuple[str, str]] = {
    **{f"cnn_{w}": (f"student_{w}_baseline", f"student_{w}_kd_logits") for w in ("w4", "w8", "w16", "w32")},
    **{f"air_{w}": (f"student_air_{w}_baseline", f"student_air_{w}_kd_logits") for w in ("w4", "w8", "w24")}}
# the recipe's own student: the lab's from-scratch pair (05_scratch)
OWN_STUDENT_RUNS = ("student_scratch_baseline", "student_scratch_kd_scores")
LABELS, KD = "labels only", "KD on logits"
TRAININGS = (LABELS, KD)


class SizePoint(NamedTuple):
    """One size of the family: its architecture and the two runs trained at that size."""
    arch: str
    baseline: str
    kd: str


def family(recipe: Recipe) -> tuple[str, ...]:
    """The architectures of ``recipe``'s students, smallest first."""
    if recipe.name not in FAMILY:
        raise ConfigError(f"recipe {recipe.name!r} has no student family; choose one of "
                          f"{', '.join(FAMILY)} or add its entry to kdtp.student_size.FAMILY")
    return FAMILY[recipe.name]


def size_points(recipe: Recipe) -> list[SizePoint]:
    """The family as runs: per size, the labels-only run and the logit-KD run."""
    points = []
    for arch in family(recipe):
        if arch == recipe.student_arch:
            points.append(SizePoint(arch, *OWN_STUDENT_RUNS))
        elif arch in SIZE_RUNS:
            points.append(SizePoint(arch, *SIZE_RUNS[arch]))
        else:
            raise ConfigError(f"no runs are declared for {arch} in the {recipe.name} family (the recipe's "
                              f"student is {recipe.student_arch}); declare them in kdtp/course.py and "
                              "kdtp.student_size.SIZE_RUNS, or keep the recipe's student_arch")
    return points


def points_to_train(recipe: Recipe) -> list[SizePoint]:
    """The sizes the notebook trains: all of them, but in smoke mode only the recipe's own
    student (the lab trained it already), the smallest and the largest of the others.

    Why: CI runs every notebook on two CPU cores within a time limit; three sizes still
    span more than 10x and exercise every path. Real recipes train the whole family.
    """
    points = size_points(recipe)
    if not recipe.smoke:
        return points
    others = [p for p in points if p.arch != recipe.student_arch]
    keep = {p for p in points if p.arch == recipe.student_arch} | set(others[:1] + others[-1:])
    return [p for p in points if p in keep]


def run_names(recipe: Recipe) -> list[str]:
    """Every run the family trains, smallest size first, labels-only before KD."""
    return [name for p in size_points(recipe) for name in (p.baseline, p.kd)]


def parameters(arch: str, recipe: Recipe) -> int:
    """Parameters of a fresh ``arch`` network as ``recipe`` builds it, counted on the network.

    Built on PyTorch's ``meta`` device (shapes only, nothing allocated), so even ResNet50
    counts in a fraction of a second; the CIFAR stem of ``fast`` changes ResNet18's count.
    """
    with torch.device("meta"):
        model = build_model(arch, num_classes=10, pretrained=False, cifar_stem=recipe.cifar_stem)
    return count_parameters(model)


def speed(model: nn.Module, recipe: Recipe) -> dict:
    """Measured latency at batch 1 and throughput (``kdtp.latency``), at the recipe's image size.

    Smoke mode times fewer iterations on a smaller batch: the numbers then only show that
    the measurement runs.
    """
    if recipe.smoke:
        return latency_and_throughput(model, recipe.image_size, throughput_batch=16, warmup=1,
                                      min_iterations=2, max_iterations=3, min_seconds=0.0)
    return latency_and_throughput(model, recipe.image_size, throughput_batch=256)


# ----------------------------------------------------------------------------- rows
def seed_rows(result: RunResult, sweep_rows: Iterable[Mapping[str, Any]] = ()) -> list[dict]:
    """The run's accuracy as ``kdtp.stats`` rows: this result, plus every other seed a sweep
    trained of the very same experiment (``kdtp.sweep_rows.seed_rows``: same configuration but the
    seed, same teacher; anything else is another experiment and is left out)."""
    return _seed_rows_of_runs({result.name: result}, list(sweep_rows))[result.name]


def _row(arch: str, training: str, result: RunResult, measured: Mapping, sweep_rows) -> dict:
    seeds = seed_rows(result, sweep_rows)
    s = stats.run_summary(result.name, {r["seed"]: r for r in seeds})
    several = s["n_seeds"] >= 2
    return {"arch": arch, "training": training, "run": result.name,
            "params": count_parameters(result.model), "latency_ms": measured["latency_ms"],
            "throughput": measured["throughput"], "device": measured.get("device"),
            "precision": measured.get("precision"), "acc": s["mean"],
            "err": s["std"] if several else s["se"],
            "err_kind": f"std over {s['n_seeds']} seeds" if several else "binomial SE, 1 run",
            "n_seeds": s["n_seeds"], "n_test": s["n_test"], "smoke": result.smoke,
            "config_hash": result.config_hash, "teacher_config": result.config.get("teacher_config"),
            "seed_rows": seeds}


def size_rows(results: Mapping[str, Mapping[str, RunResult]], teacher: RunResult, recipe: Recipe, *,
              sweep_rows: Iterable[Mapping[str, Any]] = (),
              speeds: Mapping[str, Mapping] | None = None) -> list[dict]:
    """One row per (size, training), smallest size first, then the teacher's row.

    ``results``: ``{arch: {"labels only": RunResult, "KD on logits": RunResult}}``.
    ``speeds``: ``{arch: latency_and_throughput(...)}`` measured elsewhere; by default each
    architecture (and the teacher's) is timed here, once: both trainings of a size are the
    same network. ``sweep_rows``: rows of ``python -m kdtp sweep`` (other seeds).
    """
    sweep_rows = list(sweep_rows)
    measured = dict(speeds or {})
    teacher_arch = teacher.config["arch"]
    for arch, model in [*((a, r[LABELS].model) for a, r in results.items()), (teacher_arch, teacher.model)]:
        if arch not in measured:
            measured[arch] = speed(model, recipe)
    rows = [_row(arch, training, by_training[training], measured[arch], sweep_rows)
            for arch, by_training in results.items() for training in TRAININGS]
    rows.sort(key=lambda r: (r["params"], TRAININGS.index(r["training"])))
    return rows + [_row(teacher_arch, "teacher", teacher, measured[teacher_arch], sweep_rows)]


def kd_gains(rows: Sequence[Mapping[str, Any]],
             correct: Mapping[str, Sequence[bool]] | None = None) -> list[dict]:
    """Per size: KD's accuracy minus the labels-only one, with its standard error and verdict.

    ``kdtp.stats.compare_runs`` pairs the seeds both runs have (two or more). With one run
    each, ``correct`` (run name -> which test images it gets right, ``kdtp.train.
    correct_per_image``) compares them image by image (``stats.same_images_difference``):
    both runs see the same test images, so the images both get right or both get wrong
    cancel, and the SE is about half the test-set SE of two independent runs, which is the
    fallback without ``correct``.
    """
    by_arch: dict[str, dict] = {}
    for r in rows:
        if r["training"] in TRAININGS:
            by_arch.setdefault(r["arch"], {})[r["training"]] = r
    gains = []
    for arch, pair in by_arch.items():
        base, kd = pair[LABELS], pair[KD]
        one_run_each = len(base["seed_rows"]) == len(kd["seed_rows"]) == 1
        if one_run_each and correct and base["run"] in correct and kd["run"] in correct:
            for r in (base, kd):
                _check_answers(r, correct[r["run"]])
            diff = stats.same_images_difference(correct[base["run"]], correct[kd["run"]])
        else:
            diff = stats.compare_runs(base["seed_rows"] + kd["seed_rows"], base["run"], kd["run"])
        gains.append({"arch": arch, "params": base["params"], "gain": diff.mean, "se": diff.se,
                      "method": diff.method, "verdict": stats.verdict(diff.mean, diff.se),
                      "text": stats.describe_gain(LABELS, KD, diff), "smoke": base["smoke"] or kd["smoke"]})
    return gains


def _check_answers(row: Mapping[str, Any], answers: Sequence[bool]) -> None:
    """Per-image answers must be the run's own on its test set: same count, same accuracy
    (within 1 point: a checkpoint scored on another device flips a few images)."""
    answers = [bool(a) for a in answers]
    acc = sum(answers) / max(len(answers), 1)
    if (row["n_test"] is not None and len(answers) != row["n_test"]) or abs(acc - row["acc"]) > 0.01:
        raise ValueError(f"{row['run']}: {len(answers)} per-image answers with accuracy {acc:.4f}, but the run "
                         f"scored {row['acc']:.4f} on {row['n_test']} test images; pass each run's own "
                         "kdtp.train.correct_per_image on the test loader of its recipe")


def best_size(gains: Sequence[Mapping[str, Any]]) -> dict:
    """The size where KD gained most, and whether that gain stands out from the others.

    "Stands out" asks for the largest gain to exceed every other by more than two standard
    errors of that difference (``sqrt(se_1^2 + se_2^2)``): else the sizes are not told apart.
    """
    top = max(gains, key=lambda g: g["gain"])
    apart = all(top["gain"] - g["gain"] > 2 * math.hypot(top["se"], g["se"]) for g in gains if g is not top)
    return {**top, "stands_out": apart and len(gains) > 1}


def size_table(rows: Sequence[Mapping[str, Any]], gains: Sequence[Mapping[str, Any]] = ()) -> str:
    """The rows (and KD's gain per size) as aligned text; smoke tables say so on every line."""
    gain_of = {g["arch"]: g for g in gains}
    lines = [f"{'arch':10} {'training':13} {'params':>11} {'latency ms':>10} {'img/s':>9} "
             f"{'test acc':>8} {'±':>7}  {'(kind)':20} KD gain (points)"]
    for r in rows:
        g = gain_of.get(r["arch"]) if r["training"] == KD else None
        gain = f"{100 * g['gain']:+.2f} ± {100 * g['se']:.2f}, {g['verdict']}" if g else ""
        err = f"{r['err']:7.4f}" if r["err"] is not None else f"{'?':>7}"
        lines.append(f"{r['arch']:10} {r['training']:13} {r['params']:11,d} {r['latency_ms']:10.3f} "
                     f"{r['throughput']:9,.0f} {r['acc']:8.4f} {err}  {r['err_kind']:20} {gain}"
                     + ("  (smoke)" if r["smoke"] else ""))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figure
def _short_count(x: float) -> str:
    """18814 -> "19k", 1166506 -> "1.2M": tick labels a reader takes in at a glance."""
    for scale, unit in ((1e6, "M"), (1e3, "k"), (1.0, "")):
        if abs(x) >= scale:
            v = x / scale
            return f"{v:.0f}{unit}" if v >= 10 else f"{v:.2g}{unit}"
    return f"{x:.2g}"


def _log_axis(ax, count: bool) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: _short_count(x) if count else f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.grid(alpha=0.3, which="both")


def size_figure(rows: Sequence[Mapping[str, Any]], gains: Sequence[Mapping[str, Any]] | None = None,
                smoke: bool | None = None, title: str = "Accuracy against student size"):
    """Accuracy against parameters (log) and against measured latency, one curve per
    training, the teacher as a star, error bars from the rows; a third panel draws KD's gain
    per size with its SE: the answer to "where does distillation pay most?"."""
    import matplotlib.pyplot as plt

    smoke = is_smoke(list(rows), smoke)
    gains = kd_gains(rows) if gains is None else gains
    fig, axes = plt.subplots(1, 3, figsize=(14.5, 4.4))
    styles = {LABELS: dict(color=STUDENT_COLOR, marker="o"), KD: dict(color=KD_COLOR, marker="s")}
    teacher = [r for r in rows if r["training"] == "teacher"]
    for ax, key, label in ((axes[0], "params", "parameters (log scale)"),
                           (axes[1], "latency_ms", "latency at batch 1, ms (measured, log scale)")):
        for training, style in styles.items():
            line = [r for r in rows if r["training"] == training]
            ax.errorbar([r[key] for r in line], [r["acc"] for r in line], yerr=[r["err"] or 0.0 for r in line],
                        capsize=3, label=training, **style)
        for r in teacher:
            ax.errorbar([r[key]], [r["acc"]], yerr=[r["err"] or 0.0], color=TEACHER_COLOR, marker="*",
                        markersize=14, capsize=3, linestyle="none", label=f"teacher {r['arch']}")
        for r in rows:
            if r["training"] == LABELS:
                ax.annotate(r["arch"], (r[key], r["acc"]), xytext=(0, -13), textcoords="offset points",
                            ha="center", fontsize=7)
        _log_axis(ax, count=key == "params")
        ax.set(xlabel=label, ylabel="test accuracy")
    axes[0].legend(fontsize=8, loc="best")
    ax = axes[2]
    ax.errorbar([g["params"] for g in gains], [100 * g["gain"] for g in gains],
                yerr=[100 * g["se"] for g in gains], color=KD_COLOR, marker="s", capsize=3)
    ax.axhline(0.0, color="black", lw=0.8)
    _log_axis(ax, count=True)
    ax.set(xlabel="student parameters (log scale)", ylabel="KD - labels only (points, ± 1 SE)")
    ax.set_title("what KD adds at each size", fontsize=10)
    kinds = sorted({r["err_kind"] for r in rows})
    device = next((r["device"] for r in rows if r.get("device")), None)
    return finish(fig, f"{title}\n(error bars: {'; '.join(kinds)}"
                       f"{f'; latency measured on {device}' if device else ''})", smoke)
