"""`create_optimizer` and `create_schedule` from the recipe's `train` section.

    optimizer = create_optimizer(net, recipe.train.optimizer)
    schedule = create_schedule(optimizer, recipe.train.scheduler, total_steps, steps_per_epoch)
    ...; schedule.step_batch()              # after every optimiser step
    schedule.step_epoch(val_metric)         # after every validation (plateau only uses it)

Weight decay is not applied to biases and normalisation weights (1-D parameters) unless
`optimizer.decay_norm_and_bias`. A network may scale the learning rate of its parameters (`lr_scales`:
layer-wise decay of a pre-trained transformer); the base-rate groups come first (the logged `lr`).
Every schedule but `plateau` is a function of the optimiser step (warm-up included), so a resumed
run lands on exactly the same learning rate; `plateau` is torch's ReduceLROnPlateau, stepped on the
monitored metric after the warm-up.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from bigmodel_cli.errors import first_line


def lr_scales(net: torch.nn.Module) -> dict[str, float]:
    """Learning-rate factors by parameter name, from every submodule that defines `lr_scales()` (a pre-trained
    transformer's layer-wise decay and head rate, `models.hf`); parameters not named keep the base rate."""
    scales: dict[str, float] = {}
    for prefix, module in net.named_modules():
        own = getattr(type(module), "lr_scales", None)
        if callable(own):
            scales.update({f"{prefix}.{name}" if prefix else name: f for name, f in module.lr_scales().items()})
    return scales


def parameter_groups(net: torch.nn.Module, weight_decay: float, decay_all: bool,
                     lr: float | None = None) -> list[dict[str, Any]]:
    scales = lr_scales(net) if lr is not None else {}
    by_key: dict[tuple[bool, float], list[torch.nn.Parameter]] = {}
    for name, p in net.named_parameters():
        if p.requires_grad:
            by_key.setdefault((decay_all or p.ndim > 1, scales.get(name, 1.0)), []).append(p)
    by_key.setdefault((True, 1.0), [])  # the base-rate decayed group comes first, even when empty: its lr is logged
    groups = []
    for (decay, scale), params in sorted(by_key.items(), key=lambda kv: (kv[0][1] != 1.0, not kv[0][0], -kv[0][1])):
        group: dict[str, Any] = {"params": params, "weight_decay": weight_decay if decay else 0.0}
        if scale != 1.0:
            group["lr"] = lr * scale
        groups.append(group)
    return groups


def create_optimizer(net: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    groups = parameter_groups(net, cfg.weight_decay, cfg.decay_norm_and_bias, cfg.lr)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.name in ("adam", "adamw"):
        kind = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
        if getattr(cfg, "fused", False):
            try:
                return kind(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=True)
            except (RuntimeError, ValueError, TypeError) as e:  # parameters the fused kernel does not take
                from bigmodel_cli import console

                console.warn(f"train.optimizer.fused: not available here ({first_line(e, 120)}); "
                             "using the unfused optimizer")
        return kind(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    if cfg.name == "adagrad":
        return torch.optim.Adagrad(groups, lr=cfg.lr, eps=cfg.eps)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum, eps=cfg.eps)
    raise ValueError(f"unknown optimizer {cfg.name}")  # the schema allows no other name


def warmup_steps(cfg, total_steps: int, steps_per_epoch: int) -> int:
    if cfg.warmup_steps is not None:
        return cfg.warmup_steps
    if cfg.warmup_epochs:
        return int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.name == "onecycle":
        return int(round(cfg.pct_start * total_steps))
    return 0


def lr_factor(cfg, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Multiplier of the base learning rate for optimiser step `step` (0-based)."""
    warmup = warmup_steps(cfg, total_steps, steps_per_epoch)
    start = 1.0 / cfg.div_factor if cfg.name == "onecycle" else cfg.warmup_start_factor
    if step < warmup:
        return start + (1.0 - start) * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    epoch = step // max(1, steps_per_epoch)
    if cfg.name == "cosine":
        return cfg.min_lr_factor + (1.0 - cfg.min_lr_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.name == "linear":
        return 1.0 - (1.0 - cfg.min_lr_factor) * progress
    if cfg.name == "step":
        return cfg.gamma ** (epoch // cfg.step_size)
    if cfg.name == "exponential":
        return cfg.gamma**epoch
    if cfg.name == "onecycle":
        low = start / cfg.final_div_factor
        return low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0  # constant, and plateau (which lowers the lr itself once warm-up is over)


class Schedule:
    """The learning-rate schedule, stepped per optimiser step and per epoch as each kind requires.

    `every`: the optimizer steps once every `every` steps of the run (a GAN's G with d_steps), so its n-th step
    takes the run's learning rate at step n x every: both networks follow the schedule over the same run."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg, total_steps: int, steps_per_epoch: int, mode: str,
                 every: int = 1):
        self.cfg = cfg
        self.every = every
        self.warmup = warmup_steps(cfg, total_steps, steps_per_epoch)
        self.steps = 0
        self.per_step = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(cfg, step * every, total_steps, steps_per_epoch))
        self.plateau = (torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=cfg.factor,
                                                                    patience=cfg.patience)
                        if cfg.name == "plateau" else None)

    def step_batch(self) -> None:
        self.steps += 1
        if self.plateau is None or self.steps * self.every <= self.warmup:  # plateau: LambdaLR only ramps the warm-up
            self.per_step.step()

    def step_epoch(self, metric: float | None) -> None:
        if self.plateau is not None and self.steps * self.every >= self.warmup and metric is not None:
            self.plateau.step(metric)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "per_step": self.per_step.state_dict(),
                "plateau": self.plateau.state_dict() if self.plateau is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = state["steps"]
        self.per_step.load_state_dict(state["per_step"])
        if self.plateau is not None and state.get("plateau"):
            self.plateau.load_state_dict(state["plateau"])


def create_schedule(optimizer: torch.optim.Optimizer, cfg, total_steps: int, steps_per_epoch: int,
                    mode: str = "min", every: int = 1) -> Schedule:
    return Schedule(optimizer, cfg, total_steps, steps_per_epoch, mode, every)


def optimizer_and_schedule(network: torch.nn.Module, ctx: Any, section: Any = None, every: int = 1) -> tuple[Any, Any]:
    """The recipe's optimiser (or `section`, an optimizer section of its own) over `network`, and its schedule
    over the run's steps (`every`: the network steps once every that many of them); `ctx` is the task's Context."""
    cfg = ctx.recipe.train
    optimizer = create_optimizer(network, section or cfg.optimizer)
    return optimizer, create_schedule(optimizer, cfg.scheduler, ctx.total_steps, ctx.steps_per_epoch,
                                      ctx.monitor_mode, every)
