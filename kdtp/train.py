"""One training loop for every strategy, and ``evaluate``.

The loop knows nothing of checkpoints: after each epoch it hands a ``FitState`` to an
``on_epoch_end`` callback (``resume.py`` writes the resumable ``last`` file from it),
and it can start from a state a previous, interrupted run left behind.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .data import DeviceLoader
from .losses import value_checks_on_accelerators

PRECISIONS = ("fp32", "bf16", "fp16")


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


def make_optimizer(params, name: str, lr: float, weight_decay: float, momentum: float = 0.9) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
    raise ValueError(f"optimizer {name!r} is unknown: choose adamw or sgd")


def make_scheduler(optimizer: torch.optim.Optimizer, name: str, total_steps: int,
                   warmup_fraction: float = 0.0) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule: ``constant`` (the reference lab), ``cosine``, or ``onecycle``."""
    total_steps = max(1, total_steps)
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
    raise ValueError(f"schedule {name!r} is unknown: choose constant, cosine or onecycle")


@torch.no_grad()
def evaluate(model: nn.Module, loader: DeviceLoader, precision: str = "fp32",
             tta_flip: bool = False) -> float:
    """Top-1 accuracy of ``model`` on ``loader`` (eval mode; optional flip averaging)."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=loader.device)
    total = 0
    for x, y in loader:
        with autocast(loader.device, precision):
            logits = model(x).float()
            if tta_flip:
                logits = logits + model(x.flip(3)).float()
        correct += (logits.argmax(1) == y).sum()
        total += len(y)
    model.train(was_training)
    return correct.item() / max(1, total)


def fit(strategy, train_loader: DeviceLoader, val_loader: DeviceLoader, *,
        optimizer: torch.optim.Optimizer, scheduler, epochs: int, precision: str = "fp32",
        state: FitState | None = None, scaler: torch.amp.GradScaler | None = None,
        on_epoch_end: Callable[[FitState], None] | None = None, desc: str = "train",
        tta_flip: bool = False, progress: bool = True) -> FitState:
    """Train ``strategy`` for ``epochs`` (continuing from ``state``), keep the best-on-val weights.

    Each step sums the strategy's loss terms; the bar shows loss and accuracy, the
    history records every term per epoch plus validation accuracy, lr and seconds.
    """
    device = train_loader.device
    state = state or FitState()
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=(precision == "fp16"))
    # the losses' per-step value checks would sync a GPU every step (kdtp.losses)
    with value_checks_on_accelerators(device.type == "cpu"):
        return _fit_epochs(strategy, optimizer, scheduler, train_loader, val_loader, epochs, precision,
                           state, scaler, on_epoch_end, desc, tta_flip, progress)


def _fit_epochs(strategy, optimizer, scheduler, train_loader, val_loader, epochs, precision, state,
                scaler, on_epoch_end, desc, tta_flip, progress) -> FitState:
    device = train_loader.device
    student = strategy.student
    for epoch in range(state.epoch, epochs):
        started = time.perf_counter()
        train_loader.set_epoch(epoch)
        strategy.train()
        if hasattr(strategy, "start_epoch"):
            strategy.start_epoch(epoch, epochs)
        sums: dict[str, torch.Tensor] = {}
        correct = torch.zeros((), dtype=torch.long, device=device)
        seen = 0
        bar = tqdm(train_loader, desc=f"{desc} {epoch + 1}/{epochs}", leave=False,
                   disable=not progress, dynamic_ncols=True)
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
