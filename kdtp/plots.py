"""The figures of the lab: example images, learning curves, temperature, comparison.

Each function draws one figure and returns it (a ``matplotlib.figure.Figure``); the
notebook shows it, ``save`` writes it under ``kdtp.env.figures_root()`` for slides. The
teaching text lives in the notebooks: these functions only draw.

Smoke runs must never pass for real results, so every figure drawn from smoke results
(or in smoke mode) carries a red "SMOKE RUN" line in its title, and ``save`` puts it in
``<figures>/smoke/``, where it cannot overwrite a real figure.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from . import stats
from .data import CLASSES, augment
from .env import figures_root, smoke_mode

SMOKE_NOTE = "SMOKE RUN - synthetic data, not real results"

# short names that fit under a bar; the full titles live in kdtp.runs.RUNS
SHORT_NAMES = {
    "teacher_resnet50": "teacher",
    "student_pretrained_baseline": "pretrained\nbaseline",
    "student_pretrained_kd_logits": "pretrained\nKD logits",
    "student_pretrained_kd_features": "pretrained\nKD features",
    "student_scratch_baseline": "scratch\nbaseline",
    "student_scratch_kd_scores": "scratch\nKD logits",
}
TEACHER_COLOR, STUDENT_COLOR, KD_COLOR = "#4c72b0", "#999999", "#dd8452"


# ----------------------------------------------------------------------------- helpers
def _get(item: Any, key: str, default: Any = None) -> Any:
    """A field of a RunResult (attribute / metrics) or of a results row (dict)."""
    if isinstance(item, Mapping):
        return item.get(key, default)
    if hasattr(item, key):
        return getattr(item, key)
    return getattr(item, "metrics", {}).get(key, default)


def _as_list(results: Any) -> list:
    if results is None:
        return []
    if isinstance(results, Mapping) and "run" not in results and "name" not in results:
        return list(results.values())          # {name: RunResult}
    if isinstance(results, (list, tuple)):
        return list(results)
    return [results]


def run_name(item: Any) -> str:
    return str(_get(item, "name") or _get(item, "run") or "?")


def short_name(item: Any) -> str:
    name = run_name(item)
    return SHORT_NAMES.get(name, name.replace("_", "\n", 1))


def is_smoke(results: Any = None, smoke: bool | None = None) -> bool:
    """Explicit ``smoke`` wins; else smoke if any result is, or if smoke mode is on."""
    if smoke is not None:
        return bool(smoke)
    if any(bool(_get(r, "smoke", False)) for r in _as_list(results)):
        return True
    return smoke_mode()


def finish(fig: Figure, title: str, smoke: bool) -> Figure:
    """Title the figure; a smoke figure gets the red SMOKE line and is remembered as such."""
    if smoke:
        fig.suptitle(f"{title}\n{SMOKE_NOTE}", color="#c0392b", fontweight="bold")
        fig._kdtp_smoke = True  # type: ignore[attr-defined]  # save() reads it
    else:
        fig.suptitle(title, fontweight="bold")
    fig.tight_layout()
    return fig


def figures_dir(smoke: bool | None = None) -> Path:
    """``figures_root()`` for real figures, ``figures_root()/smoke`` for smoke ones."""
    smoke = smoke_mode() if smoke is None else smoke
    root = figures_root()
    return root / "smoke" if smoke else root


def save(fig: Figure, name: str, smoke: bool | None = None, dpi: int = 150) -> Path:
    """Write ``fig`` as ``<figures>/<name>.png`` (``<figures>/smoke/`` for smoke figures).

    A figure is treated as smoke when it was drawn from smoke results, when ``smoke`` is
    True, or in smoke mode; a smoke figure without the SMOKE line gets it here, so no
    saved smoke figure can be mistaken for a real one.
    """
    marked = bool(getattr(fig, "_kdtp_smoke", False))
    smoke = marked or (smoke_mode() if smoke is None else bool(smoke))
    if smoke and not marked:
        old = fig.get_suptitle() if hasattr(fig, "get_suptitle") else ""
        finish(fig, old or name, True)
    folder = figures_dir(smoke)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name if name.endswith(".png") else f"{name}.png")
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def save_csv(rows: Sequence[Mapping[str, Any]], name: str, smoke: bool | None = None) -> Path:
    """Write table rows (dicts) as ``<figures>/<name>.csv`` (smoke: the smoke folder).

    Smoke tables get a ``smoke`` column set to True on every row.
    """
    smoke = is_smoke(rows, smoke)
    folder = figures_dir(smoke)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name if name.endswith(".csv") else f"{name}.csv")
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    if smoke and "smoke" not in keys:
        keys.append("smoke")
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, **({"smoke": True} if smoke else {})})
    return path


def _epoch_axis(ax, n_epochs: int) -> None:
    """Whole epochs on the x axis, also for a one-epoch (smoke) run."""
    n_epochs = max(1, n_epochs)
    ax.set_xlim(0.5, n_epochs + 0.5)
    if n_epochs <= 20:
        ax.set_xticks(range(1, n_epochs + 1))
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)


def _to_hwc(img: torch.Tensor):
    """(3, H, W) uint8 or float in [0, 1] -> (H, W, 3) array for imshow."""
    img = img.detach().cpu()
    if img.dtype == torch.uint8:
        img = img.float() / 255
    return img.clamp(0, 1).permute(1, 2, 0).numpy()


# ----------------------------------------------------------------------------- 00 data
def image_grid(images: torch.Tensor, labels: torch.Tensor, per_class: int = 8,
               classes: Sequence[str] = CLASSES, smoke: bool | None = None,
               title: str = "Examples per class") -> Figure:
    """``per_class`` training images of every class, one row per class.

    Seeing the data first tells a student what 32x32 means: small, blurry, often ambiguous.
    """
    smoke = is_smoke(smoke=smoke)
    n_cls = len(classes)
    fig, axes = plt.subplots(n_cls, per_class, figsize=(per_class * 0.9, n_cls * 0.95), squeeze=False)
    for c in range(n_cls):
        idx = torch.nonzero(labels == c).flatten()[:per_class]
        for j in range(per_class):
            ax = axes[c][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if j < len(idx):
                ax.imshow(_to_hwc(images[idx[j]]), interpolation="nearest")
        axes[c][0].set_ylabel(classes[c], rotation=0, ha="right", va="center", fontsize=9)
    return finish(fig, title, smoke)


def augmentations(images: torch.Tensor, n: int = 5, seed: int = 0, smoke: bool | None = None) -> Figure:
    """Each image (left) and ``n`` random crops+flips of it, made by ``kdtp.data.augment``.

    Shows that augmentation changes the pixels but never the label.
    """
    smoke = is_smoke(smoke=smoke)
    gen = torch.Generator(device=images.device).manual_seed(seed)
    rows = len(images)
    fig, axes = plt.subplots(rows, n + 1, figsize=((n + 1) * 1.1, rows * 1.15), squeeze=False)
    versions = [augment(images, gen) for _ in range(n)]
    for i in range(rows):
        for j in range(n + 1):
            ax = axes[i][j]
            ax.imshow(_to_hwc(images[i] if j == 0 else versions[j - 1][i]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        if i == 0:
            axes[0][0].set_title("original", fontsize=9)
            for j in range(1, n + 1):
                axes[0][j].set_title(f"augmented {j}", fontsize=9)
    return finish(fig, "Random crop (padding 4) + horizontal flip", smoke)


# ----------------------------------------------------------------------------- training
def learning_curves(results: Any, smoke: bool | None = None, title: str = "Learning curves") -> Figure:
    """Training loss and validation accuracy per epoch, one line per run.

    The gap between the runs' validation curves is the effect being studied; a curve
    still rising at the last epoch says more epochs would help.
    """
    runs = _as_list(results)
    smoke = is_smoke(runs, smoke)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for r in runs:
        h = _get(r, "history", {}) or {}
        label = run_name(r)
        for ax, key in ((ax_loss, "train_loss"), (ax_acc, "val_acc")):
            values = h.get(key, [])
            if values:
                ax.plot(range(1, len(values) + 1), values, marker="o", label=label)
    ax_loss.set(xlabel="epoch", ylabel="training loss (all terms)", title="training loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy")
    n_epochs = max([len((_get(r, "history", {}) or {}).get("val_acc", [])) for r in runs] + [1])
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        _epoch_axis(ax, n_epochs)
    if runs:
        ax_acc.legend(fontsize=8)
    return finish(fig, title, smoke)


def loss_terms(result: Any, smoke: bool | None = None) -> Figure:
    """Each weighted loss term of one run per epoch (``train_ce``, ``train_kd``, ``train_feat``).

    Distillation adds a term to the hard-label loss; plotting them apart shows which one
    drives training.
    """
    smoke = is_smoke([result], smoke)
    h = _get(result, "history", {}) or {}
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in sorted(k for k in h if k.startswith("train_") and k not in ("train_loss", "train_acc")):
        ax.plot(range(1, len(h[key]) + 1), h[key], marker="o", label=key[len("train_"):])
    ax.set(xlabel="epoch", ylabel="weighted term (mean over the epoch)")
    ax.grid(alpha=0.3)
    _epoch_axis(ax, len(h.get("val_acc", [])))
    ax.legend()
    return finish(fig, f"Loss terms of {run_name(result)}", smoke)


@torch.no_grad()
def confusion(predictions: torch.Tensor, labels: torch.Tensor, classes: Sequence[str] = CLASSES,
              smoke: bool | None = None, title: str = "Confusion matrix (test set)") -> Figure:
    """Row-normalised confusion matrix: which classes the model mixes up.

    The mix-ups (cat/dog, automobile/truck) are the "dark knowledge" a teacher's soft
    outputs carry and hard labels do not.
    """
    smoke = is_smoke(smoke=smoke)
    k = len(classes)
    mat = torch.zeros(k, k)
    for t, p in zip(labels.cpu().tolist(), predictions.cpu().tolist()):
        mat[t, p] += 1
    mat = mat / mat.sum(1, keepdim=True).clamp_min(1)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(mat.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), classes, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true")
    for i in range(k):
        for j in range(k):
            if mat[i, j] >= 0.05:
                ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if mat[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return finish(fig, title, smoke)


# ----------------------------------------------------------------------------- temperature
def softmax_bars(logits: torch.Tensor, temperature: float, classes: Sequence[str] = CLASSES,
                 true_label: int | None = None, ax=None, smoke: bool | None = None) -> Figure:
    """Bars of ``softmax(logits / T)`` for one image (the widget in 03 redraws this)."""
    probs = torch.softmax(logits.detach().float().cpu() / temperature, dim=-1)
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6, 3.2))
    else:
        fig = ax.figure
    colors = [KD_COLOR if i == true_label else TEACHER_COLOR for i in range(len(classes))]
    ax.bar(range(len(classes)), probs.numpy(), color=colors)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    entropy = float(-(probs * probs.clamp_min(1e-12).log()).sum())
    ax.set_title(f"T = {temperature:g}   (entropy {entropy:.2f} nats)", fontsize=10)
    if own:
        finish(fig, "Teacher's soft targets", is_smoke(smoke=smoke))
    return fig


def temperature_figure(logits: torch.Tensor, temperatures: Iterable[float] = (1, 2, 4, 8),
                       classes: Sequence[str] = CLASSES, true_label: int | None = None,
                       smoke: bool | None = None) -> Figure:
    """The same logits softened by several temperatures, side by side.

    At T=1 almost all mass sits on one class; raising T reveals the teacher's ranking of
    the wrong classes, which is what the student learns from in KD.
    """
    temperatures = list(temperatures)
    fig, axes = plt.subplots(1, len(temperatures), figsize=(3.3 * len(temperatures), 3.4),
                             sharey=True, squeeze=False)
    for ax, t in zip(axes[0], temperatures):
        softmax_bars(logits, t, classes, true_label, ax=ax)
    axes[0][0].set_ylabel("probability")
    return finish(fig, "softmax(teacher logits / T) for one test image (orange: true class)",
                  is_smoke(smoke=smoke))


# ----------------------------------------------------------------------------- comparison
def _accuracy_row(item: Any, key: str = "test_acc", n_test: int | None = None) -> dict:
    """A RunResult or a results row as a plain row for ``kdtp.stats``.

    The seed comes from the row or the run's config; the number of test images from the
    row / metrics (``n_test``), else the config's ``data_sizes``, else ``n_test``.
    """
    config = _get(item, "config", None) or {}
    seed = _get(item, "seed")
    if seed is None:
        seed = config.get("seed")
    n = _get(item, "n_test") or (config.get("data_sizes") or {}).get("test") or n_test
    value = _get(item, key)
    return {"run": run_name(item), "seed": seed, key: None if value is None else float(value),
            "n_test": None if n is None else int(n), "smoke": bool(_get(item, "smoke", False))}


def _run_color(name: str) -> str:
    return TEACHER_COLOR if name.startswith("teacher") else (KD_COLOR if "kd" in name else STUDENT_COLOR)


def accuracy_bars(results: Any, reference: Mapping[str, float] | None = None,
                  smoke: bool | None = None, title: str = "Test accuracy", *,
                  n_test: int | None = None, key: str = "test_acc", from_zero: bool = False,
                  show_seeds: bool = True) -> Figure:
    """Test accuracy of each run as a bar with its standard error; optional reference marks.

    The gaps that matter (KD vs baseline) are a fraction of a point, so the y axis is
    zoomed on the data (mean +- 3 SE of every run, with a margin) instead of starting at
    0, where every bar would look the same; ``from_zero=True`` gives the full scale
    (and the dashed chance line). Error bars are +- 1 SE: the SE of the mean over seeds
    when a run has several seeds (each seed is then drawn as a dot over its bar), the
    binomial test-set SE ``sqrt(acc (1 - acc) / n_test)`` for a single run. Bars whose
    SE cannot be known (no ``n_test`` anywhere) get none.

    ``results``: RunResults or results rows, several per run (one per seed) allowed.
    ``reference``: run name -> accuracy published for the reference lab, drawn as black
    ticks. ``n_test``: test-set size for items that do not carry one. ``key``: the
    accuracy to plot (``"val_acc"`` for the validation set).
    """
    items = _as_list(results)
    smoke = is_smoke(items, smoke)
    first: dict[str, Any] = {}
    for item in items:
        first.setdefault(run_name(item), item)
    groups = stats.by_run_and_seed([_accuracy_row(i, key, n_test) for i in items], key)
    lines = [stats.run_summary(name, seeds, key) for name, seeds in groups.items()]
    names = [line["run"] for line in lines]
    means = [line["mean"] for line in lines]
    ses = [line["se"] for line in lines]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.35 * len(lines)), 4.4))
    bars = ax.bar(range(len(lines)), means, color=[_run_color(n) for n in names])
    kinds = {"seeds": "± 1 SE of the mean over seeds", "binomial": "± 1 SE, one run (test set, binomial)"}
    for kind, label in kinds.items():
        idx = [i for i, line in enumerate(lines) if line["se_kind"] == kind]
        if idx:
            ax.errorbar(idx, [means[i] for i in idx], yerr=[ses[i] for i in idx], fmt="none",
                        ecolor="black", elinewidth=1.2, capsize=5, zorder=4, label=label)
    dots_labelled = False
    for i, line in enumerate(lines):
        if show_seeds and line["n_seeds"] >= 2:
            k = line["n_seeds"]
            xs = [i + 0.3 * (j / (k - 1) - 0.5) for j in range(k)]
            ax.scatter(xs, line["values"], s=16, color="white", edgecolors="black", linewidths=0.8,
                       zorder=5, label=None if dots_labelled else "each seed")
            dots_labelled = True
    for b, m, se, line in zip(bars, means, ses, lines):
        text = f"{m:.4f}" + (f"\n±{se:.4f}" if se is not None else "")
        if line["n_seeds"] >= 2:
            text += f"\n{line['n_seeds']} seeds"
        ax.annotate(text, (b.get_x() + b.get_width() / 2, max([m + (se or 0.0)] + line["values"])),
                    xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize=8)
    refs = [float(reference[n]) for n in names if reference and n in reference]
    if reference:
        labelled = False
        for i, n in enumerate(names):
            if n in reference:
                ax.plot([i - 0.4, i + 0.4], [reference[n]] * 2, color="black", lw=2,
                        label=None if labelled else "reference lab")
                labelled = True
    values = [v for line in lines for v in line["values"]] + refs
    low = min([m - 3 * (se or 0.0) for m, se in zip(means, ses)] + values + [1.0])
    high = max([m + 3 * (se or 0.0) for m, se in zip(means, ses)] + values + [0.0])
    if from_zero or not lines:
        ylim = (0.0, min(1.05, max(means + refs + [0.1]) * 1.15 + 0.02))
    else:
        margin = max(0.1 * (high - low), 0.005)
        # the top margin is larger: it holds the value labels
        ylim = (max(0.0, low - margin), min(1.05, high + 3 * margin))
    if ylim[0] <= 0.1:
        ax.axhline(0.1, color="#c0392b", ls="--", lw=1, label="chance (0.10)")
    ax.set_xticks(range(len(lines)), [short_name(first[n]) for n in names], fontsize=8)
    what = "test accuracy" if key == "test_acc" else key.replace("_", " ")
    ax.set(ylabel=what if ylim[0] == 0 else f"{what} (axis does not start at 0)", ylim=ylim)
    ax.grid(axis="y", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8, framealpha=0.9)
    return finish(fig, title, smoke)


def own_run_among_class(own: Any, class_rows: Sequence[Mapping[str, Any]], smoke: bool | None = None,
                        title: str = "Your runs among the class's seeds", key: str = "test_acc") -> Figure:
    """The student's own runs (stars) drawn among the instructor's published seeds (dots).

    For each run of the published sweep: every seed as a dot, their mean +- one standard
    deviation as a band. A star inside the band is an ordinary run of that recipe; a
    star far outside it says something differs (settings, data, a bug) before any
    conclusion is drawn from it. The y axis is zoomed on the data, not from 0.
    """
    own_items = _as_list(own)
    smoke = is_smoke(own_items, smoke)
    groups = stats.by_run_and_seed([_accuracy_row(r, key) for r in class_rows], key)
    names = [n for n in groups if groups[n]]
    if not names:
        raise ValueError("no published sweep results to compare with (kdtp.sweep.published_rows)")
    mine = {run_name(i): float(_get(i, key)) for i in own_items if _get(i, key) is not None}
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 * len(names)), 4.2))
    values = []
    star_labelled = dot_labelled = False
    for i, name in enumerate(names):
        vals = [float(row[key]) for row in groups[name].values()]
        values += vals
        summary = stats.summarize(vals)
        if summary.std is not None:
            ax.fill_between([i - 0.35, i + 0.35], summary.mean - summary.std, summary.mean + summary.std,
                            color=_run_color(name), alpha=0.25, lw=0)
        ax.plot([i - 0.35, i + 0.35], [summary.mean] * 2, color=_run_color(name), lw=2)
        ax.scatter([i + 0.25 * (j / max(1, len(vals) - 1) - 0.5) for j in range(len(vals))], vals,
                   s=18, color="white", edgecolors="black", zorder=4,
                   label=None if dot_labelled else f"class: each seed (band: mean ± std)")
        dot_labelled = True
        if name in mine:
            values.append(mine[name])
            ax.scatter([i], [mine[name]], marker="*", s=160, color="#f1c40f", edgecolors="black", zorder=5,
                       label=None if star_labelled else "your run")
            star_labelled = True
    low, high = min(values), max(values)
    margin = max(0.15 * (high - low), 0.005)
    ax.set(ylim=(max(0.0, low - margin), min(1.02, high + 2 * margin)),
           ylabel=("test accuracy" if key == "test_acc" else key) + " (axis does not start at 0)")
    ax.set_xticks(range(len(names)), [short_name(n) for n in names], fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return finish(fig, title, smoke)


def comparison_final(rows: Sequence[Mapping[str, Any]], smoke: bool | None = None,
                     title: str = "Teacher vs students: accuracy, size and speed") -> Figure:
    """Four panels from the comparison rows: test accuracy, parameters, latency, throughput.

    The payoff of distillation in one picture: a student near the teacher's accuracy
    at a fraction of its size and inference cost. Each row needs ``run``, ``test_acc``,
    ``params``, ``latency_ms`` and ``throughput``.
    """
    smoke = is_smoke(rows, smoke)
    names = [short_name(r) for r in rows]
    colors = [TEACHER_COLOR if run_name(r).startswith("teacher") else
              (KD_COLOR if "kd" in run_name(r) else STUDENT_COLOR) for r in rows]
    panels = [("test_acc", "test accuracy", "{:.3f}", 1.0),
              ("params", "parameters (millions)", "{:.1f}M", 1e-6),
              ("latency_ms", "latency, batch 1 (ms)", "{:.1f}", 1.0),
              ("throughput", "throughput (images/s)", "{:,.0f}", 1.0)]
    fig, axes = plt.subplots(2, 2, figsize=(max(10.0, 2.0 * len(rows)), 7.5))
    for ax, (key, label, fmt, scale) in zip(axes.flat, panels):
        values = [float(r.get(key, float("nan"))) * scale for r in rows]
        bars = ax.bar(range(len(rows)), values, color=colors)
        for b, v in zip(bars, values):
            if not math.isnan(v):
                ax.text(b.get_x() + b.get_width() / 2, v, fmt.format(v), ha="center",
                        va="bottom", fontsize=8)
        ax.set_xticks(range(len(rows)), names, fontsize=7)
        ax.set_title(label, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        finite = [v for v in values if not math.isnan(v)]
        if finite:
            ax.set_ylim(0, max(finite) * 1.18)
    device = next((r.get("device") for r in rows if r.get("device")), None)
    if device:
        title = f"{title} (measured on {device})"
    return finish(fig, title, smoke)


def summary_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The comparison rows as a plain-text table (fits a notebook or a terminal)."""
    if not rows:
        return "(no runs)"
    header = (f"{'run':32} {'arch':9} {'test acc':>8} {'params':>11} {'MB':>6} "
              f"{'latency ms':>10} {'img/s':>9}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['run']:32} {str(r.get('arch', '')):9} {r.get('test_acc', float('nan')):8.4f} "
                     f"{int(r.get('params', 0)):11,d} {r.get('size_mb', float('nan')):6.1f} "
                     f"{r.get('latency_ms', float('nan')):10.2f} {r.get('throughput', float('nan')):9,.0f}")
    if any(r.get("smoke") for r in rows):
        lines.append(SMOKE_NOTE)
    return "\n".join(lines)


