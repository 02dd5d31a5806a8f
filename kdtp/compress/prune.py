"""Pruning: ``torch.nn.utils.prune`` picks the weights to remove, ``MaskedWeights`` keeps them at zero.

``torch.nn.utils.prune`` re-parametrises a module (``weight = weight_orig * weight_mask``),
which renames its state-dict keys: a checkpoint of such a network would not load into the
plain network a run is rebuilt as (``kdtp.runs.build_network``). So the masks are chosen
by ``torch.nn.utils.prune`` on a *copy*, and ``MaskedWeights`` holds them on the network
itself: each masked weight is set to zero, its gradient is masked (SGD and AdamW then never
move it: zero value, zero gradient and zero momentum stay zero) and every forward pass
multiplies by the mask again (a safety net for any other optimizer or a state loaded
later). The state dict stays a plain one, zeros included: it saves, loads and resumes as
any run's.

Two kinds of masks:

- **unstructured** (``magnitude_masks``): the smallest weights over the whole network
  (global L1). The network keeps its shape: the file compresses, dense kernels do not
  get faster;
- **structured** (``channel_masks``): whole output channels of a convolution, those whose
  filters have the smallest L1 norm, with the BatchNorm scale and shift of each removed
  channel. That channel then outputs exactly 0, so ``shrink_channels`` can cut it out of
  the convolution, its BatchNorm and the layer that reads it: a smaller dense network
  that computes the same function, which is where real speed comes from.
"""
from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.utils import prune

from ..env import ConfigError

PRUNABLE = (nn.Conv2d, nn.Linear)


def _check_amount(amount: float) -> float:
    if not 0.0 <= float(amount) < 1.0:
        raise ConfigError(f"a pruning amount is the fraction removed, in [0, 1); got {amount!r}")
    return float(amount)


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every convolution and linear layer: the weights pruning may zero."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, PRUNABLE)]


def _contiguous_copy(module: nn.Module) -> nn.Module:
    """A copy in the default memory layout (``prune`` flattens weights with ``view``, which
    channels_last weights, the kit's layout, do not allow)."""
    return copy.deepcopy(module).to(memory_format=torch.contiguous_format)


@torch.no_grad()
def magnitude_masks(model: nn.Module, amount: float) -> dict[str, torch.Tensor]:
    """Global unstructured L1 masks: drop the ``amount`` fraction of all conv and linear
    weights with the smallest magnitude, ranked over the whole network at once (a layer
    of large weights loses fewer than a layer of small ones).

    Returns ``{"<layer>.weight": bool mask}`` (True = kept); ``model`` is not changed.
    """
    amount = _check_amount(amount)
    twin = _contiguous_copy(model)
    layers = prunable_layers(twin)
    prune.global_unstructured([(m, "weight") for _, m in layers], pruning_method=prune.L1Unstructured,
                              amount=amount)
    return {f"{name}.weight": m.weight_mask.detach().bool() for name, m in layers}


class Chain(NamedTuple):
    """A convolution whose output channels are normalised by ``bn`` and read by ``reader`` only."""
    conv: str
    bn: str
    reader: str


