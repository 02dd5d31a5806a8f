"""Compressing a trained student (notebook 12): pruning, int8 quantization, low rank, measuring.

- ``prune``: masks chosen with ``torch.nn.utils.prune`` (global magnitude, or whole
  channels), held at zero while a run fine-tunes (``kd_prune*`` / ``kd_channels*``
  methods), and ``shrink_channels``, which cuts zeroed channels out for real;
- ``quantize``: int8 post-training quantization for the CPU (FX graph mode), calibrated on
  training images, saved and loaded as tensors only; skipped with a message where this
  PyTorch cannot do it;
- ``lowrank``: truncated-SVD factorisation of the largest convolutions (``kd_lowrank*``);
- ``deploy``: the compact network a finished run stands for;
- ``measure``: size of the saved file, non-zero parameters, latency and throughput, the
  table and the figure.

The fine-tunes are runs like any other (hash, resume, lock, published checkpoints): their
checkpoints are plain networks of the recipe's student architecture, with zeros (pruning)
or rank-limited weights (low rank) in them; the smaller deployed forms are rebuilt from
them exactly (``shrink_channels``, ``factorize``).
"""
from .deploy import checkpoint_network, deployed
from .lowrank import LowRankConv2d, factorize, largest_convs
from .measure import nonzero_parameters, size_on_disk, speed
from .prune import MaskedWeights, channel_masks, magnitude_masks, shrink_channels, sparsity
from .quantize import QuantizationUnavailable, availability, load_quantized, quantize_int8, save_quantized

__all__ = ["checkpoint_network", "deployed", "LowRankConv2d", "factorize", "largest_convs", "nonzero_parameters", "size_on_disk", "speed",
           "MaskedWeights", "channel_masks", "magnitude_masks", "shrink_channels", "sparsity",
           "QuantizationUnavailable", "availability", "load_quantized", "quantize_int8", "save_quantized"]
