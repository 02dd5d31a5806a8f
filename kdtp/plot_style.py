"""What every figure of the lab shares: run names and colours, the smoke check, the title.

``kdtp.plots`` (per-run and teaching figures) and ``kdtp.comparison`` (runs side by
side) both draw with these, so a run looks and is named the same in every figure, and
every figure drawn from smoke results (or in smoke mode) says SMOKE RUN in its title.
"""
from __future__ import annotations

import textwrap
from typing import Any, Mapping

from matplotlib.figure import Figure

from .env import smoke_mode

SMOKE_NOTE = "SMOKE RUN - synthetic data, not real results"

# short names of the file names, for items whose recipe is unknown (see ``short_name``)
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
    if isinstance(item, str):
        return item
    return str(_get(item, "name") or _get(item, "run") or "?")


def short_name(item: Any) -> str:
    """The run as it is in its recipe ("scratch\nKD logits" in ``cpu``, where nothing is
    pretrained, whatever the file name says); the name's own short form when the recipe
    is not known (a bare name, a row of another kit version)."""
    from .recipes import Recipe, get_recipe
    from .runs import REGISTRY, short_label

    name = run_name(item)
    recipe = None if isinstance(item, str) else _get(item, "recipe")
    if isinstance(recipe, str):
        try:
            recipe = get_recipe(recipe, smoke=bool(_get(item, "smoke", False)))
        except Exception:  # noqa: BLE001 - a recipe this version does not have
            recipe = None
    if isinstance(recipe, Recipe) and name in REGISTRY:
        return short_label(REGISTRY[name], recipe)
    return SHORT_NAMES.get(name, name.replace("_", "\n", 1))


def wrapped(label: str, width: int = 14) -> str:
    """``label`` with each of its lines folded at ``width`` characters, so the names under a
    row of narrow bars (13's eleven students) do not run into each other."""
    return "\n".join(textwrap.fill(line, width) or line for line in label.split("\n"))


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
