"""Named presets of every hyper-parameter, and the smoke overrides in one place.

A recipe is a plain frozen dataclass (nanoGPT-style configuration: named values with
overrides, no framework). ``get_recipe("fast", epochs=3)`` or ``--set epochs=3`` change a
value; anything unknown or of the wrong type is refused with the list of valid choices.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields, replace

import torch

from .env import ConfigError


@dataclass(frozen=True)
class Recipe:
    name: str
    teacher_arch: str = "resnet50"
    student_arch: str = "resnet18"
    image_size: int = 32          # input pixels fed to the networks (data is 32 px)
    cifar_stem: bool = False      # 3x3/1 stem, no max-pool (for 32 px inputs)
    pretrained: bool = True       # ImageNet weights for the "pretrained" runs
    optimizer: str = "adamw"
    lr: float = 1e-3
    teacher_lr: float = 0.0       # 0: same as lr
    weight_decay: float = 1e-4
    momentum: float = 0.9
    batch_size: int = 128
    epochs: int = 10              # students
    teacher_epochs: int = 10
    schedule: str = "constant"    # constant | cosine | onecycle
    warmup_fraction: float = 0.0
    label_smoothing: float = 0.0  # students' hard-label loss
    # the teacher's own training; a smoothed teacher gives flatter soft targets, a weaker
    # signal to distil (Mueller et al. 2019, "When does label smoothing help?")
    teacher_label_smoothing: float = 0.0
    temperature: float = 4.0
    alpha: float = 0.5            # weight of the hard-label CE in KD
    feature_weight: float = 1.0   # weight (beta) of the feature hint in feature KD
    attention_weight: float = 1000.0   # beta of attention transfer (Zagoruyko & Komodakis' code)
    rkd_distance_weight: float = 25.0  # RKD's distance and angle weights (Park et al.'s CIFAR script)
    rkd_angle_weight: float = 50.0
    # RKD's relations are taken within groups of this many examples of a batch (0: the whole
    # batch). The angle term costs N^3: at the cpu recipe's batch of 512 one step took minutes
    rkd_group_size: int = 128
    # the learning rate of a run that starts from another run's finished weights (``init_from``:
    # 12's fine-tunes of a pruned or factorised student) as a multiple of ``lr``
    finetune_lr_scale: float = 1.0
    pskd_alpha: float = 0.8       # PS-KD: weight of the model's own past predictions at the end (Kim et al.)
    # mean/std the images are normalised with: "cifar10" (its own statistics) or "imagenet"
    # (the statistics ImageNet-pretrained weights were trained with; the reference lab's)
    normalization: str = "cifar10"
    tta_flip: bool = False        # average logits with the flipped image at evaluation
    # "crop" (pad 4, random crop, random flip) or "airbench" (translate by up to 2 pixels,
    # alternating flip): kdtp.batches.DeviceLoader
    augmentation: str = "crop"
    # every seed sees the same augmented images (the draws come from the epoch alone; seeds
    # differ in initialisation and batch order): a frozen teacher's answers for one seed's
    # students then serve every other seed's (kdtp.teacher_cache), so the extra pairs of 06
    # skip the teacher's forward pass. False: the augmentation comes from the seed as well
    shared_augmentation: bool = False
    # the BatchNorm shifts' learning rate as a multiple of lr (airbench: 64), with weight decay
    # divided by the same factor so every weight decays alike (kdtp.train.norm_bias_groups)
    norm_bias_lr_scale: float = 1.0
    lookahead: bool = False       # airbench's lookahead EMA of the weights (kdtp.train.LookaheadSGD)
    # an airbench network's whitening layer trains its bias for this many epochs, then the bias is
    # frozen (airbench94: 3): the layer's input gradient, at the full 31x31 grid, is no longer
    # computed. 0: the bias trains to the end. No effect on other networks
    whiten_bias_epochs: int = 0
    train_subset: int = 0         # 0: all 45,000
    val_subset: int = 0
    test_subset: int = 0
    synthetic: bool = False       # generated data instead of CIFAR-10
    smoke: bool = False
    seed: int = 0                 # the students' seed (init, batch order; augmentation unless shared)
    # the teacher's seed, apart from the students': a sweep over student seeds distils every
    # seed from the one teacher a class shares, instead of training a teacher per seed
    teacher_seed: int = 0

    def with_overrides(self, **overrides) -> "Recipe":
        return replace(self, **coerce_overrides(overrides))

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


RECIPES: dict[str, Recipe] = {
    # The reference lab: 224 px, ImageNet stem, AdamW 1e-3, wd 1e-4, batch 128, 10 epochs.
    # ImageNet mean/std, as the reference lab: its networks start from ImageNet weights.
    "paper": Recipe(name="paper", image_size=224, normalization="imagenet"),
    # A short Colab session on a T4 (fp16): 32 px with the CIFAR stem keeps the pretrained
    # body but 49x fewer pixels than 224; SGD + one-cycle + label smoothing converge in a
    # few epochs; flip averaging at test time is free accuracy.
    "fast": Recipe(name="fast", image_size=32, cifar_stem=True, optimizer="sgd", lr=0.05,
                   teacher_lr=0.05, weight_decay=5e-4, batch_size=256, epochs=8,
                   teacher_epochs=8, schedule="onecycle", warmup_fraction=0.2,
                   label_smoothing=0.1, teacher_label_smoothing=0.1, temperature=4.0, alpha=0.5,
                   tta_flip=True, normalization="imagenet"),
    # The first CPU recipe (the default without a GPU until 2026-12-02; now KDTP_RECIPE=cpu): small
    # CNNs (no ImageNet weights), bf16 where it is faster (AMX CPUs, AMD's AVX512-BF16), fp32
    # elsewhere. Epochs sized so the core lab fits 30 minutes on a 2-core CPU *without*
    # bf16 (measured: benchmarks/RESULTS.md); an AMX CPU does it about 3x faster. Its KD gain
    # (+0.54 +/- 0.03 over 3 student seeds) was measured with one teacher, of 86.5%.
    "cpu": Recipe(name="cpu", teacher_arch="cnn_large", student_arch="cnn_small",
                  pretrained=False, optimizer="sgd", lr=0.2, teacher_lr=0.2, weight_decay=5e-4,
                  batch_size=512, epochs=5, teacher_epochs=6, schedule="onecycle",
                  warmup_fraction=0.25, label_smoothing=0.2, temperature=4.0, alpha=0.5,
                  tta_flip=True,
                  # an unsmoothed teacher: KD student val 0.8378 vs 0.8294 with a 0.2-smoothed
                  # one (real CIFAR-10, benchmarks/RESULTS.md)
                  teacher_label_smoothing=0.0,
                  # attention transfer's beta scaled to these maps: the authors' 1000 is for maps of
                  # 32x32..8x8 positions; these CNNs' are 16x16..4x4, 4x fewer, and the mean squared
                  # difference of unit-norm maps grows as 1/positions. Real CIFAR-10, seed 0: AT student
                  # val 0.8344 / test 0.8353 at 250, 0.7832 / 0.7739 at 1000 (benchmarks/RESULTS.md)
                  attention_weight=250.0),
    # The default without a GPU since 2026-12-02: airbench-style CNNs (Keller Jordan's
    # airbench94, narrowed; no ImageNet weights) with its training tricks: frozen whitening
    # layer (its bias trained 3 epochs, then frozen), dirac init, BatchNorm shifts at 64x the learning rate, Nesterov SGD with airbench's decoupled lr 11.5 and wd 0.0153 per 1024
    # images (here per mean-reduced batch of 1024: lr 1.5, wd 0.0153 / 11.5), its warm-up and
    # linear decay, lookahead EMA, translate-2 + alternating flip, label smoothing 0.2 for
    # every network (students on hard labels stumble at this learning rate: a handicapped
    # baseline, benchmarks/RESULTS.md), flip TTA. One augmentation stream for every seed
    # (``shared_augmentation``): the teacher's answers to 03's student serve 06's other seeds.
    # Teacher 498k parameters, student 99k (5.0x smaller).
    # T = 1: the smoothed teacher's soft targets at T = 4 are all but uniform (entropy 2.24 of
    # 2.30 nats). Teacher 10 epochs since 2026-12-06 (6 gave 89.7%, 8 0.9075-0.9092, 10 0.9161;
    # fp32 KD gain over five pairs t = 2.6 from the 10-epoch one, 2.1 from the 8-epoch one).
    # With 8 epochs, on the kit's path, real CIFAR-10, 3 pairs each with its own teacher:
    # teachers 0.9077 +/- 0.0009, KD gain +0.72 +/- 0.06 points, t = 11 (benchmarks/RESULTS.md).
    "cpu_air": Recipe(name="cpu_air", teacher_arch="air_large", student_arch="air_small",
                  pretrained=False, optimizer="sgd", lr=1.5, teacher_lr=1.5, weight_decay=0.0153 / 11.5,
                  momentum=0.85, batch_size=1024, epochs=6, teacher_epochs=10, schedule="airbench",
                  warmup_fraction=0.23, label_smoothing=0.2, teacher_label_smoothing=0.2,
                  temperature=1.0, alpha=0.5, tta_flip=True, augmentation="airbench",
                  shared_augmentation=True,
                  norm_bias_lr_scale=64.0, lookahead=True,
                  # airbench's frozen whitening bias after 3 epochs (since 2026-12-06: a student's
                  # epochs 4-6 took 11.9-12.1 s instead of 14.4 on AVX2 kernels, the core lab 26.5 min
                  # instead of 28.1; RESULTS.md)
                  whiten_bias_epochs=3,
                  # cpu's 250 diverged here (real CIFAR-10, 2026-12-02: loss 4.9 -> 1487, 10% accuracy,
                  # in bf16 and in fp32): this recipe's learning rate is 7.5x cpu's (1.5 vs 0.2), so
                  # the AT and RKD terms take 7.5x larger steps. Both weights scaled by 0.2 / 1.5;
                  # AT at 30 trains (2-epoch check, val 0.61); RKD's scaled weights not checked alone.
                  attention_weight=30.0,
                  # the feature hint's beta scaled the same way (1 -> 0.2 / 1.5): at 1 the hint pulled 04's
                  # student off course, -0.57 points against logit KD over seeds 0-2 (bf16, real CIFAR-10,
                  # 2026-12-06), at 0.13 -0.13, within noise; 0.13 beat 1 by +0.44 +/- 0.05 paired by seed
                  feature_weight=1.0 * 0.2 / 1.5,
                  # 12's one-epoch fine-tunes of a pruned or factorised student at lr 1.5 undid most
                  # of what the student knew (real CIFAR-10, 2026-12-02: 80% pruned 0.7590, half the
                  # channels 0.4236, low rank 0.5154, from 0.8554): a trained network is fine-tuned
                  # at a tenth of the rate that trains it from scratch
                  finetune_lr_scale=0.1,
                  rkd_distance_weight=25.0 * 0.2 / 1.5, rkd_angle_weight=50.0 * 0.2 / 1.5),
}

# The one place smoke mode changes a recipe: small synthetic subsets, one short epoch,
# 32 px with the (cheap) ImageNet stem, no ImageNet download. SGD learning rates are
# scaled with the smaller batch (linear scaling rule) in ``smoke_version``.
SMOKE_BATCH = 64
SMOKE_OVERRIDES = dict(synthetic=True, smoke=True, image_size=32, cifar_stem=False,
                       pretrained=False, epochs=1, teacher_epochs=1, batch_size=SMOKE_BATCH,
                       train_subset=2048, val_subset=256, test_subset=256)


def smoke_version(recipe: Recipe) -> Recipe:
    """``recipe`` shrunk for smoke mode (CI, nbval): seconds per run on two CPU cores."""
    scale = SMOKE_BATCH / recipe.batch_size if recipe.optimizer == "sgd" else 1.0
    return replace(recipe, **SMOKE_OVERRIDES, lr=recipe.lr * scale, teacher_lr=recipe.teacher_lr * scale)


# The recipe to name when ImageNet weights cannot be had (an offline machine, a GPU box
# without internet): it trains every network from scratch, runs on a CPU or a GPU, and its
# lesson (teacher >= 90%, a KD gain significant over three or five pairs) is measured on real data.
NO_IMAGENET_RECIPE = "cpu_air"


def no_imagenet_advice() -> str:
    """One phrase for every message that meets missing ImageNet weights."""
    return (f"--recipe {NO_IMAGENET_RECIPE} (KDTP_RECIPE={NO_IMAGENET_RECIPE}: small airbench-style "
            "CNNs trained from scratch, no ImageNet weights; on a CPU or a GPU)")


def default_recipe_name(smoke: bool | None = None) -> str:
    """``KDTP_RECIPE`` if set; else ``fast`` with a CUDA GPU or in smoke mode (the ResNet
    lab, shrunk), and ``cpu_air`` (small airbench-style CNNs) for a real run without a GPU:
    of the CPU recipes, the one whose teacher reaches 90% and whose KD gain held over
    teachers as well as students (benchmarks/RESULTS.md)."""
    import os

    from .env import smoke_mode

    chosen = os.environ.get("KDTP_RECIPE", "").strip()
    if chosen:
        if chosen not in RECIPES:
            raise ConfigError(f"KDTP_RECIPE={chosen!r} is unknown; choose one of: {', '.join(RECIPES)}")
        return chosen
    smoke = smoke_mode() if smoke is None else smoke
    return "fast" if torch.cuda.is_available() or smoke else "cpu_air"


def coerce_overrides(overrides: dict) -> dict:
    """Check names and convert values (strings from ``--set`` included) to field types."""
    types = {f.name: f.type for f in fields(Recipe)}
    out = {}
    for key, value in overrides.items():
        if key not in types or key == "name":
            valid = ", ".join(k for k in types if k != "name")
            raise ConfigError(f"unknown setting {key!r}; valid settings: {valid}")
        kind = types[key]
        try:
            if kind == "bool":
                if isinstance(value, str):
                    if value.lower() not in {"1", "0", "true", "false", "yes", "no"}:
                        raise ValueError
                    value = value.lower() in {"1", "true", "yes"}
                value = bool(value)
            elif kind == "int":
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                value = int(value)
            elif kind == "float":
                value = float(value)
            else:
                value = str(value)
        except (TypeError, ValueError):
            raise ConfigError(f"setting {key}={value!r} is not a valid {kind}") from None
        out[key] = value
    return out


def parse_set_args(pairs: list[str] | None) -> dict[str, str]:
    """``["alpha=0.9", "epochs=3"]`` -> ``{"alpha": "0.9", "epochs": "3"}`` (CLI ``--set``)."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {pair!r} (e.g. --set alpha=0.9)")
        if key.strip() in out and out[key.strip()] != value.strip():
            raise ConfigError(f"--set {key.strip()} is given twice ({out[key.strip()]!r} and "
                              f"{value.strip()!r}): keep the one you mean")
        out[key.strip()] = value.strip()
    return out


