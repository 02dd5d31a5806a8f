"""One training loop for every strategy, and ``evaluate``.

The loop knows nothing of checkpoints: after each epoch it hands a ``FitState`` to an
``on_epoch_end`` callback (``resume.py`` writes the resumable ``last`` file from it),
and it can start from a state a previous, interrupted run left behind.
"""
from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .cpu_memory import keep_freed_memory
from .batches import DeviceLoader
from .losses import value_checks_on_accelerators

PRECISIONS = ("fp32", "bf16", "fp16")


def bar_goes_to_a_log() -> bool:
    """True when a step progress bar would land as text in a file or a pipe (``python -m kdtp
    train ... > log``, CI): there every refresh appends another copy of the bar, thousands
    a run, so the bar is left out and the epoch lines alone report progress. A notebook's
    widget bar and a terminal's bar are kept."""
    from tqdm.notebook import tqdm as notebook_tqdm

    if issubclass(tqdm, notebook_tqdm):
        return False
    isatty = getattr(sys.stderr, "isatty", None)
    return not (callable(isatty) and isatty())


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass; a no-op for fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is unknown: choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class FitState:
    """Everything needed to continue training after epoch ``epoch`` (1-based count done)."""
    epoch: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)
    best_val_acc: float = -1.0
    best_epoch: int = 0
    best_model: dict[str, torch.Tensor] | None = None


def norm_bias_groups(module: nn.Module, lr: float, weight_decay: float, lr_scale: float) -> list[dict]:
    """Parameter groups with the BatchNorm shifts at ``lr_scale`` x the learning rate and
    ``weight_decay / lr_scale``, so every weight decays by the same ``lr * weight_decay`` per
    step (airbench's 64x BatchNorm-bias rate: those shifts are few, and move far). Frozen
    parameters (``requires_grad=False``) are left out. One group when ``lr_scale`` is 1."""
    trainable = [p for p in module.parameters() if p.requires_grad]
    if lr_scale == 1.0:
        return [dict(params=trainable)]
    shifts = {id(m.bias) for m in module.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.bias is not None}
    return [dict(params=[p for p in trainable if id(p) not in shifts]),
            dict(params=[p for p in trainable if id(p) in shifts], lr=lr * lr_scale,
                 weight_decay=weight_decay / lr_scale)]


class LookaheadSGD(torch.optim.SGD):
    """Nesterov SGD with airbench's lookahead: every ``every`` steps the weights (and the
    BatchNorm statistics) of ``model`` are pulled back toward a running average of
    themselves, by a weight that grows over the run as ``base * (step / total)^3``; after
    the last step the network *is* that average. A cheap EMA of the weights that needs no
    second network at evaluation. The average is part of ``state_dict``, so a resumed run
    continues it exactly.
    """

    def __init__(self, params, model: nn.Module, total_steps: int, every: int = 5,
                 base: float = 0.95 ** 5, **sgd_args):
        super().__init__(params, **sgd_args)
        self.tracked = [v for v in model.state_dict().values() if v.dtype.is_floating_point]
        self.average = [v.detach().clone() for v in self.tracked]
        self.total_steps, self.every, self.base, self.steps_done = max(1, total_steps), every, base, 0

    @torch.no_grad()
    def _pull(self, decay: float) -> None:
        for avg, v in zip(self.average, self.tracked):
            avg.lerp_(v, 1 - decay)
            v.copy_(avg)

    def step(self, closure=None):
        loss = super().step(closure)
        self.steps_done += 1
        if self.steps_done % self.every == 0:
            self._pull(self.base * min(1.0, self.steps_done / self.total_steps) ** 3)
        if self.steps_done == self.total_steps:
            self._pull(1.0)
        return loss

    def state_dict(self) -> dict:
        out = super().state_dict()
        out["lookahead"] = {"steps_done": self.steps_done, "average": [a.clone() for a in self.average]}
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        saved = state_dict.pop("lookahead", None)
        if saved is None or len(saved["average"]) != len(self.average):
            raise ValueError("this optimizer state has no lookahead average for this network")
        super().load_state_dict(state_dict)
        self.steps_done = int(saved["steps_done"])
        for avg, v in zip(self.average, saved["average"]):
            avg.copy_(v)


