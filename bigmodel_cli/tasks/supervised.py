"""Classification and regression: one network, one optimizer, the recipe's loss on labelled rows.

    bigmodel train -r digits-cnn              # task: classification
    bigmodel train -r diabetes-regression     # task: regression
    bigmodel train -r wine-mlp --teacher runs/big   # distilled from a trained run (training/distill.py)

Validation predicts every validation row exactly once (rank r takes rows r::world, outputs are
gathered) and scores them with scikit-learn: val_loss and val_accuracy/f1/roc_auc, or
val_mse/mae/r2. With `train.distill.teacher`, a frozen teacher (`parts.frozen`) sees the student's
batches and the loss mixes the task's loss with the distillation term; train_task_loss and
train_distill_loss are logged beside train_loss.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bigmodel_cli import console
from bigmodel_cli.data.transform import normalizer
from bigmodel_cli.evaluation import metrics as M
from bigmodel_cli.models.build import build_network, freeze, frozen_norm_layers, load_pretrained, resolve_loss
from bigmodel_cli.tasks.base import Batch, Context, Parts, Split, Step
from bigmodel_cli.training.losses import TaskLoss, class_weights, l1_penalty
from bigmodel_cli.training.optim import optimizer_and_schedule

VAL_METRICS = {"classification": ("accuracy", "f1", "roc_auc"), "regression": ("mse", "mae", "r2")}
VAL_BATCH = 1024


class Supervised:
    """One network trained on (x, y) with the task's loss; `name` is classification or regression."""

    inference_network = "model"

    def __init__(self, name: str):
        self.name = name

    def check(self, recipe, data: dict[str, Any]) -> None:
        resolve_loss(recipe.train, recipe.task, data["classes"])
        if recipe.train.distill.teacher:
            from bigmodel_cli.training import distill

            distill.check(recipe, data)

    def metrics(self, recipe, data: dict[str, Any]) -> list[str]:
        return ["val_loss"] + [f"val_{m}" for m in VAL_METRICS[self.name]]

    def terms(self, recipe) -> list[str]:
        return ["loss", "task_loss", "distill_loss"] if recipe.train.distill.teacher else ["loss"]

    def build(self, ctx: Context) -> Parts:
        recipe, cfg = ctx.recipe, ctx.recipe.train
        net = build_network(recipe, ctx.data)
        notes = []
        if recipe.model.weights:
            loaded = load_pretrained(net, recipe.model.weights)
            skipped = f", skipped {', '.join(loaded['skipped_shape'])} (shape)" if loaded["skipped_shape"] else ""
            console.info(f"loaded {loaded['loaded']} tensors from {recipe.model.weights}{skipped}")
        frozen = freeze(net, recipe.model.freeze) if recipe.model.freeze else 0
        if frozen:
            notes.append(f"{frozen:,} frozen")
        n_classes = len(ctx.data["classes"]) if ctx.data["classes"] else 1
        weights = class_weights(cfg, ctx.train.labels, n_classes) if self.name == "classification" else None
        loss = TaskLoss(resolve_loss(cfg, recipe.task, ctx.data["classes"]), cfg, weights)
        notes.append(f"loss {loss.name}")
        parts = Parts(networks={"model": net}, inputs=normalizer(ctx.data), losses={"task": loss},
                      eval_modes=frozen_norm_layers(net) if frozen else [], notes=notes)
        if cfg.distill.teacher:  # a frozen teacher: never wrapped by DDP/FSDP, fed the student's batches
            from bigmodel_cli.training import distill

            parts.frozen["teacher"], teacher_notes = distill.load_teacher(ctx, predict_split)
            parts.losses["distill"] = distill.DistillLoss(cfg.distill.temperature)
            notes += teacher_notes
        return parts

    def optimizers(self, ctx: Context, parts: Parts) -> dict[str, tuple[torch.optim.Optimizer, Any]]:
        return {"model": optimizer_and_schedule(parts.networks["model"], ctx)}

    def training_step(self, parts: Parts, batch: Batch, step: Step) -> None:
        teacher = parts.frozen.get("teacher")
        with step.autocast():
            out = parts.modules["model"](parts.inputs(batch.x))
            loss = parts.losses["task"](out, batch.y)
            if teacher is not None:  # (1-w)·task + w·T²·KL(teacher_T || student_T) on the same augmented batch
                w = step.recipe.train.distill.weight
                task_loss, distill_loss = loss, parts.losses["distill"](out, teacher(batch.x))
                loss = (1 - w) * task_loss + w * distill_loss
        l1 = step.recipe.train.l1
        if l1:
            loss = loss + l1 * l1_penalty(parts.networks["model"])
        step.backward(loss, "model")
        if teacher is not None:
            step.log(loss=loss, task_loss=task_loss, distill_loss=distill_loss)
        else:
            step.log(loss=loss)
        step.step_optimizer("model")

    def validate(self, parts: Parts, val: Split, ctx: Context) -> dict[str, float | None]:
        outputs = predict_split(parts.networks["model"], parts.inputs, val, ctx.device, ctx.dist)
        if not len(outputs):
            return {"val_loss": None}
        y = val.labels
        loss_fn = parts.losses["task"]
        val_loss = float(loss_fn(torch.from_numpy(outputs).to(ctx.device), torch.from_numpy(y).to(ctx.device)))
        row: dict[str, float | None] = {"val_loss": val_loss}
        if self.name == "classification":
            proba = torch.softmax(torch.from_numpy(outputs), dim=1).numpy()
            values, _, _ = M.classification(y, proba, ctx.data["classes"])
        else:
            values = M.regression(y, outputs[:, 0])
        for name in VAL_METRICS[self.name]:
            if name in values:
                row[f"val_{name}"] = values[name]
        return row


@torch.inference_mode()
def predict_split(net: torch.nn.Module, inputs: torch.nn.Module, split: Split, device: torch.device, dist,
                  batch_size: int = VAL_BATCH) -> np.ndarray:
    """Raw outputs for every row of `split` exactly once, in order.

    Several processes: rank r predicts positions r::world (every rank runs the same number of
    forward passes: sharded models need every rank's collectives), then the rows are gathered.
    Rows are read from the memory-mapped arrays one batch at a time.
    """
    n = len(split)
    mine = np.arange(dist.rank, n, dist.world) if dist.enabled else np.arange(n)
    share = -(-n // dist.world) if dist.enabled else n
    was_training = net.training
    net.eval()
    outputs = []
    try:
        for start in range(0, max(share, 1) if dist.enabled else share, batch_size):
            positions = mine[start:start + batch_size]
            padded = positions if len(positions) else np.zeros(1, dtype=np.int64)  # a forward on every rank
            x, _ = split.take(padded)
            out = net(inputs(torch.from_numpy(x).to(device, non_blocking=True))).float().cpu()
            outputs.append(out[: len(positions)])
    finally:
        net.train(was_training)
    local = torch.cat(outputs).numpy() if outputs else np.zeros((0, 0), dtype=np.float32)
    return dist.gather_rows(local, n) if dist.enabled else local
