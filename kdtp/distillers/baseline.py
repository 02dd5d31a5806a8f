"""Training on hard labels only: the run every distilled student is compared with."""
from .base import Strategy, register


@register
class Baseline(Strategy):
    """Label-smoothed cross-entropy, nothing from a teacher (``Strategy`` itself)."""
