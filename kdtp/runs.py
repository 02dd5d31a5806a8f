"""Runs as data: what each one trains, from what, with which settings.

A run is a name plus what makes its weights: role, architecture, initialisation, method,
the runs it learns from and its own recipe settings. The lab's six runs are six
declarations below; a notebook declares a new one in one call::

    kdtp.Run("born_again_gen1", teacher="teacher_resnet50", method="kd_logits", arch="cnn_large")

and ``train_or_load("born_again_gen1")`` then trains or loads it (and, first, every run it
learns from), with resume, hashing and published checkpoints like the lab's runs.

This module turns a run and a recipe into a network, a method and the *configuration
that identifies the result*: only the settings that change the weights, so changing the
KD temperature never makes the teacher look stale.
"""
from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from .batches import DeviceLoader
from .data import CifarData, load_cifar10
from .distillers import Strategy, Teacher, get_method
from .env import ConfigError, seed_everything
from .models import ARCHS, build_model, has_pretrained_weights
from .recipes import RECIPES, Recipe, coerce_overrides, validate

TEACHER = "teacher_resnet50"
ROLES = ("teacher", "student")
# a run's data is its recipe's: these select or label the data and cannot differ per run
_NOT_PER_RUN = ("name", "smoke", "synthetic", "train_subset", "val_subset", "test_subset")


def _default_of(f):
    """A dataclass field's default value (calling its factory where it has one)."""
    return f.default_factory() if f.default_factory is not MISSING else f.default


REGISTRY: dict[str, "Run"] = {}   # every declared run, the lab's six first


@dataclass(frozen=True, repr=False)
class Run:
    """One run: declaring it registers it under ``name`` (``train_or_load(name)`` finds it).

    - ``method``: a registered method (``kdtp.distillers.METHODS``);
    - ``teacher``: the run (or runs, a tuple) it learns from; ``None`` for a method that
      needs one means the lab's teacher. Any run can be a teacher: dependencies form a
      graph, each one trained or loaded first with its own configuration hash;
    - ``arch``: the network; ``None`` takes the recipe's for the role;
    - ``pretrained``: start from ImageNet weights where the recipe and architecture allow;
    - ``init_from``: start from another run's finished weights instead (same architecture);
    - ``overrides``: recipe settings for this run only (``{"epochs": 3, "temperature": 8}``);
    - ``recipe_overrides``: more settings for this run in one recipe only, by recipe name
      (``{"cpu_air": {"teacher_epochs": 6}}``: a cost that matters on a CPU, not on a GPU).
      They apply after ``overrides``. In smoke mode a run never trains more epochs than the
      smoke recipe's, whatever either asks: smoke stays seconds per run.
    """
    name: str
    method: str = "baseline"
    teacher: str | tuple[str, ...] | None = None
    arch: str | None = None
    pretrained: bool = False
    role: str = "student"
    init_from: str | None = None
    overrides: Mapping = field(default_factory=dict)
    recipe_overrides: Mapping = field(default_factory=dict)

    def __repr__(self) -> str:
        """The declaration as a notebook would write it: the name and the fields that differ
        from their defaults (a printed run is read by students, not only by the kit)."""
        shown = [repr(self.name)] + [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)[1:]
                                     if getattr(self, f.name) != _default_of(f)]
        return f"Run({', '.join(shown)})"

    def __post_init__(self):
        if not self.name or not all(c.isalnum() or c in "_-" for c in self.name):
            raise ConfigError(f"run name {self.name!r}: use letters, digits, '_' and '-' only "
                              "(it becomes the checkpoint's file name)")
        method = get_method(self.method)
        if self.role not in ROLES:
            raise ConfigError(f"run {self.name}: role {self.role!r} is not one of {', '.join(ROLES)}")
        if self.arch is not None and self.arch not in ARCHS:
            raise ConfigError(f"run {self.name}: unknown arch {self.arch!r}; choose one of {', '.join(ARCHS)}")
        teachers = (self.teacher,) if isinstance(self.teacher, str) else tuple(self.teacher or ())
        if teachers and not method.needs_teacher:
            raise ConfigError(f"run {self.name}: method {self.method!r} learns from no teacher; "
                              "drop teacher= or pick a distillation method")
        if self.name in teachers or self.name == self.init_from:
            raise ConfigError(f"run {self.name} cannot learn from or start from itself")
        bad = sorted(set(self.overrides) & set(_NOT_PER_RUN))
        if bad:
            raise ConfigError(f"run {self.name}: {', '.join(bad)} cannot be set per run (a run's data "
                              "and smoke mode are its recipe's); pass them to the recipe instead")
        object.__setattr__(self, "teacher", None if not teachers else teachers[0] if len(teachers) == 1 else teachers)
        object.__setattr__(self, "overrides", dict(sorted(coerce_overrides(dict(self.overrides)).items())))
        object.__setattr__(self, "recipe_overrides", self._checked_recipe_overrides())
        lab = _LAB_RUNS.get(self.name)
        if lab is not None and lab != self:
            raise ConfigError(f"{self.name!r} is one of the lab's six runs; give your run another name")
        REGISTRY[self.name] = self

    def _checked_recipe_overrides(self) -> dict:
        out = {}
        for recipe_name, settings in sorted(dict(self.recipe_overrides).items()):
            if recipe_name not in RECIPES:
                raise ConfigError(f"run {self.name}: recipe_overrides names recipe {recipe_name!r}, which is "
                                  f"unknown; choose among {', '.join(RECIPES)}")
            if not isinstance(settings, Mapping):
                raise ConfigError(f"run {self.name}: recipe_overrides[{recipe_name!r}] must be a dict of "
                                  f"settings (e.g. {{'epochs': 3}}), got {settings!r}")
            bad = sorted(set(settings) & set(_NOT_PER_RUN))
            if bad:
                raise ConfigError(f"run {self.name}: {', '.join(bad)} cannot be set per run (a run's data "
                                  "and smoke mode are its recipe's); pass them to the recipe instead")
            out[recipe_name] = dict(sorted(coerce_overrides(dict(settings)).items()))
        return out

    def overrides_in(self, recipe: Recipe) -> dict:
        """This run's own settings in ``recipe``: ``overrides``, then that recipe's
        ``recipe_overrides``; in smoke mode, epochs capped at the smoke recipe's."""
        out = {**self.overrides, **self.recipe_overrides.get(recipe.name, {})}
        if recipe.smoke:
            for key in ("epochs", "teacher_epochs"):
                if key in out:
                    out[key] = min(out[key], getattr(recipe, key))
        return out

    def __hash__(self):
        return hash((self.name, self.method, self.teacher, self.arch, self.pretrained, self.role,
                     self.init_from, tuple(self.overrides.items()),
                     tuple((k, tuple(v.items())) for k, v in self.recipe_overrides.items())))

    @property
    def teachers(self) -> tuple[str, ...]:
        """The runs this one learns from (the lab's teacher by default when its method needs one)."""
        if not get_method(self.method).needs_teacher:
            return ()
        if self.teacher is None:
            return (TEACHER,)
        return (self.teacher,) if isinstance(self.teacher, str) else tuple(self.teacher)

    @property
    def needs_teacher(self) -> bool:
        return bool(self.teachers)

    @property
    def depends_on(self) -> tuple[str, ...]:
        """Every run that must be finished before this one trains."""
        return self.teachers + ((self.init_from,) if self.init_from else ())


