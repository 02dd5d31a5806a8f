"""The base class every method builds on, and the registry that finds methods by name.

``Strategy`` is plain supervised training of a student; a method that learns from
teachers subclasses ``WithTeacher``, which freezes them. Each method declares what the kit
needs to know about it, so runs, configuration hashes and tables never list methods by
hand:

- ``name``: the string a run names it by;
- ``title``: how tables and figures describe it ("KD on logits"), ``short`` under a bar;
- ``needs_teacher``: whether a run of it learns from other runs;
- ``recipe_settings``: the recipe fields it reads; they enter the run's configuration
  hash, so changing the temperature retrains a KD student but never a baseline;
- ``teacher_gives``: what it takes from the teacher (the comparison table's column);
- ``reads_teacher_logits``: it calls its teachers for their logits and nothing else, so the
  runner may hand it teachers that answer a batch seen before from ``kdtp.teacher_cache``.
"""
from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..env import ConfigError
from ..models import feature_tap

METHODS: dict[str, type["Strategy"]] = {}


def register(cls: type["Strategy"]) -> type["Strategy"]:
    """Class decorator: make ``cls`` available to runs as ``method=cls.name``."""
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ConfigError(f"a method named {cls.name!r} is registered already "
                          f"({METHODS[cls.name].__module__}); give the new one another name")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type["Strategy"]:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


class Teacher(NamedTuple):
    """A trained run a method learns from: its network and its architecture's name."""
    model: nn.Module
    arch: str


class Strategy(nn.Module):
    """Plain supervised training of ``student`` (label-smoothed cross-entropy)."""

    name: ClassVar[str] = "baseline"
    title: ClassVar[str] = "labels only"
    short: ClassVar[str] = "labels only"
    needs_teacher: ClassVar[bool] = False
    recipe_settings: ClassVar[tuple[str, ...]] = ()
    teacher_gives: ClassVar[str] = "nothing"
    reads_teacher_logits: ClassVar[bool] = False

    def __init__(self, student: nn.Module, label_smoothing: float = 0.0):
        super().__init__()
        self.student = student
        self.label_smoothing = label_smoothing

    @classmethod
    def from_recipe(cls, student: nn.Module, teachers: list[Teacher], recipe, *,
                    student_arch: str, label_smoothing: float) -> "Strategy":
        """The method as a run of ``recipe`` builds it (override to read more settings)."""
        return cls(student, label_smoothing)

    def training_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.student(x)
        return logits, {"ce": F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Trainable parts other than the student (an adapter); saved in ``last`` only."""
        return {}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        pass

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Called by ``fit`` before epoch ``epoch`` (0-based) of ``epochs``, a resumed run's
        first epoch included (a method whose targets change from epoch to epoch)."""


class WithTeacher(Strategy):
    """A strategy with a frozen teacher: eval mode, no gradients, never in ``state_dict``."""

    needs_teacher = True
    teacher_gives = "logits"

    def __init__(self, student: nn.Module, teacher: nn.Module, label_smoothing: float = 0.0):
        super().__init__(student, label_smoothing)
        freeze(teacher)
        object.__setattr__(self, "teacher", teacher)  # not a submodule: not saved, not trained

    @classmethod
    def from_recipe(cls, student, teachers, recipe, *, student_arch, label_smoothing):
        if len(teachers) != 1:
            raise ConfigError(f"method {cls.name!r} learns from one teacher, not {len(teachers)}; "
                              "give the run teacher='<run name>'")
        return cls.from_one_teacher(student, teachers[0], recipe, student_arch=student_arch,
                                    label_smoothing=label_smoothing)

    @classmethod
    def from_one_teacher(cls, student, teacher: Teacher, recipe, *, student_arch, label_smoothing):
        return cls(student, teacher.model, label_smoothing)

    def train(self, mode: bool = True) -> "WithTeacher":
        super().train(mode)
        self.teacher.eval()  # BN statistics of the teacher must never move
        return self


class WithTaps(WithTeacher):
    """A method that reads inner maps of both networks (torchvision feature extractors).

    The taps share the networks' parameters: training through ``student_tap`` trains the
    student; the teacher's tap stays in eval mode and runs without gradients.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, student_layers, teacher_layers,
                 label_smoothing: float = 0.0):
        super().__init__(student, teacher, label_smoothing)
        object.__setattr__(self, "student_tap", feature_tap(student, list(student_layers)))
        object.__setattr__(self, "teacher_tap", feature_tap(teacher, list(teacher_layers)))

    def train(self, mode: bool = True) -> "WithTaps":
        super().train(mode)
        self.student_tap.train(mode)
        self.teacher_tap.eval()
        return self

    def both(self, x: torch.Tensor) -> tuple[dict, dict]:
        """(student's maps and logits, teacher's maps and logits) for one batch."""
        with torch.no_grad():
            t_out = self.teacher_tap(x)
        return self.student_tap(x), t_out


def whole_percent(fraction: float, what: str, example: str) -> int:
    """``fraction`` (0.8) as a whole percentage (80), for a method variant named by it."""
    percent = round(100 * fraction)
    if not 0 < percent < 100 or abs(100 * fraction - percent) > 1e-9:
        raise ConfigError(f"{what} {fraction!r}: give a whole percentage between 1% and 99% ({example})")
    return percent


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: a teacher is read, never trained."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model

