"""The task interface: what one kind of job builds, what one training step does, what validation returns.

The training loop (`training/loop.py`) is written once; a task is the small surface that differs:

    class Classification:
        name = "classification"
        def metrics(self, recipe, data): ...            # the val_ metrics it logs (early stopping picks one)
        def build(self, ctx) -> Parts: ...               # networks, loss modules, input transform, EMA, teacher
        def optimizers(self, ctx, parts) -> dict: ...    # one (optimizer, schedule) per trained network, by name
        def training_step(self, parts, batch, step): ...   # forward, step.backward(loss, "model"), step.step("model")
        def validate(self, parts, val, ctx) -> dict: ...    # val_loss, val_accuracy...

A GAN builds `generator` and `discriminator` with an optimizer each and an EMA copy of the
generator, and its `training_step` updates D `d_steps` times for every G update; a
distillation task adds a frozen `teacher` in `parts.frozen`. The loop takes care of everything
else for every task alike: devices and precision, DDP/FSDP wrapping, gradient accumulation,
clipping and scaling (inside `step.backward` / `step.step`), checkpoints with every network,
optimizer, schedule, EMA and RNG state, exact resume, early stopping, metrics.jsonl and curves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn


@dataclass
class Split:
    """Rows of a prepared split, memory-mapped; `index` picks a subset (a cross-validation fold)."""

    x: np.ndarray
    y: np.ndarray
    index: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.index) if self.index is not None else len(self.x)

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """Positions in this split -> row numbers in the arrays."""
        return self.index[positions] if self.index is not None else positions

    def take(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rows at these positions, gathered into memory (a copy, whatever the arrays are)."""
        rows = self.rows(np.asarray(positions, dtype=np.int64))
        return np.asarray(self.x[rows]), np.asarray(self.y[rows])

    @property
    def labels(self) -> np.ndarray:
        return np.array(self.y if self.index is None else self.y[self.index])  # a writable copy


@dataclass
class Context:
    """What a task is built with."""

    recipe: Any  # schema.Recipe
    data: dict[str, Any]  # the run's data description (manifest with fingerprint)
    device: torch.device
    dist: Any  # training.distributed.Dist
    train: Split
    steps_per_epoch: int
    total_steps: int
    monitor_mode: str  # "min" | "max": the direction of the early-stopping monitor
    run_dir: Path | None = None  # where the run writes (a generator's samples/epoch_NNN.png)
    epoch: int = 0  # the epoch being validated (1-based), set by the loop before `validate`


@dataclass
class Parts:
    """What a task trains with. The loop wraps `networks` for DDP/FSDP into `modules` (call those in the step)."""

    networks: dict[str, nn.Module]  # trained networks, saved in checkpoints under these names
    inputs: nn.Module  # raw batch -> network input (the fitted normalisation)
    losses: dict[str, nn.Module] = field(default_factory=dict)  # loss modules, moved to the device
    frozen: dict[str, nn.Module] = field(default_factory=dict)  # auxiliary networks (a teacher): eval, not saved
    averaged: dict[str, nn.Module] = field(default_factory=dict)  # EMA copies (AveragedModel), saved
    eval_modes: list[nn.Module] = field(default_factory=list)  # layers that stay in eval mode while training
    modules: dict[str, Any] = field(default_factory=dict)  # set by the loop: the wrapped forward of each network
    notes: list[str] = field(default_factory=list)  # a line each for the start-of-training summary


@dataclass
class Batch:
    """One process's share of one micro-batch, on the device."""

    x: torch.Tensor  # raw inputs as stored (uint8 pixels, float features, int token ids), augmented
    y: torch.Tensor
    rows: int  # real rows in it (0: this rank's share is empty; `x` then holds 1 row and `weight` is 0)
    weight: float  # loss multiplier: accumulation and this rank's share of the global batch


class Step(Protocol):
    """What a training step is given by the loop (see `training.loop.StepContext`)."""

    device: torch.device
    step: int  # optimizer steps done so far
    boundary: bool  # this micro-batch ends an optimizer step

    def autocast(self) -> Any: ...
    def backward(self, loss: torch.Tensor, network: str) -> None: ...
    def step_optimizer(self, network: str) -> None: ...
    def frozen(self, network: str) -> Any: ...  # context: no gradients for `network` (forward and backward)
    def penalty(self, network: str) -> Any: ...  # context: forward + create_graph gradient of a penalty
    def update_average(self, network: str) -> None: ...  # its EMA copy in `Parts.averaged`
    def log(self, **terms: torch.Tensor) -> None: ...


class Task(Protocol):
    name: str
    inference_network: str  # the network eval/export/serve use ("model")

    def check(self, recipe, data: dict[str, Any]) -> None:
        """Exit 2 for recipe options this task cannot use (before anything is built)."""

    def metrics(self, recipe, data: dict[str, Any]) -> list[str]:
        """The metric names validation returns (val_loss, val_accuracy...); early stopping may monitor any."""

    def terms(self, recipe) -> list[str]:
        """The loss terms the step logs (`loss`; a GAN: `d_loss`, `g_loss`), written as train_<term>."""

    def build(self, ctx: Context) -> Parts: ...

    def optimizers(self, ctx: Context, parts: Parts) -> dict[str, tuple[torch.optim.Optimizer, Any]]:
        """(optimizer, schedule) per trained network name, made after the loop has wrapped/sharded them."""

    def training_step(self, parts: Parts, batch: Batch, step: Step) -> None: ...

    def validate(self, parts: Parts, val: Split, ctx: Context) -> dict[str, float | None]: ...