RunSpec = Run   # the name before runs were data
_LAB_RUNS: dict[str, Run] = {}
for _run in (
    Run(TEACHER, role="teacher", pretrained=True),
    Run("student_pretrained_baseline", pretrained=True),
    Run("student_pretrained_kd_logits", method="kd_logits", pretrained=True),
    Run("student_pretrained_kd_features", method="kd_features", pretrained=True),
    Run("student_scratch_baseline"),
    Run("student_scratch_kd_scores", method="kd_logits"),   # the reference lab's file name
):
    _LAB_RUNS[_run.name] = _run
RUNS: dict[str, Run] = dict(_LAB_RUNS)   # the lab's six, in the reference lab's order


def get_run(name: str | Run) -> Run:
    if isinstance(name, Run):
        return name
    if name not in REGISTRY:
        raise ConfigError(f"unknown run {name!r}; choose one of: {', '.join(REGISTRY)}, or declare "
                          f"it first: kdtp.Run({name!r}, method=..., teacher=...)")
    return REGISTRY[name]


def recipe_of(spec: Run, recipe: Recipe) -> Recipe:
    """``recipe`` with the run's own settings (``Run.overrides_in``)."""
    overrides = spec.overrides_in(recipe)
    return validate(replace(recipe, **overrides)) if overrides else recipe


def arch_of(spec: Run, recipe: Recipe) -> str:
    if spec.arch:
        return spec.arch
    return recipe.teacher_arch if spec.role == "teacher" else recipe.student_arch


def label_smoothing_of(spec: Run, recipe: Recipe) -> float:
    return recipe.teacher_label_smoothing if spec.role == "teacher" else recipe.label_smoothing


def seed_of(spec: Run, recipe: Recipe) -> int:
    """The teacher trains with ``teacher_seed``, every student with ``seed``."""
    return recipe.teacher_seed if spec.role == "teacher" else recipe.seed


def uses_pretrained(spec: Run, recipe: Recipe) -> bool:
    """ImageNet weights only when the run, the recipe and the architecture all allow it."""
    return spec.pretrained and recipe.pretrained and has_pretrained_weights(arch_of(spec, recipe))


