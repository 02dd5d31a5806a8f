"""Every method of the course side by side: accuracy, cost of a training step, what it needs.

``method_rows(results, recipe)`` gives one row per run: its title, its test accuracy with
the test-set standard error, what it takes from its teacher (the method's
``teacher_gives``) and the **measured** time of one training step relative to the
labels-only baseline, timed here with ``torch.utils.benchmark`` on this machine (the
seconds a checkpoint recorded were measured wherever it was trained, often elsewhere).
``methods_figure(rows)`` draws them. With ``sweep_rows`` (a sweep file's rows) a run that
was trained at several seeds gets its mean over seeds, its std and the SE of that mean
(``kdtp.sweep_rows.seed_rows`` decides which rows are the same run at another seed).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from torch.utils import benchmark

from . import stats
from .distillers import get_method
from .plot_style import KD_COLOR, STUDENT_COLOR, TEACHER_COLOR, finish, is_smoke, short_name, wrapped
from .recipes import Recipe
from .runs import build_network, build_strategy, get_run, recipe_of
from .sweep_rows import seed_rows  # noqa: F401  (re-exported: the rows 13 pairs by seed)


def step_seconds(name: str, recipe: Recipe, device: torch.device | str = "cpu", *,
                 batch_size: int | None = None, min_run_time: float = 0.5) -> float:
    """Median seconds of one training step (forward, loss, backward) of run ``name``.

    Fresh networks of the run's architectures (the cost of a step does not depend on the
    weights); teachers in eval mode without gradients, as in training. ``batch_size``:
    default the recipe's.
    """
    device = torch.device(device)
    spec = get_run(name)
    run_recipe = recipe_of(spec, recipe)
    batch = batch_size or run_recipe.batch_size
    student = build_network(spec, recipe, device)
    teachers = [build_network(get_run(t), recipe, device).eval() for t in spec.teachers]
    strategy = build_strategy(spec, recipe, student, teachers).train()
    strategy.start_epoch(1, 2)    # methods with an epoch-dependent target run their full step
    x = torch.randn(batch, 3, run_recipe.image_size, run_recipe.image_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        _, terms = strategy.training_step(x, y)
        sum(terms.values()).backward()
        strategy.zero_grad(set_to_none=True)

    step()   # warm-up (allocations, oneDNN primitive selection)
    timer = benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads())
    return float(timer.blocked_autorange(min_run_time=min_run_time).median)


def method_rows(results: Mapping[str, Any], recipe: Recipe, *, baseline: str = "student_pretrained_baseline",
                device: torch.device | str = "cpu", batch_size: int | None = None,
                time_steps: bool = True, sweep_rows: Sequence[Mapping[str, Any]] = ()) -> list[dict]:
    """One row per run of ``results`` (name -> RunResult): accuracy, SE, cost, what it needs.

    ``test_acc`` is the run's own accuracy, or its mean over the seeds ``sweep_rows`` hold of
    it (``seed_rows``); ``se`` is then the SE of that mean, and ``seeds`` lists them."""
    per_run = seed_rows(results, sweep_rows)
    if time_steps and baseline not in results:
        raise ValueError(f"the cost of a step is relative to {baseline!r}: include it in results")
    base_s = step_seconds(baseline, recipe, device, batch_size=batch_size) if time_steps else None
    rows = []
    for name, result in results.items():
        spec = get_run(name)
        n_test = (result.config.get("data_sizes") or {}).get("test")
        summary = stats.run_summary(name, {r["seed"]: r for r in per_run[name]})
        seconds = (base_s if name == baseline else step_seconds(name, recipe, device, batch_size=batch_size)) \
            if time_steps else None
        rows.append({
            "run": name, "title": result.title, "method": spec.method, "test_acc": summary["mean"],
            "se": summary["se"], "std": summary["std"], "n_seeds": summary["n_seeds"],
            "seeds": sorted(r["seed"] for r in per_run[name]), "seed_rows": per_run[name], "n_test": n_test,
            "needs": "labels only" if spec.method == "baseline" else get_method(spec.method).teacher_gives,
            "learns_from": ", ".join(spec.teachers) or "-",
            "step_ms": None if seconds is None else 1000 * seconds,
            "cost_vs_baseline": None if seconds is None else seconds / base_s,
            "smoke": result.smoke, "recipe": result.recipe,
        })
    return rows


def methods_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as aligned text (smoke rows say so).

    The spread after "±" is the **std over seeds** where a run has two or more (what another
    seed does), else the test set's binomial SE of the one run; the "±" column says which,
    so neither reads as the other (issue 13)."""
    lines = [f"{'run':30} {'test acc':>8} {'±':>7} {'± is':>12} {'step vs baseline':>17}  needs from its teacher"]
    for r in rows:
        n_seeds = r.get("n_seeds", 1) or 1
        spread, kind = (r.get("std"), f"std, {n_seeds} seeds") if n_seeds >= 2 else (r.get("se"), "SE, 1 run")
        spread_text = "-" if spread is None else f"{spread:.4f}"
        cost = "-" if r.get("cost_vs_baseline") is None else f"{r['cost_vs_baseline']:.2f}x"
        lines.append(f"{r['run']:30} {r['test_acc']:>8.4f} {spread_text:>7} {kind:>12} {cost:>17}  "
                     f"{r['needs']}{'  (smoke)' if r.get('smoke') else ''}")
    return "\n".join(lines)


def methods_figure(rows: Sequence[Mapping[str, Any]], smoke: bool | None = None,
                   title: str = "Every method: accuracy (± 1 SE; dots: seeds) and cost of a step") -> Figure:
    """Accuracy bars with their standard error (of the mean over seeds, else of the test set),
    each seed as a dot where a run has several, each bar labelled with its step cost."""
    smoke = is_smoke(list(rows), smoke)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(rows)), 4.4))
    accs = [r["test_acc"] for r in rows]
    errs = [r.get("se") or 0.0 for r in rows]
    colors = [TEACHER_COLOR if get_run(r["run"]).role == "teacher" else
              STUDENT_COLOR if r["method"] == "baseline" else KD_COLOR for r in rows]
    ax.bar(range(len(rows)), accs, yerr=errs, color=colors, capsize=4)
    seed_accs = [[float(x["test_acc"]) for x in r.get("seed_rows") or ()] if (r.get("n_seeds") or 1) >= 2 else []
                 for r in rows]
    for i, values in enumerate(seed_accs):        # each seed as a dot: the spread the mean hides
        if not values:
            continue
        ax.scatter([i] * len(values), values, color="black", s=12, zorder=3,
                   label=None if any(seed_accs[:i]) else "one seed")
    if any(seed_accs):
        ax.legend(loc="lower right", fontsize=8)
    for i, r in enumerate(rows):
        if r.get("cost_vs_baseline") is not None:
            top = max([accs[i] + errs[i], *seed_accs[i]])     # above the error bar and the dots
            ax.annotate(f"{r['cost_vs_baseline']:.1f}x", (i, top), ha="center",
                        va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    dots = [v for values in seed_accs for v in values]
    low = min([a - e for a, e in zip(accs, errs)] + dots)
    high = max([a + e for a, e in zip(accs, errs)] + dots)
    margin = max(0.2 * (high - low), 0.01)
    ax.set(ylim=(max(0.0, low - margin), min(1.0, high + 2 * margin)),
           ylabel="test accuracy (axis does not start at 0)")
    ax.set_xticks(range(len(rows)), [wrapped(short_name(r)) for r in rows], fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return finish(fig, title + "\n(labels over the bars: time of one training step / the baseline's)", smoke)
