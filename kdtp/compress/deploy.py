"""From a finished compression run to the network one would ship.

A run's checkpoint is always a plain network of the student's architecture (that is what
``train_or_load`` loads); the run just trained hands back its network in its *training*
form instead (masks attached, layers factorised). ``checkpoint_network`` gives the plain
one either way, and ``deployed`` the small form that is measured: channels cut out for a
``kd_channels*`` run, convolutions factorised for a ``kd_lowrank*`` run, the plain network
(with its zeros) otherwise.
"""
from __future__ import annotations

import torch
from torch import nn

from .lowrank import factorize
from .prune import shrink_channels


def checkpoint_network(result) -> nn.Module:
    """The network ``result``'s checkpoint holds: the plain architecture, eval mode, on its device."""
    from ..runner import build_network_for_load
    from ..runs import get_run

    device = next(result.model.parameters()).device
    net = build_network_for_load(get_run(result.name), result.recipe, device)
    net.load_state_dict(result.model.state_dict())
    return net.eval()


@torch.no_grad()
def deployed(result) -> nn.Module:
    """The compact network a compression run stands for (see the module's docstring)."""
    # here, not at the top: the distillers import this package (kdtp.compress) themselves
    from ..distillers import get_method
    from ..distillers.lowrank_finetune import LowRankKD
    from ..distillers.prune_finetune import PrunedKD

    net = checkpoint_network(result)
    method = get_method(result.config["method"])
    if issubclass(method, PrunedKD) and method.structured:
        return shrink_channels(net).eval()
    if issubclass(method, LowRankKD):
        return factorize(net, method.rank_fraction).eval()
    return net
