"""Instant, specific feedback on the lab's exercises: write the piece, get a verdict.

The notebooks ask students to write four pieces of the lab themselves::

    kdtp.check.softmax_t(my_softmax_t)      # prints one paragraph: correct, or which mistake
    softmax_t = kdtp.check.use("softmax_t", my_softmax_t)   # yours if it passed, else the kit's
    kdtp.check.hint("kd_loss")              # a nudge, never the code
    kdtp.check.solution("kd_loss")          # the reference source, after a warning

Exercises (``NAMES``) and the signature each check calls:

* ``softmax_t(logits, T)``: ``softmax(logits / T)`` over the classes (dim 1);
* ``kd_loss(student_logits, teacher_logits, labels, T, alpha)``:
  ``alpha * CE(s, y) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))``, KL with
  ``batchmean``, CE on the raw student logits (the kit's ``kdtp.losses.KDLoss``);
* ``adapter(student_channels, teacher_channels) -> nn.Module``: a 1x1 conv (+ optional BN)
  lifting the student's map to the teacher's width (``kdtp.models.make_adapter``);
* ``feature_loss(student_map, teacher_map, adapter)``: ``MSE(adapter(s), t)``, the teacher
  detached, the larger map average-pooled to the smaller when the sizes differ
  (``kdtp.losses.FeatureLoss``).

How a check decides. It runs the student's function on a few seeded random cases (fixed
seeds, no global RNG touched, all on the CPU in well under a second) and compares with the
reference (``torch.allclose``, ``rtol=1e-4``, ``atol=1e-6``, in float64). If they differ,
it compares with each *known mistake*, implemented here as a variant of the reference, and
names the first that matches on every case; the cases are chosen so that no two variants
coincide (``T`` never 1, which hides every temperature mistake; ``alpha`` never 0.5, which
hides a swapped alpha; several batch sizes and class counts, which separate ``mean`` from
``batchmean`` and ``sum``). Anything else gets the largest difference and the case it
happened on. A ``NotImplementedError`` (the exercise's placeholder) is "not done yet", any
other exception is an "error" naming its type, message, line and likely cause.

A stuck student is never blocked: the checks and ``use`` never raise because of the
student's function (only for an unknown exercise name), and ``use`` hands back the kit's
reference, with the same signature, whenever the student's version is not correct yet.

Layout: ``base`` holds the shared machinery (``Verdict``, running and comparing the student's
code, ``use`` / ``hint`` / ``solution``) and each exercise has its own module (``ex_softmax_t``,
``ex_kd_loss``, ``ex_adapter``, ``ex_feature_loss``: reference, cases, known mistakes, check,
hint). Everything is re-exported here, so ``kdtp.check.X`` is the one path to use.
"""
from .base import ATOL, NAMES, RTOL, Verdict, hint, solution, use
from .base import _LAST, _Case, _all_close, _variant_values  # noqa: F401  (used by tests/test_check.py)
from .ex_softmax_t import reference_softmax_t, softmax_t
from .ex_softmax_t import _SOFTMAX_MESSAGES, _SOFTMAX_VARIANTS, _softmax_cases  # noqa: F401
from .ex_kd_loss import kd_loss, reference_kd_loss
from .ex_kd_loss import _KD_MESSAGES, _KD_VARIANTS, _kd_cases  # noqa: F401
from .ex_adapter import adapter, reference_adapter
from .ex_adapter import _ADAPTER_CASES  # noqa: F401
from .ex_feature_loss import feature_loss, reference_feature_loss
from .ex_feature_loss import (_FEATURE_MESSAGES, _FEATURE_VARIANTS, _feature_args64,  # noqa: F401
                              _feature_cases)

__all__ = ["NAMES", "Verdict", "softmax_t", "kd_loss", "adapter", "feature_loss", "use", "hint",
           "solution", "reference_softmax_t", "reference_kd_loss", "reference_adapter",
           "reference_feature_loss"]