def make_optimizer(params, name: str, lr: float, weight_decay: float, momentum: float = 0.9, *,
                   lookahead_model: nn.Module | None = None, total_steps: int = 0) -> torch.optim.Optimizer:
    """AdamW or Nesterov SGD; with ``lookahead_model``, SGD with airbench's lookahead
    (``LookaheadSGD``) over that network's weights for ``total_steps`` steps."""
    if name == "adamw":
        if lookahead_model is not None:
            raise ValueError("lookahead is built on SGD: use optimizer sgd with lookahead")
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        if lookahead_model is not None:
            return LookaheadSGD(params, lookahead_model, total_steps, lr=lr, momentum=momentum,
                                nesterov=True, weight_decay=weight_decay)
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
    raise ValueError(f"optimizer {name!r} is unknown: choose adamw or sgd")


def make_scheduler(optimizer: torch.optim.Optimizer, name: str, total_steps: int,
                   warmup_fraction: float = 0.0) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule: ``constant`` (the reference lab), ``cosine``, ``onecycle``, or
    ``airbench`` (linear from 0.2x to 1x over the warm-up, then linear down to 0.07x)."""
    total_steps = max(1, total_steps)
    if name == "airbench":
        warm = int(total_steps * warmup_fraction)

        def factor(step: int) -> float:
            if step < warm:
                return 0.2 + 0.8 * step / warm
            return 1.0 - 0.93 * (step - warm) / max(1, total_steps - warm)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if name == "onecycle":
        if total_steps < 2:  # no cycle fits in one step (OneCycleLR divides by zero)
            return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        max_lrs = [g["lr"] for g in optimizer.param_groups]
        # the warm-up must end after step 1 (pct_start * total_steps > 1) or OneCycleLR
        # divides by zero: short runs get a 1.5-step warm-up
        pct_start = warmup_fraction if warmup_fraction * total_steps > 1 else 1.5 / total_steps
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=max_lrs, total_steps=total_steps,
            pct_start=pct_start, anneal_strategy="linear",
            div_factor=10.0, final_div_factor=100.0, cycle_momentum=False)
    raise ValueError(f"schedule {name!r} is unknown: choose constant, cosine, onecycle or airbench")


@torch.no_grad()
def correct_per_image(model: nn.Module, loader: DeviceLoader, precision: str = "fp32",
                      tta_flip: bool = False) -> torch.Tensor:
    """Which images of ``loader`` ``model`` gets right (bool, on the CPU, in the loader's order).

    Scored exactly as ``evaluate`` scores a run (eval mode, optional flip averaging), so an
    image-by-image comparison of two runs (``stats.same_images_difference``) uses the same
    predictions as the accuracies it compares.
    """
    if loader.device.type == "cpu":
        keep_freed_memory()
    was_training = model.training
    model.eval()
    hits = []
    for x, y in loader:
        with autocast(loader.device, precision):
            logits = model(x).float()
            if tta_flip:
                logits = logits + model(x.flip(3)).float()
        hits.append(logits.argmax(1) == y)   # on the device: one copy to the CPU at the end
    model.train(was_training)
    return torch.cat(hits).cpu() if hits else torch.zeros(0, dtype=torch.bool)


def evaluate(model: nn.Module, loader: DeviceLoader, precision: str = "fp32",
             tta_flip: bool = False) -> float:
    """Top-1 accuracy of ``model`` on ``loader`` (eval mode; optional flip averaging)."""
    hits = correct_per_image(model, loader, precision, tta_flip)
    return hits.sum().item() / max(1, len(hits))


def fit(strategy, train_loader: DeviceLoader, val_loader: DeviceLoader, *,
        optimizer: torch.optim.Optimizer, scheduler, epochs: int, precision: str = "fp32",
        state: FitState | None = None, scaler: torch.amp.GradScaler | None = None,
        on_epoch_end: Callable[[FitState], None] | None = None, desc: str = "train",
        tta_flip: bool = False, progress: bool = True,
        before_epoch: Callable[[int], None] | None = None) -> FitState:
    """Train ``strategy`` for ``epochs`` (continuing from ``state``), keep the best-on-val weights.

    Each step sums the strategy's loss terms; the bar shows loss and accuracy, the
    history records every term per epoch plus validation accuracy, lr and seconds.
    ``before_epoch(epoch)`` runs before each epoch (0-based), a resumed run's first included:
    what changes with the epoch alone (airbench's frozen whitening bias) is set there.
    """
    device = train_loader.device
    if device.type == "cpu":
        keep_freed_memory()   # the same arithmetic, 10-35% faster steps (kdtp.cpu_memory)
    state = state or FitState()
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=(precision == "fp16"))
    # the losses' per-step value checks would sync a GPU every step (kdtp.losses)
    with value_checks_on_accelerators(device.type == "cpu"):
        return _fit_epochs(strategy, optimizer, scheduler, train_loader, val_loader, epochs, precision,
                           state, scaler, on_epoch_end, desc, tta_flip, progress, before_epoch)


def _fit_epochs(strategy, optimizer, scheduler, train_loader, val_loader, epochs, precision, state,
                scaler, on_epoch_end, desc, tta_flip, progress, before_epoch) -> FitState:
    device = train_loader.device
    student = strategy.student
    for epoch in range(state.epoch, epochs):
        started = time.perf_counter()
        train_loader.set_epoch(epoch)
        if before_epoch is not None:
            before_epoch(epoch)
        strategy.train()
        if hasattr(strategy, "start_epoch"):
            strategy.start_epoch(epoch, epochs)
        sums: dict[str, torch.Tensor] = {}
        correct = torch.zeros((), dtype=torch.long, device=device)
        seen = 0
        bar = tqdm(train_loader, desc=f"{desc} {epoch + 1}/{epochs}", leave=False,
                   disable=not progress or bar_goes_to_a_log(), dynamic_ncols=True)
        for step, (x, y) in enumerate(bar):
            with autocast(device, precision):
                logits, terms = strategy.training_step(x, y)
            loss = sum(terms.values())
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            lr_used = optimizer.param_groups[0]["lr"]   # before the schedule moves past the last step
            scheduler.step()
            with torch.no_grad():
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0) + v.detach().float() * len(y)
                correct += (logits.argmax(1) == y).sum()
                seen += len(y)
            if step % 10 == 0 and progress:  # .item() syncs the GPU: not every step
                bar.set_postfix(loss=f"{sum(sums.values()).item() / seen:.3f}",
                                acc=f"{correct.item() / seen:.3f}")
        bar.close()
        if seen == 0:
            raise ValueError("the training set gave no batch: it is empty or smaller than the batch size")
        val_acc = evaluate(student, val_loader, precision, tta_flip)
        h = state.history
        for k, v in sums.items():
            h.setdefault(f"train_{k}", []).append(v.item() / seen)
        h.setdefault("train_loss", []).append(sum(v.item() for v in sums.values()) / seen)
        h.setdefault("train_acc", []).append(correct.item() / seen)
        h.setdefault("val_acc", []).append(val_acc)
        h.setdefault("lr", []).append(lr_used)
        h.setdefault("seconds", []).append(time.perf_counter() - started)
        state.epoch = epoch + 1
        if val_acc > state.best_val_acc:
            state.best_val_acc, state.best_epoch = val_acc, epoch + 1
            state.best_model = {k: v.detach().to("cpu", copy=True) for k, v in student.state_dict().items()}
        if progress:
            print(f"{desc} epoch {epoch + 1}/{epochs}: loss {h['train_loss'][-1]:.4f} "
                  f"train acc {h['train_acc'][-1]:.4f} val acc {val_acc:.4f} "
                  f"({h['seconds'][-1]:.1f}s)", flush=True)
        if on_epoch_end is not None:
            on_epoch_end(state)
    return state
