"""The figures of the lab: example images, learning curves, temperature, feature maps.

Each function draws one figure and returns it (a ``matplotlib.figure.Figure``); the
notebook shows it, ``save`` writes it under ``kdtp.env.figures_root()`` for slides. The
teaching text lives in the notebooks: these functions only draw.

Smoke runs must never pass for real results, so every figure drawn from smoke results
(or in smoke mode) carries a red "SMOKE RUN" line in its title, and ``save`` puts it in
``<figures>/smoke/``, where it cannot overwrite a real figure.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from .batches import augment
from .data import CLASSES
from .env import figures_root, smoke_mode
from .plot_style import (KD_COLOR, SHORT_NAMES, SMOKE_NOTE, STUDENT_COLOR,  # noqa: F401  (plots.X)
                         TEACHER_COLOR, _as_list, _get, finish, is_smoke, run_name, short_name)


# ----------------------------------------------------------------------------- helpers
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
    """Each image (left) and ``n`` random crops+flips of it, made by ``kdtp.batches.augment``.

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
        label = short_name(r).replace("\n", " ")   # what the run is in its recipe, not its file name
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
    title = getattr(result, "title", None) or run_name(result)
    return finish(fig, f"Loss terms of {run_name(result)}: {title}", smoke)


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


# ----------------------------------------------------------------------------- features
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


# ----------------------------------------------------------------------------- comparison
# the figures that compare runs side by side live in kdtp.comparison; re-exported so that
# plots.accuracy_bars & co. keep working
from .comparison import (accuracy_bars, comparison_final, own_run_among_class,  # noqa: E402,F401
                         summary_table)