def validate(recipe: Recipe) -> Recipe:
    """Refuse values that would fail later, mid-run, with a less clear message."""
    from .batches import AUGMENTATIONS
    from .models import ARCHS

    checks = [
        (recipe.teacher_arch in ARCHS, f"teacher_arch must be one of {ARCHS}"),
        (recipe.student_arch in ARCHS, f"student_arch must be one of {ARCHS}"),
        (recipe.image_size >= 16, "image_size must be >= 16"),
        (recipe.batch_size >= 1, "batch_size must be >= 1"),
        (recipe.epochs >= 1 and recipe.teacher_epochs >= 1, "epochs and teacher_epochs must be >= 1"),
        (recipe.lr > 0 and recipe.teacher_lr >= 0, "lr must be > 0 and teacher_lr >= 0"),
        (recipe.weight_decay >= 0, "weight_decay must be >= 0"),
        (recipe.temperature > 0, "temperature must be > 0"),
        (0.0 <= recipe.alpha <= 1.0, "alpha must be in [0, 1]"),
        (0.0 <= recipe.label_smoothing < 1.0 and 0.0 <= recipe.teacher_label_smoothing < 1.0,
         "label_smoothing and teacher_label_smoothing must be in [0, 1)"),
        (recipe.optimizer in ("adamw", "sgd"), "optimizer must be adamw or sgd"),
        (not recipe.lookahead or recipe.optimizer == "sgd",
         "lookahead needs optimizer sgd: set optimizer=sgd, or lookahead=false"),
        (recipe.norm_bias_lr_scale > 0, "norm_bias_lr_scale must be > 0"),
        (recipe.whiten_bias_epochs >= 0,
         "whiten_bias_epochs must be >= 0 (0: the whitening bias trains to the end)"),
        (recipe.augmentation in AUGMENTATIONS, f"augmentation must be one of {', '.join(AUGMENTATIONS)}"),
        (recipe.normalization in ("cifar10", "imagenet"), "normalization must be cifar10 or imagenet"),
        (recipe.feature_weight >= 0, "feature_weight must be >= 0"),
        (min(recipe.attention_weight, recipe.rkd_distance_weight, recipe.rkd_angle_weight) >= 0,
         "attention_weight, rkd_distance_weight and rkd_angle_weight must be >= 0"),
        (recipe.rkd_group_size == 0 or recipe.rkd_group_size >= 2,
         "rkd_group_size must be 0 (the whole batch) or >= 2 (relations need pairs)"),
        (0.0 <= recipe.pskd_alpha <= 1.0, "pskd_alpha must be in [0, 1]"),
        (recipe.finetune_lr_scale > 0, "finetune_lr_scale must be > 0 (1: fine-tunes train at lr)"),
        (recipe.schedule in ("constant", "cosine", "onecycle", "airbench"),
         "schedule must be constant, cosine, onecycle or airbench"),
        (min(recipe.train_subset, recipe.val_subset, recipe.test_subset) >= 0, "subsets must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"recipe {recipe.name!r}: {message}")
    return recipe


def get_recipe(name: str | Recipe | None = None, smoke: bool | None = None, **overrides) -> Recipe:
    """The named recipe, with smoke overrides (when ``smoke``) and then the user's."""
    from .env import smoke_mode

    if isinstance(name, Recipe):
        recipe = name
    else:
        name = name or default_recipe_name(smoke)
        if name not in RECIPES:
            raise ConfigError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")
        recipe = RECIPES[name]
    if smoke is None:
        smoke = smoke_mode()
    if smoke and not recipe.smoke:
        recipe = smoke_version(recipe)
    return validate(recipe.with_overrides(**overrides))
