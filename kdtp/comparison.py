"""The figures and tables that compare runs side by side: accuracy with error bars, a
student's runs among the class's seeds, and teacher vs students on accuracy, size and speed.

Like every figure of the lab (see ``kdtp.plots``), each function returns the figure and
marks one drawn from smoke results with a red "SMOKE RUN" line; ``kdtp.plots.save``
writes it. ``kdtp.plots`` re-exports these names, so ``plots.accuracy_bars`` etc. work.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from . import stats
from .plot_style import (KD_COLOR, SMOKE_NOTE, STUDENT_COLOR, TEACHER_COLOR, _as_list, _get,
                         finish, is_smoke, run_name, short_name)


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
    first_row = {}
    for row in class_rows:
        first_row.setdefault(run_name(row), row)
    ax.set_xticks(range(len(names)), [short_name(first_row.get(n, n)) for n in names], fontsize=8)
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
