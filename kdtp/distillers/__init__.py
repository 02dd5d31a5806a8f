"""Methods of training a run, one file each, found by name.

A method is a small ``nn.Module`` (the mdistiller idea): it wraps the student (and frozen
teachers) and its ``training_step`` returns the student's logits and a dict of named loss
terms, which ``fit`` sums and logs one by one. Methods register themselves by name (the
torchdistill idea), so a run says ``method="kd_logits"`` and a new method is a new file
here with ``@register`` on its class: nothing else in the kit changes.
"""
from .base import METHODS, Strategy, Teacher, WithTaps, WithTeacher, get_method, register
from .baseline import Baseline
from .logits import LogitKD
from .features import FeatureKD
from .attention import AttentionKD
from .relations import RelationKD
from .progressive import ProgressiveSelfKD
from .multi_teacher import ConfidenceMultiTeacherKD, MultiTeacherKD
from .prune_finetune import PrunedKD, pruned_kd
from .lowrank_finetune import LowRankKD, lowrank_kd

__all__ = ["METHODS", "Strategy", "Teacher", "WithTeacher", "WithTaps", "get_method", "register",
           "Baseline", "LogitKD", "FeatureKD", "AttentionKD", "RelationKD", "ProgressiveSelfKD"]