def channel_chains(model: nn.Module) -> list[Chain]:
    """Where channels can be removed without touching anything else.

    In the small CNNs of the ``cpu`` recipe every convolution (conv, BN, GELU, maybe a max
    pool) feeds only the next convolution, or the classifier: all of them qualify. In a
    ResNet a block's output is added to its input, which ties those channels across blocks;
    only the channels *inside* a block (``conv1 -> bn1 -> conv2``, and ``conv2 -> bn2 ->
    conv3`` in a bottleneck) are free, and those are the ones offered.
    """
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    from ..models import AirbenchCNN, SmallCNN

    if isinstance(model, (SmallCNN, AirbenchCNN)):
        leaves = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
        if isinstance(model, AirbenchCNN):
            leaves = leaves[1:]   # the frozen whitening layer has no BatchNorm: its channels stay
        kinds = "".join("c" if isinstance(m, nn.Conv2d) else "b" if isinstance(m, nn.BatchNorm2d) else "l"
                        for _, m in leaves)
        if kinds != "cb" * (len(leaves) // 2) + "l":
            raise ConfigError(f"this {type(model).__name__} is not a plain conv-BN chain ({kinds}); "
                              "channel pruning needs one")
        return [Chain(leaves[i][0], leaves[i + 1][0], leaves[i + 2][0]) for i in range(0, len(leaves) - 1, 2)]
    if isinstance(model, ResNet):
        chains = []
        for name, block in model.named_modules():
            if isinstance(block, BasicBlock):
                chains.append(Chain(f"{name}.conv1", f"{name}.bn1", f"{name}.conv2"))
            elif isinstance(block, Bottleneck):
                chains += [Chain(f"{name}.conv1", f"{name}.bn1", f"{name}.conv2"),
                           Chain(f"{name}.conv2", f"{name}.bn2", f"{name}.conv3")]
        return chains
    raise ConfigError(f"channel pruning knows the kit's SmallCNN, AirbenchCNN and torchvision ResNets, not "
                      f"{type(model).__name__}; use unstructured pruning (magnitude_masks) for it")


@torch.no_grad()
def channel_masks(model: nn.Module, amount: float) -> dict[str, torch.Tensor]:
    """Structured masks: in each chain, drop the ``amount`` fraction of the convolution's
    output channels whose filters have the smallest L1 norm (``prune.ln_structured``, layer
    by layer), together with those channels' BatchNorm scale and shift.

    Returns ``{"<conv>.weight": mask, "<bn>.weight": mask, "<bn>.bias": mask}`` (True = kept).
    """
    amount = _check_amount(amount)
    masks: dict[str, torch.Tensor] = {}
    for chain in channel_chains(model):
        conv = _contiguous_copy(model.get_submodule(chain.conv))
        prune.ln_structured(conv, "weight", amount=amount, n=1, dim=0)
        mask = conv.weight_mask.detach().bool()
        kept = mask.flatten(1).any(1)
        masks[f"{chain.conv}.weight"] = mask
        masks[f"{chain.bn}.weight"] = kept
        masks[f"{chain.bn}.bias"] = kept.clone()
    return masks


class MaskedWeights:
    """Keeps the masked entries of ``model``'s parameters at exactly zero while it trains.

    ``masks``: ``{parameter name: bool tensor}``, True where the weight stays. See the
    module's docstring for why this, and not ``torch.nn.utils.prune``'s re-parametrisation,
    holds the masks during training.
    """

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor]):
        params = dict(model.named_parameters())
        unknown = sorted(set(masks) - set(params))
        if unknown:
            raise ConfigError(f"masks name parameters the network does not have: {', '.join(unknown[:4])}")
        self.model = model
        self.masks: dict[str, torch.Tensor] = {}
        self.load(masks)
        # a frozen parameter (airbench's BatchNorm scales) gets no gradient to mask
        self._handles = [params[name].register_hook(self._grad_hook(name)) for name in self.masks
                         if params[name].requires_grad]
        self._handles.append(model.register_forward_pre_hook(lambda _m, _args: self.apply()))

    def _grad_hook(self, name: str):
        return lambda grad: grad * self.masks[name].to(grad.dtype)

    def load(self, masks: dict[str, torch.Tensor]) -> None:
        """Take these masks (a resumed run's), on the parameters' devices, and apply them."""
        params = dict(self.model.named_parameters())
        for name, mask in masks.items():
            if mask.shape != params[name].shape:
                raise ConfigError(f"the mask of {name} has shape {tuple(mask.shape)}, the weight "
                                  f"{tuple(params[name].shape)}: it belongs to another network")
        self.masks = {name: mask.to(params[name].device, torch.bool) for name, mask in masks.items()}
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        params = dict(self.model.named_parameters())
        for name, mask in self.masks.items():
            params[name].mul_(mask.to(params[name].dtype))

    def remove(self) -> None:
        """Stop holding the masks (the zeros stay where they are)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros among the conv and linear weights."""
    weights = [m.weight for _, m in prunable_layers(model)]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / max(1, total)


def _kept_channels(bn: nn.BatchNorm2d) -> torch.Tensor:
    """Channels whose BN output is not identically 0 (scale or shift non-zero)."""
    kept = (bn.weight != 0) | (bn.bias != 0)
    if not kept.any():
        kept[0] = True   # keep one (all-zero) channel: the next layer needs an input
    return kept


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


@torch.no_grad()
def shrink_channels(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with the channels that output exactly 0 cut out.

    A channel whose BatchNorm scale and shift are both 0 outputs 0 whatever its filter
    (``channel_masks`` zeroes both); the activation keeps it 0 (GELU(0) = ReLU(0) = 0) and
    the next layer multiplies it by its weights: it contributes nothing. Removing it from
    the convolution, the BatchNorm and the layer that reads it gives a smaller dense
    network computing the same function (up to float rounding), with real savings in
    memory and time. A network without such channels comes back as an unchanged copy.
    """
    model = copy.deepcopy(model)
    for chain in channel_chains(model):
        conv, bn, reader = (model.get_submodule(n) for n in chain)
        kept = _kept_channels(bn)
        if kept.all():
            continue
        k = int(kept.sum())
        new_conv = nn.Conv2d(conv.in_channels, k, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                             bias=conv.bias is not None).to(conv.weight)
        new_conv.weight.copy_(conv.weight[kept])
        if conv.bias is not None:
            new_conv.bias.copy_(conv.bias[kept])
        new_bn = nn.BatchNorm2d(k, eps=bn.eps, momentum=bn.momentum).to(bn.weight)
        new_bn.weight.requires_grad_(bn.weight.requires_grad)
        for attr in ("weight", "bias", "running_mean", "running_var"):
            getattr(new_bn, attr).copy_(getattr(bn, attr)[kept])
        new_bn.num_batches_tracked.copy_(bn.num_batches_tracked)
        if isinstance(reader, nn.Linear):
            new_reader = nn.Linear(k, reader.out_features, bias=reader.bias is not None).to(reader.weight)
        else:
            new_reader = nn.Conv2d(k, reader.out_channels, reader.kernel_size, reader.stride, reader.padding,
                                   reader.dilation, bias=reader.bias is not None).to(reader.weight)
        new_reader.weight.copy_(reader.weight[:, kept])
        if reader.bias is not None:
            new_reader.bias.copy_(reader.bias)
        for name, old_module, module in zip(chain, (conv, bn, reader), (new_conv, new_bn, new_reader)):
            _replace(model, name, module.train(old_module.training))
    return model.to(memory_format=torch.channels_last)


def channel_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of each prunable convolution (to print what shrinking kept)."""
    return {chain.conv: model.get_submodule(chain.conv).out_channels for chain in channel_chains(model)}
