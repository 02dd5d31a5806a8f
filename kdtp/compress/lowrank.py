"""Low-rank factorisation of convolutions (truncated SVD), the chapter's tensor-compression idea.

A convolution with ``C_out`` filters of size ``C_in x K x K`` is a matrix
``W in R^{C_out x (C_in K K)}``. Its SVD ``W = U S V^T`` truncated to the ``r`` largest
singular values is the best rank-``r`` approximation (Eckart-Young) and splits into two
layers: a ``K x K`` convolution ``C_in -> r`` (the rows of ``sqrt(S_r) V_r^T``) followed by a
``1 x 1`` convolution ``r -> C_out`` (the columns of ``U_r sqrt(S_r)``). Parameters drop from
``C_out C_in K^2`` to ``r (C_in K^2 + C_out)``; at full rank nothing is lost.

``LowRankConv2d`` is that pair. Deployed, its state dict holds the two factors: the small
file. Inside a run (``as_conv=True``) it holds the one of the convolution it replaces (the
product of the factors as ``weight``, and ``bias``) instead: the run's checkpoint then loads
into the plain architecture, as every run's must, and loading such a ``weight`` into the
layer factorises it again, exactly when the weight has rank ``<= r``, as a saved one does.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..env import ConfigError


def _factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, second): ``(r, C_in, K, K)`` and ``(C_out, r, 1, 1)`` with ``second @ first ~ weight``."""
    c_out = weight.shape[0]
    u, s, vh = torch.linalg.svd(weight.detach().double().reshape(c_out, -1), full_matrices=False)
    root = s[:rank].sqrt()
    first = (root[:, None] * vh[:rank]).reshape(rank, *weight.shape[1:])
    second = (u[:, :rank] * root).reshape(c_out, rank, 1, 1)
    return first.to(weight.dtype), second.to(weight.dtype)


def full_rank(conv: nn.Conv2d) -> int:
    """The largest rank a convolution's weight matrix can have: min(C_out, C_in K^2)."""
    return min(conv.out_channels, conv.weight[0].numel())


class LowRankConv2d(nn.Module):
    """A ``K x K`` convolution ``C_in -> rank`` then a ``1 x 1`` one ``rank -> C_out``, from ``conv``'s SVD.

    ``as_conv``: save and load as the convolution it replaces (see the module's docstring).
    """

    def __init__(self, conv: nn.Conv2d, rank: int, *, as_conv: bool = False):
        super().__init__()
        self.as_conv = bool(as_conv)
        if conv.groups != 1 or conv.padding_mode != "zeros":
            raise ConfigError("LowRankConv2d factorises plain convolutions (groups=1, zero padding)")
        if not 1 <= rank <= full_rank(conv):
            raise ConfigError(f"rank {rank} is outside 1..{full_rank(conv)} (min(C_out, C_in K^2)) for this convolution")
        self.rank = int(rank)
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.out_channels, self.in_channels, self.kernel_size = conv.out_channels, conv.in_channels, conv.kernel_size
        first, second = _factors(conv.weight, self.rank)
        self.first = nn.Parameter(first)
        self.second = nn.Parameter(second)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.first, None, self.stride, self.padding, self.dilation)
        return F.conv2d(x, self.second, self.bias)

    @property
    def weight(self) -> torch.Tensor:
        """The ``(C_out, C_in, K, K)`` weight the two factors multiply to (rank <= ``rank``)."""
        return (self.second.flatten(1) @ self.first.flatten(1)).reshape(
            self.out_channels, self.in_channels, *self.kernel_size)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        """``as_conv``: save as the plain convolution would, ``weight`` (the product) and ``bias``."""
        if not self.as_conv:
            return super()._save_to_state_dict(destination, prefix, keep_vars)
        weight = self.weight
        destination[prefix + "weight"] = weight if keep_vars else weight.detach()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        """``as_conv``: load a plain convolution's ``weight`` by factorising it at this layer's rank."""
        if not self.as_conv:
            return super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                                 unexpected_keys, error_msgs)
        keys = [prefix + "weight"] + ([prefix + "bias"] if self.bias is not None else [])
        for key in keys:
            if key not in state_dict:
                missing_keys.append(key)
        if any(k not in state_dict for k in keys):
            return
        weight = state_dict[prefix + "weight"]
        if tuple(weight.shape) != tuple(self.weight.shape):
            error_msgs.append(f"size mismatch for {prefix}weight: the checkpoint has {tuple(weight.shape)}, "
                              f"this layer {tuple(self.weight.shape)}")
            return
        first, second = _factors(weight.to(self.first), self.rank)
        with torch.no_grad():
            self.first.copy_(first)
            self.second.copy_(second)
            if self.bias is not None:
                self.bias.copy_(state_dict[prefix + "bias"])

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, rank={self.rank}, "
                f"stride={self.stride}, padding={self.padding}")


# factorise the largest convolutions holding this share of the parameters (or more); the
# methods kd_lowrank* use it, so changing it changes what they train: give them new names then
SHARE = 0.6


def largest_convs(model: nn.Module, share: float = SHARE) -> list[str]:
    """The convolutions holding the most weights, largest first, until together they hold
    ``share`` of all the network's parameters (where factorising saves the most)."""
    total = sum(p.numel() for p in model.parameters())
    convs = sorted(((m.weight.numel(), name) for name, m in model.named_modules()
                    if isinstance(m, nn.Conv2d) and m.groups == 1), reverse=True)
    chosen, held = [], 0
    for size, name in convs:
        if held >= share * total:
            break
        chosen.append(name)
        held += size
    return chosen


def rank_for(conv: nn.Conv2d, fraction: float) -> int:
    """``fraction`` of the convolution's full rank, at least 1."""
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"a rank fraction is in (0, 1], got {fraction!r}")
    return max(1, math.ceil(fraction * full_rank(conv)))


def factorize(model: nn.Module, fraction: float, share: float = SHARE, *, inplace: bool = False,
              as_conv: bool = False) -> nn.Module:
    """``model`` with its largest convolutions (``largest_convs(share)``) replaced by
    ``LowRankConv2d`` at ``fraction`` of their full rank; a copy unless ``inplace``."""
    model = model if inplace else copy.deepcopy(model)
    for name in largest_convs(model, share):
        conv = model.get_submodule(name)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child,
                LowRankConv2d(conv, rank_for(conv, fraction), as_conv=as_conv).to(conv.weight.device)
                .train(conv.training))
    return model


def factorised_layers(model: nn.Module) -> dict[str, LowRankConv2d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LowRankConv2d)}