def describe(spec: Run, recipe: Recipe) -> str:
    """What the run is, as it is in this recipe: "Student cnn_small, from scratch, KD on logits".

    Built from the truth (architecture, initialisation, method, teachers), never from the
    file name: in the ``cpu`` recipe ``teacher_resnet50`` is a ``cnn_large`` from scratch.
    """
    run_recipe = recipe_of(spec, recipe)
    start = ("ImageNet-pretrained" if uses_pretrained(spec, run_recipe)
             else f"from {spec.init_from}" if spec.init_from else "from scratch")
    parts = [f"{spec.role.capitalize()} {arch_of(spec, run_recipe)}", start]
    method = get_method(spec.method)
    if spec.role == "student" or spec.method != "baseline":
        parts.append(method.title)
    if spec.teachers and spec.teachers != (TEACHER,):
        parts[-1] += f" from {' + '.join(spec.teachers)}"
    # a recipe without ImageNet weights makes a "scratch" run and its "pretrained" namesake one
    # training: say so, or two runs read alike in a table and look like a mistake (13)
    twin = next((other for other in REGISTRY.values() if other.name == spec.name
                 or trains_the_same(other, spec, recipe)), spec)
    if twin.name != spec.name:
        parts[-1] += f" (the same training as {twin.name})"
    return ", ".join(parts)


def short_label(spec: Run, recipe: Recipe) -> str:
    """Two lines under a bar: "teacher\ncnn_large", "scratch\nKD logits", "ImageNet\nlabels only"."""
    run_recipe = recipe_of(spec, recipe)
    if spec.role == "teacher" and spec.method == "baseline":
        return f"teacher\n{arch_of(spec, run_recipe)}"
    start = ("ImageNet" if uses_pretrained(spec, run_recipe)
             else f"from {spec.init_from}" if spec.init_from else "scratch")
    if spec.arch:
        start = f"{spec.arch}, {start}"
    label = f"{start}\n{get_method(spec.method).short}"
    students = [t for t in spec.teachers if t in REGISTRY and REGISTRY[t].role != "teacher"]
    if students:   # born-again: "KD logits" alone would read as 03's student
        label += "\nof " + ", ".join(t.removeprefix("student_").replace("_", " ") for t in students)
    return label


def trains_the_same(a: Run, b: Run, recipe: Recipe) -> bool:
    """True when runs ``a`` and ``b`` of ``recipe`` are one training under two names.

    Where the recipe gives no ImageNet weights (``cpu``, smoke mode), a "scratch" run and its
    "pretrained" namesake build the same network from the same seed and see the same
    batches: ``train_or_load`` then reuses the finished one instead of training it again.
    """
    same = (a.role, a.method, a.teachers, a.arch, a.init_from, a.overrides_in(recipe)) == \
           (b.role, b.method, b.teachers, b.arch, b.init_from, b.overrides_in(recipe))
    return same and uses_pretrained(a, recipe) == uses_pretrained(b, recipe)


# Recipe settings that cannot change a run's weights or reported numbers, each with the
# reason; every other setting must be in ``run_config`` (tests/test_config_fields.py walks
# every field of ``Recipe`` and fails on one that is in neither place). Empty today: every
# setting of a recipe changes some run.
CANNOT_CHANGE_A_RESULT: dict[str, str] = {}


def training_settings(spec: Run, recipe: Recipe) -> dict:
    """What this run trains with, as the run sees the recipe: the teacher's own learning
    rate, epochs, label smoothing and seed for a teacher, the method's settings for a
    distilled student (01 prints these; ``run_config`` adds the data)."""
    recipe = recipe_of(spec, recipe)
    teacher = spec.role == "teacher"
    return {
        "method": spec.method, "arch": arch_of(spec, recipe), "pretrained": uses_pretrained(spec, recipe),
        "cifar_stem": recipe.cifar_stem, "image_size": recipe.image_size,
        "optimizer": recipe.optimizer,
        "lr": ((recipe.teacher_lr or recipe.lr) if teacher else
               recipe.lr * recipe.finetune_lr_scale if spec.init_from else recipe.lr),
        "weight_decay": recipe.weight_decay, "momentum": recipe.momentum,
        "batch_size": recipe.batch_size, "epochs": recipe.teacher_epochs if teacher else recipe.epochs,
        "schedule": recipe.schedule, "warmup_fraction": recipe.warmup_fraction,
        "label_smoothing": label_smoothing_of(spec, recipe), "seed": seed_of(spec, recipe),
        "normalization": recipe.normalization, "tta_flip": recipe.tta_flip,
        # airbench's training tricks, named only where a recipe uses them: every run of the
        # recipes without them keeps the configuration (and checkpoint hash) it had before
        **{k: getattr(recipe, k) for k in AIRBENCH_SETTINGS if getattr(recipe, k) != _DEFAULTS[k]},
        **{k: getattr(recipe, k) for k in get_method(spec.method).recipe_settings},
    }


