"""Pruning, then a short fine-tune with the KD loss of 03 (notebook 12).

The run starts from a trained student (``init_from``); building the method chooses the
masks from those weights (``kdtp.compress.prune``) and holds them while the student learns
from the teacher's logits, so the pruned weights stay exactly 0 through every step, every
saved epoch and a resume (the masks are the method's extra state, saved in ``last``). The
finished checkpoint is a plain network of the student's architecture with zeros in it.

Each amount is its own method, so it enters the run's configuration hash through the
method's name: ``kd_prune80`` zeroes 80% of the conv and linear weights (global
magnitude), ``kd_channels50`` half of each convolution's output channels (L1 norm of the
filters). ``pruned_kd(0.9)`` registers another one (``kd_prune90``) for a run to use.
"""
from __future__ import annotations

from typing import ClassVar

from ..compress.prune import MaskedWeights, channel_masks, magnitude_masks
from .base import METHODS, register, whole_percent
from .logits import LogitKD


class PrunedKD(LogitKD):
    """Logit KD on a student whose pruned weights are held at zero (see the module's docstring)."""

    name = "kd_pruned"   # abstract: the registered methods are its variants below
    amount: ClassVar[float] = 0.0
    structured: ClassVar[bool] = False

    def __init__(self, student, teacher, temperature: float = 4.0, alpha: float = 0.5,
                 label_smoothing: float = 0.0):
        super().__init__(student, teacher, temperature, alpha, label_smoothing)
        choose = channel_masks if self.structured else magnitude_masks
        self.masked = MaskedWeights(student, choose(student, self.amount))

    def extra_state(self):
        return {f"mask.{name}": mask for name, mask in self.masked.masks.items()}

    def load_extra_state(self, state):
        masks = {key[len("mask."):]: mask for key, mask in state.items() if key.startswith("mask.")}
        if masks:
            if set(masks) != set(self.masked.masks):
                raise ValueError("the saved masks are of other layers")   # runner: start afresh
            self.masked.load(masks)


def pruned_kd(amount: float, structured: bool = False) -> type[PrunedKD]:
    """The method pruning ``amount`` of the weights (or, ``structured``, of the channels),
    registered as ``kd_prune<percent>`` / ``kd_channels<percent>`` (once; later calls return it)."""
    percent = whole_percent(amount, "prune amount", "0.8 for 80%")
    name = f"kd_{'channels' if structured else 'prune'}{percent}"
    if name in METHODS:
        return METHODS[name]
    what = "of each conv's channels (L1)" if structured else "of the weights (global magnitude)"
    cls = type(f"PrunedKD{'Channels' if structured else ''}{percent}", (PrunedKD,), {
        "__module__": __name__, "name": name, "amount": percent / 100, "structured": structured,
        "title": f"KD fine-tune, {percent}% {what} pruned",
        "short": f"{'channels' if structured else 'weights'} -{percent}%\n+ KD",
        "__doc__": f"Logit KD fine-tune with {percent}% {what} held at zero."})
    return register(cls)


# the variants the course's runs use (kdtp.course); every registered method has a run
pruned_kd(0.8)
pruned_kd(0.5, structured=True)
