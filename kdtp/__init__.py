"""kdtp: the helper package of the Knowledge Distillation course kit.

The notebooks hold the ideas; this package holds the mechanics (data, models, losses,
the training loop and train-or-load checkpointing). Import what a notebook needs from
the top level::

    from kdtp import train_or_load, build_model, KDLoss
"""
__version__ = "0.1.0"

from .results import RunResult  # noqa: E402
from .runner import train_or_load  # noqa: E402
from .data import CLASSES, load_cifar10  # noqa: E402
from .env import banner, mount_drive, pick_device, smoke_mode  # noqa: E402
from .losses import FeatureLoss, KDLoss  # noqa: E402
from .models import build_model, count_parameters  # noqa: E402
from .recipes import RECIPES, get_recipe  # noqa: E402
from .runs import RUNS, Run  # noqa: E402
from .course import COURSE_RUNS  # noqa: E402  (declares the runs of 07 onwards)
from . import check  # noqa: E402  (kdtp.check.kd_loss(my_kd_loss) in the exercises)

__all__ = ["RunResult", "train_or_load", "CLASSES", "load_cifar10", "banner", "mount_drive",
           "pick_device", "smoke_mode", "FeatureLoss", "KDLoss", "build_model",
           "count_parameters", "RECIPES", "get_recipe", "RUNS", "Run", "COURSE_RUNS", "__version__"]