AIRBENCH_SETTINGS = ("augmentation", "shared_augmentation", "norm_bias_lr_scale", "lookahead",
                     "whiten_bias_epochs")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Recipe)}


def run_config(spec: Run, recipe: Recipe, data: CifarData,
               teacher_hash: str | Sequence[str] | None = None, *,
               init_hash: str | None = None) -> dict:
    """The settings that determine this run's weights (stored in and compared with checkpoints).

    ``teacher_hash``: the configuration hash of each run it learns from (their order is the
    run's); ``init_hash``: that of the run it starts from. A dependency's hash is part of
    this one, so retraining a teacher makes its students retrain too.
    """
    recipe = recipe_of(spec, recipe)
    cfg = {"run": spec.name, "recipe": recipe.name, **training_settings(spec, recipe),
           "data": data.source, "data_sizes": data.sizes(), "data_fingerprint": data.fingerprint(),
           "smoke": recipe.smoke}
    if spec.needs_teacher:
        hashes = [teacher_hash] if isinstance(teacher_hash, str) or teacher_hash is None else list(teacher_hash)
        arches = [arch_of(get_run(t), recipe) for t in spec.teachers]
        one = len(spec.teachers) == 1   # the lab's form: one name, one hash
        cfg.update(teacher_arch=arches[0] if one else arches, teacher_config=hashes[0] if one else hashes)
        if spec.teachers != (TEACHER,):
            cfg["teachers"] = list(spec.teachers)
    if spec.init_from:
        cfg.update(init_from=spec.init_from, init_config=init_hash)
    return cfg


def build_network(spec: Run, recipe: Recipe, device: torch.device,
                  init_state: dict | None = None) -> nn.Module:
    """The run's network, seeded, on ``device`` in channels_last (faster convs, CPU and GPU).

    ``init_state``: the weights of the run it starts from (``init_from``).
    """
    recipe = recipe_of(spec, recipe)
    seed_everything(seed_of(spec, recipe))
    model = build_model(arch_of(spec, recipe), num_classes=10,
                        pretrained=uses_pretrained(spec, recipe) and init_state is None,
                        cifar_stem=recipe.cifar_stem)
    if init_state is not None:
        model.load_state_dict(init_state)
    return model.to(device).to(memory_format=torch.channels_last)


def build_strategy(spec: Run, recipe: Recipe, model: nn.Module,
                   teacher: nn.Module | Sequence[nn.Module] | None) -> Strategy:
    """The run's method around ``model``, learning from ``teacher`` (one network or a list)."""
    recipe = recipe_of(spec, recipe)
    models = [] if teacher is None else [teacher] if isinstance(teacher, nn.Module) else list(teacher)
    if spec.needs_teacher and len(models) != len(spec.teachers):
        raise ValueError(f"{spec.name} distils from {', '.join(spec.teachers)}: pass teacher= "
                         f"({len(spec.teachers)} network{'s' * (len(spec.teachers) != 1)})")
    teachers = [Teacher(m, arch_of(get_run(t), recipe)) for m, t in zip(models, spec.teachers)]
    return get_method(spec.method).from_recipe(model, teachers, recipe, student_arch=arch_of(spec, recipe),
                                               label_smoothing=label_smoothing_of(spec, recipe))


_DATA_CACHE: dict[tuple, CifarData] = {}


def get_data(recipe: Recipe, data_dir: Path | str | None = None) -> CifarData:
    """CIFAR-10 (or the synthetic set) for ``recipe``, read once per process."""
    from .env import data_root

    root = Path(data_dir) if data_dir is not None else data_root()
    key = (str(root.resolve()), recipe.synthetic, recipe.train_subset, recipe.val_subset, recipe.test_subset)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_cifar10(root, synthetic=recipe.synthetic,
                                        train_subset=recipe.train_subset or None,
                                        val_subset=recipe.val_subset or None,
                                        test_subset=recipe.test_subset or None)
    return _DATA_CACHE[key]


def loaders(data: CifarData, recipe: Recipe, device: torch.device,
            eval_batch: int = 500, seed: int | None = None) -> tuple[DeviceLoader, DeviceLoader, DeviceLoader]:
    """Train (augmented, shuffled), validation and test loaders on ``device``."""
    kw = dict(device=device, image_size=recipe.image_size, seed=recipe.seed if seed is None else seed,
              normalization=recipe.normalization)
    return (DeviceLoader(data.train_x, data.train_y, recipe.batch_size, train=True,
                         augmentation=recipe.augmentation,
                         shared_augmentation=recipe.shared_augmentation, **kw),
            DeviceLoader(data.val_x, data.val_y, eval_batch, train=False, **kw),
            DeviceLoader(data.test_x, data.test_y, eval_batch, train=False, **kw))

