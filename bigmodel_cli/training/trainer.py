"""`bigmodel train`: the training loop, validation every epoch, best/last checkpoints, exact resume.

    bigmodel train -r digits-cnn                       # -> runs/digits-cnn
    bigmodel train -r digits-cnn --resume              # continue from checkpoints/last.pt

The prepared arrays are held as tensors and batched by index (no DataLoader, no worker
processes), the data order of each epoch comes from its own seeded generator, and the
checkpoint records every RNG state and the position inside the epoch, so a resumed run
continues exactly where the interrupted one stopped: on CPU its final weights are bit-for-bit
those of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bigmodel_cli import __version__, atomic, console, devices
from bigmodel_cli.config.recipe import dump
from bigmodel_cli.console import fmt
from bigmodel_cli.data import manifest as manifests
from bigmodel_cli.data.transform import augmentation, normalizer
from bigmodel_cli.errors import Interrupted, JobFailed, UsageError
from bigmodel_cli.evaluation import metrics as M
from bigmodel_cli.evaluation.predict import predict, softmax
from bigmodel_cli.models.registry import build_from_recipe, freeze, frozen_norm_layers, load_pretrained
from bigmodel_cli.training import checkpoint, distributed
from bigmodel_cli.training.losses import TaskLoss, class_weights, l1_penalty, resolve_loss
from bigmodel_cli.training.optim import create_optimizer, create_schedule
from bigmodel_cli.training.progress import plot_curves, progress
from bigmodel_cli.training.runtime import StopFlag, TensorBoard, ToDtype, rng_state, set_rng_state

VAL_METRICS = {"classification": ("accuracy", "f1", "roc_auc"), "regression": ("mse", "mae", "r2")}


@dataclass
class Arrays:
    """The train and validation arrays a run learns from (the prepared splits, or a cross-validation fold)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def load_arrays(prepared_dir: str | Path) -> Arrays:
    x_train, y_train = manifests.load_split(prepared_dir, "train")
    x_val, y_val = manifests.load_split(prepared_dir, "val")
    return Arrays(np.array(x_train), np.array(y_train), np.array(x_val), np.array(y_val))  # in memory, writable