@torch.no_grad()
def feature_maps(images: torch.Tensor, maps: Mapping[str, torch.Tensor], n: int = 4,
                 smoke: bool | None = None) -> Figure:
    """Images and, per network, the channel-mean of its feature map (where it responds).

    ``maps``: name -> (B, C, H, W). A 1x1 map (ImageNet stem at 32 px) is one flat
    square: nothing spatial is left to distil, only a vector of C numbers.
    """
    smoke = is_smoke(smoke=smoke)
    n = min(n, len(images))
    fig, axes = plt.subplots(n, 1 + len(maps), figsize=(2.2 * (1 + len(maps)), 2.2 * n), squeeze=False)
    # one colour scale per network, shared by its images: a 1x1 map still shows how
    # strongly each image excites it
    energies = {name: fmap[:n].float().pow(2).mean(1).cpu() for name, fmap in maps.items()}
    for i in range(n):
        axes[i][0].imshow(_to_hwc(images[i]), interpolation="nearest")
        for j, (name, energy) in enumerate(energies.items(), start=1):
            axes[i][j].imshow(energy[i].numpy(), cmap="magma", interpolation="nearest",
                              vmin=0.0, vmax=float(energy.max()) or 1.0)
            if energy.shape[-2:] == (1, 1):
                axes[i][j].text(0, 0, f"{float(energy[i]):.3g}", ha="center", va="center",
                                color="black", fontsize=9,
                                bbox=dict(facecolor="white", alpha=0.7, lw=0))
            if i == 0:
                axes[0][j].set_title(f"{name}\n{tuple(maps[name].shape[1:])}", fontsize=9)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_title("image", fontsize=9)
    return finish(fig, "Feature maps (mean of squared activations over channels)", smoke)
