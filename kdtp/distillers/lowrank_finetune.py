"""Low-rank factorisation, then a short fine-tune with the KD loss of 03 (notebook 12).

The run starts from a trained student (``init_from``); building the method replaces the
student's largest convolutions (together 60% of its parameters or more) by their truncated SVD
(``kdtp.compress.lowrank.LowRankConv2d``), and the student learns from the teacher's logits
in that factorised form. Its checkpoint is a plain network of the student's architecture
whose factorised layers hold the rank-r product; ``factorize`` on the loaded network gives
the small deployed form back exactly. The factors themselves are the method's extra state
(saved in ``last``), so a resumed run continues from the very same factors.

Each rank is its own method, entering the configuration hash through its name:
``kd_lowrank25`` keeps a quarter of each layer's full rank; ``lowrank_kd(0.1)`` registers
another (``kd_lowrank10``) for a run to use.
"""
from __future__ import annotations

from typing import ClassVar

import torch

from ..compress.lowrank import SHARE, factorize, factorised_layers
from .base import METHODS, register, whole_percent
from .logits import LogitKD


class LowRankKD(LogitKD):
    """Logit KD on a student whose largest convolutions are factorised (see the module's docstring)."""

    name = "kd_lowrank"   # abstract: the registered methods are its variants below
    rank_fraction: ClassVar[float] = 1.0

    def __init__(self, student, teacher, temperature: float = 4.0, alpha: float = 0.5,
                 label_smoothing: float = 0.0):
        super().__init__(student, teacher, temperature, alpha, label_smoothing)
        factorize(student, self.rank_fraction, SHARE, inplace=True, as_conv=True)

    def _factors(self) -> dict[str, torch.nn.Parameter]:
        return {f"{name}.{part}": getattr(layer, part) for name, layer in factorised_layers(self.student).items()
                for part in ("first", "second")}

    def extra_state(self):
        return {f"factor.{key}": p.detach() for key, p in self._factors().items()}

    def load_extra_state(self, state):
        factors = self._factors()
        saved = {key[len("factor."):]: t for key, t in state.items() if key.startswith("factor.")}
        if saved and set(saved) != set(factors):
            raise ValueError("the saved factors are of other layers")   # runner: start afresh
        with torch.no_grad():
            for key, tensor in saved.items():
                factors[key].copy_(tensor)


def lowrank_kd(fraction: float) -> type[LowRankKD]:
    """The method keeping ``fraction`` of each factorised layer's full rank, registered as
    ``kd_lowrank<percent>`` (once; later calls return it)."""
    percent = whole_percent(fraction, "rank fraction", "0.25 for 25%")
    name = f"kd_lowrank{percent}"
    if name in METHODS:
        return METHODS[name]
    cls = type(f"LowRankKD{percent}", (LowRankKD,), {
        "__module__": __name__, "name": name, "rank_fraction": percent / 100,
        "title": f"KD fine-tune, largest convs at {percent}% rank (SVD)",
        "short": f"rank {percent}%\n+ KD",
        "__doc__": f"Logit KD fine-tune with the largest convolutions factorised at {percent}% of full rank."})
    return register(cls)


lowrank_kd(0.25)   # the variant the course's run uses (kdtp.course)