def model_meta(recipe, manifest: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint must agree on with the model that loads it."""
    return {
        "recipe": recipe.name,
        "task": recipe.task,
        "model": recipe.model.name or recipe.model.component,
        "model_args": recipe.model.args,
        "loss": resolve_loss(recipe.train, recipe.task, manifest["classes"]),
        "num_classes": manifests.num_outputs(manifest),
        "input_shape": manifests.input_shape(manifest),
        "classes": manifest["classes"],
    }


def build_network(recipe, manifest: dict[str, Any]) -> nn.Module:
    """The recipe's network for this data (a one-logit head when a binary task trains with BCE)."""
    one_logit = resolve_loss(recipe.train, recipe.task, manifest["classes"]) == "bce"
    return build_from_recipe(recipe.model, manifest, one_logit=one_logit)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The sample order of one epoch: a function of (seed, epoch) only, so resume can replay it."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen)


def _autocast(device: torch.device, precision: str):
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def validation_metrics(recipe, manifest, outputs: np.ndarray, y: np.ndarray, loss: float) -> dict[str, Any]:
    row: dict[str, Any] = {"val_loss": loss}
    if recipe.task == "classification":
        values, _, _ = M.classification(y, softmax(outputs), manifest["classes"])
    else:
        values = M.regression(y, outputs[:, 0])
    for name in VAL_METRICS[recipe.task]:
        if name in values:
            row[f"val_{name}"] = values[name]
    return row


def _check_monitor(recipe) -> tuple[str, str]:
    cfg = recipe.train.early_stopping
    names = ["train_loss", "val_loss"] + [f"val_{m}" for m in VAL_METRICS[recipe.task]]
    if cfg.monitor not in names:
        near = difflib.get_close_matches(cfg.monitor, names, n=1)
        hint = f"; did you mean '{near[0]}'?" if near else f"; logged: {', '.join(names)}"
        raise UsageError(f"train.early_stopping.monitor '{cfg.monitor}' is not a logged metric{hint}")
    mode = cfg.mode if cfg.mode != "auto" else ("min" if M.lower_is_better(cfg.monitor) else "max")
    return cfg.monitor, mode


def _compile(net: nn.Module, enabled: bool) -> nn.Module:
    if not enabled:
        return net
    try:
        compiled = torch.compile(net)
        return compiled
    except Exception as e:  # no compiler backend for this platform
        console.warn(f"train.compile: torch.compile is unavailable ({str(e).splitlines()[0][:200]}); "
                     "training without it")
        return net


def fit(recipe, run_dir: str | Path, resume: bool = False, recipe_ref: str | None = None,
        arrays: Arrays | None = None, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train the recipe's model on its prepared data (or on `arrays`); returns the run summary."""
    run_dir = Path(run_dir)
    cfg = recipe.train
    manifest = manifest or manifests.read(recipe.prepared_dir, recipe_ref or recipe.name)
    if manifest["task"] != recipe.task:
        raise UsageError(f"task '{recipe.task}' does not match the prepared data ({manifest['task']}); "
                         f"rerun prepare-data or fix 'task'")
    device = devices.resolve(cfg.devices)
    if cfg.processes > 1 and not distributed.launched():
        raise UsageError(f"train.devices {cfg.devices}: several processes are started by `bigmodel train` "
                         "(torch.distributed.run) or torchrun, not from inside one process")
    dist = distributed.from_env(device.type) if distributed.launched() else distributed.Dist()
    try:
        return _fit(recipe, run_dir, resume, recipe_ref, arrays, manifest, device, dist)
    finally:
        distributed.shutdown(dist)


def _fit(recipe, run_dir: Path, resume: bool, recipe_ref: str | None, arrays: Arrays | None,
         manifest: dict[str, Any], device: torch.device, dist: distributed.Dist) -> dict[str, Any]:
    cfg = recipe.train
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    if not dist.is_main:
        console.quiet(True)
    if cfg.precision == "16-mixed" and device.type != "cuda":
        raise UsageError("train.precision 16-mixed needs a CUDA GPU; on CPU use bf16-mixed or 32")
    monitor, mode = _check_monitor(recipe)
    loss_name = resolve_loss(cfg, recipe.task, manifest["classes"])
    data = arrays or load_arrays(recipe.prepared_dir)
    n = len(data.x_train)
    if cfg.batch_size > n:
        raise UsageError(f"train.batch_size {cfg.batch_size} is larger than the {n} training rows; "
                         f"lower it (--set train.batch_size={max(1, n // 4)})")

    seed_everything(recipe.seed, cfg.deterministic)
    net = build_network(recipe, manifest)
    if recipe.model.weights:
        loaded = load_pretrained(net, recipe.model.weights)
        skipped = f", skipped {', '.join(loaded['skipped_shape'])} (shape)" if loaded["skipped_shape"] else ""
        console.info(f"loaded {loaded['loaded']} tensors from {recipe.model.weights}{skipped}")
    frozen = freeze(net, recipe.model.freeze) if recipe.model.freeze else 0
    frozen_norms = frozen_norm_layers(net) if frozen else []  # their running statistics stay as loaded
    meta = model_meta(recipe, manifest)
    norm = normalizer(manifest).to(device)
    augment = augmentation(manifest)  # declared by prepare-data, applied on the fly to training batches only
    net.to(device)
    if cfg.precision == "bf16-true":  # weights and activations in bf16, no autocast
        net.to(torch.bfloat16)
        norm = nn.Sequential(norm, ToDtype(torch.bfloat16))
    model = net
    sharded = dist.enabled and cfg.strategy == "fsdp"
    if sharded:
        distributed.shard(net, cfg.precision, cfg.activation_checkpointing)
    elif dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    elif cfg.strategy == "fsdp":
        console.warn("train.strategy fsdp shards a model over several processes; with one it trains unsharded")
    if dist.enabled:
        torch.manual_seed(recipe.seed + dist.rank)  # same initial weights, own dropout/augmentation stream per rank
    forward = _compile(model, cfg.compile)

    x_train, y_train = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    if device.type == "cuda" and x_train.nbytes < 2**30:  # small data: keep it on the GPU
        x_train, y_train = x_train.to(device), y_train.to(device)
    global_batch = cfg.batch_size * dist.world
    batches_per_epoch = math.ceil(n / global_batch)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.accumulate)

    optimizer = create_optimizer(net, cfg.optimizer)
    schedule = create_schedule(optimizer, cfg.scheduler, steps_per_epoch * cfg.epochs, steps_per_epoch, mode)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "16-mixed")
    n_classes = len(manifest["classes"]) if manifest["classes"] else 1
    loss_fn = TaskLoss(loss_name, cfg, class_weights(cfg, data.y_train, n_classes) if recipe.task ==
                       "classification" else None).to(device)

    ckpt_dir = run_dir / "checkpoints"
    state: dict[str, Any] = {"epoch": 0, "batch": 0, "step": 0, "best": None, "best_epoch": None,
                             "bad_epochs": 0, "history": [], "stopped_early": False,
                             "loss_sum": 0.0, "loss_rows": 0}  # the running train loss of the current epoch
    if resume:
        last = checkpoint.find(run_dir, "last")
        if last is None:
            raise UsageError(f"--resume: no checkpoint at {ckpt_dir / 'last.pt'}; train without --resume first")
        if last.is_dir():  # sharded (FSDP): torch.distributed.checkpoint reshards onto this many processes
            saved = checkpoint.load_extra(last, meta)
            checkpoint.load_sharded_into(net, optimizer, last)
        elif sharded:
            raise UsageError(f"--resume: {last} was saved by one process or DDP; resume it with train.strategy ddp, "
                             "or start a new FSDP run from it with model.weights")
        else:
            saved = checkpoint.load(last, expect=meta)
            checkpoint.load_weights(net, saved, last)
            optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["scheduler"])
        if saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        state.update(saved["loop"])
        saved_batch = state.pop("global_batch", global_batch)
        if saved_batch != global_batch:  # another number of processes: the same position in samples
            done = state["batch"] * saved_batch
            state["batch"] = done // global_batch
            if done % global_batch:
                console.warn(f"resuming at sample {done} of the epoch with global batch {global_batch}: "
                             f"{done % global_batch} samples are seen again")
        ranks = saved.get("rng_ranks") or [saved["rng"]]
        if len(ranks) == dist.world:
            set_rng_state(ranks[dist.rank])
        else:
            console.warn(f"resuming {len(ranks)}-process checkpoint on {dist.world} process(es): the data order "
                         "continues exactly, the random streams (dropout, augmentation) are re-seeded")
            torch.manual_seed(recipe.seed + 7919 * state["step"] + dist.rank)
        console.info(f"resuming from {last}: epoch {state['epoch'] + 1}, batch {state['batch']}, "
                     f"step {state['step']}")
        if state["stopped_early"] or state["epoch"] >= cfg.epochs:
            console.info("the run had already finished; nothing to do")

    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in [*run_dir.glob(".*.tmp"), *ckpt_dir.glob(".*.tmp")]:  # left by a process killed mid-write
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        atomic.write_text(run_dir / "recipe.yaml", dump(recipe))
    tensorboard = TensorBoard(cfg.tensorboard and dist.is_main, run_dir)

    def save(path: Path) -> None:
        """Every rank calls it (RNG states are gathered); rank 0 writes, FSDP ranks each write their shard."""
        rng = dist.gather_objects(rng_state())
        extra = {"format": checkpoint.FORMAT, "bigmodel_version": __version__, "meta": meta,
                 "scheduler": schedule.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                 "loop": {**state, "global_batch": global_batch}, "rng": rng[0],
                 "rng_ranks": rng if dist.enabled else None}
        if sharded:
            checkpoint.save_sharded(net, optimizer, extra, path.with_suffix(""), dist)
        elif dist.is_main:
            checkpoint.save_atomic(path, {**extra, "model": net.state_dict(), "optimizer": optimizer.state_dict()})
            if path.with_suffix("").is_dir():  # an older sharded checkpoint of the same name
                shutil.rmtree(path.with_suffix(""), ignore_errors=True)

    def stop_all(error: Exception) -> None:
        """Every rank raises together, after rank 0 has finished writing (the launcher ends the others)."""
        dist.barrier()
        raise error

    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    procs = f" x {dist.world} processes ({'fsdp' if sharded else 'ddp'})" if dist.enabled else ""
    frozen_note = f", {frozen:,} frozen" if frozen else ""
    console.info(f"training {meta['model']} ({trainable:,} trainable parameters{frozen_note}, loss {loss_name})"
                 f" on {device}: {n} rows, batch {cfg.batch_size}{procs} x accumulate "
                 f"{cfg.accumulate} = {global_batch * cfg.accumulate} effective, {cfg.epochs} epochs, "
                 f"precision {cfg.precision} -> {run_dir}")
    started = time.perf_counter()
    samples_seen = 0
    ddp = model is not net
    try:
        with StopFlag() as stop, progress(cfg.epochs, batches_per_epoch) as bar:
            while state["epoch"] < cfg.epochs and not state["stopped_early"]:
                epoch = state["epoch"]
                order = epoch_order(recipe.seed, epoch, n).to(x_train.device)
                net.train()
                for layer in frozen_norms:
                    layer.eval()
                epoch_start, rows_at_start = time.perf_counter(), state["loss_rows"]
                bar.start_epoch(epoch, state["batch"])
                for b in range(state["batch"], batches_per_epoch):
                    # every rank takes its share of the same global batch: N x batch_size == 1 x (N * batch_size)
                    chunk = order[b * global_batch : (b + 1) * global_batch]
                    idx = torch.tensor_split(chunk, dist.world)[dist.rank] if dist.enabled else chunk
                    boundary = (b + 1) % cfg.accumulate == 0 or b + 1 == batches_per_epoch
                    with model.no_sync() if ddp and not boundary else contextlib.nullcontext():
                        if len(idx):
                            raw = x_train.index_select(0, idx)  # 25x faster than x_train[idx] for image batches
                            raw = raw if augment is None else augment(raw)
                            xb = norm(raw.to(device, non_blocking=True))
                            yb = y_train.index_select(0, idx).to(device, non_blocking=True)
                            with _autocast(device, cfg.precision):
                                loss = loss_fn(forward(xb), yb)
                            if cfg.l1:
                                loss = loss + cfg.l1 * l1_penalty(net)
                        else:  # a last global batch smaller than the number of ranks: take part with no rows
                            loss = sum((p * 0.0).sum() for p in net.parameters() if p.requires_grad)
                        loss_value = loss.item()
                        bad, stopping, loss_sum, rows = dist.sum(
                            float(not math.isfinite(loss_value)), float(bool(stop.requested)),
                            loss_value * len(idx) if len(idx) else 0.0, float(len(idx)))
                        if bad:
                            stop_all(JobFailed(
                                f"training diverged: loss is {loss_value if not math.isfinite(loss_value) else 'nan'} "
                                f"at step {state['step'] + 1} (epoch {epoch + 1}, batch {b + 1}); lower "
                                "train.optimizer.lr or set train.clip_grad_norm"))
                        # the mean over the global batch, whatever each rank's share of it
                        weight = (len(idx) * dist.world / len(chunk) if dist.enabled else 1.0) / cfg.accumulate
                        scaler.scale(loss * weight if weight != 1.0 else loss).backward()
                    state["loss_sum"] += loss_sum
                    state["loss_rows"] += int(rows)
                    samples_seen += int(rows)
                    stop.requested = stop.requested or ("SIGTERM" if stopping else None)
                    if boundary:
                        if cfg.clip_grad_norm:
                            scaler.unscale_(optimizer)
                            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.clip_grad_norm)
                        scaler.step(optimizer)
                        scaler.update()
                        optimizer.zero_grad(set_to_none=True)
                        schedule.step_batch()
                        state["step"] += 1
                        state["batch"] = b + 1
                        if cfg.checkpoint_every_steps and state["step"] % cfg.checkpoint_every_steps == 0:
                            save(ckpt_dir / "last.pt")
                        if stop.requested:
                            save(ckpt_dir / "last.pt")
                            stop_all(Interrupted(f"{stop.requested}: saved {ckpt_dir / 'last.pt'} at step "
                                                 f"{state['step']}; continue with --resume"))
                    elapsed = time.perf_counter() - epoch_start
                    seen = state["loss_rows"] - rows_at_start
                    bar.advance(loss_value, optimizer.param_groups[0]["lr"], seen / elapsed if elapsed else 0.0)

                train_time, seen = time.perf_counter() - epoch_start, state["loss_rows"] - rows_at_start
                outputs = _validate(net, norm, data.x_val, device, dist)
                val_loss = float(loss_fn(torch.from_numpy(outputs).to(device),
                                         torch.from_numpy(data.y_val).to(device)).item()) if len(outputs) else None
                row = {"epoch": epoch + 1, "step": state["step"],
                       "train_loss": state["loss_sum"] / max(1, state["loss_rows"])}
                row.update(validation_metrics(recipe, manifest, outputs, data.y_val, val_loss) if len(outputs)
                           else {"val_loss": None})
                row.update({"lr": optimizer.param_groups[0]["lr"],
                            "samples_per_s": seen / train_time if train_time > 0 and seen else None,
                            "time_s": time.perf_counter() - epoch_start})
                state["history"].append(row)
                state.update(epoch=epoch + 1, batch=0, loss_sum=0.0, loss_rows=0)
                schedule.step_epoch(row.get(monitor))

                improved = _update_best(state, row.get(monitor), mode, cfg.early_stopping.min_delta, epoch + 1)
                patience = cfg.early_stopping.patience
                if patience is not None and state["bad_epochs"] >= patience:
                    state["stopped_early"] = True
                if dist.is_main:
                    atomic.write_text(run_dir / "metrics.jsonl",
                                      "".join(json.dumps(r) + "\n" for r in state["history"]))
                tensorboard.log(row)
                if improved:
                    save(ckpt_dir / "best.pt")
                save(ckpt_dir / "last.pt")
                bar.end_epoch(row, improved)
                if dist.sum(float(bool(stop.requested)))[0]:
                    stop_all(Interrupted(f"{stop.requested or 'SIGTERM'}: saved {ckpt_dir / 'last.pt'} after epoch "
                                         f"{epoch + 1}; continue with --resume"))
            if state["stopped_early"]:
                console.info(f"early stopping: {monitor} did not improve for {cfg.early_stopping.patience} epochs")
    finally:
        tensorboard.close()
        if state["history"] and dist.is_main:
            plot_curves(state["history"], monitor, run_dir / "curves.png")

    if checkpoint.find(run_dir, "best") is None:  # the monitor was never defined (e.g. AUC with one class)
        save(ckpt_dir / "best.pt")
    dist.barrier()
    wall = time.perf_counter() - started
    summary = {
        "run_dir": str(run_dir),
        "epochs_run": state["epoch"],
        "steps": state["step"],
        "monitor": monitor,
        "best_epoch": state["best_epoch"],
        "best_value": state["best"],
        "stopped_early": state["stopped_early"],
        "best_metrics": state["history"][state["best_epoch"] - 1] if state["best_epoch"] else None,
        "last_metrics": state["history"][-1] if state["history"] else None,
        "effective_batch_size": global_batch * cfg.accumulate,
        "processes": dist.world,
        "wall_time_s": wall,
        "samples_per_s": samples_seen / wall if wall > 0 and samples_seen else None,
        "checkpoints": {"best": str(ckpt_dir / "best.pt"), "last": str(ckpt_dir / "last.pt")},
        "device": str(device),
    }
    console.info(f"done in {wall:.1f} s: best {monitor} {fmt(state['best'])} at epoch {state['best_epoch']}; "
                 f"checkpoints in {ckpt_dir}")
    return summary


def _validate(net: nn.Module, norm: nn.Module, x_val: np.ndarray, device: torch.device,
              dist: distributed.Dist) -> np.ndarray:
    """Outputs for every validation row exactly once: rank r predicts rows r::world, then all are gathered."""
    if not dist.enabled:
        return predict(net, norm, x_val, device)
    mine = np.arange(dist.rank, len(x_val), dist.world)
    share = -(-len(x_val) // dist.world)  # equal work on every rank (sharded models need every rank's forward)
    padded = np.concatenate([mine, np.zeros(share - len(mine), dtype=mine.dtype)])
    outputs = predict(net, norm, x_val[padded], device)[: len(mine)]
    return dist.gather_rows(outputs, len(x_val))


def _update_best(state: dict[str, Any], value: float | None, mode: str, min_delta: float, epoch: int) -> bool:
    improved = value is not None and (state["best"] is None or (
        value < state["best"] - min_delta if mode == "min" else value > state["best"] + min_delta))
    if improved:
        state["best"], state["best_epoch"], state["bad_epochs"] = value, epoch, 0
    else:
        state["bad_epochs"] += 1
    return improved
