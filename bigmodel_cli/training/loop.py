"""`bigmodel train`: the training loop, written once for every task.

    bigmodel train -r digits-cnn                       # -> runs/digits-cnn
    bigmodel train -r digits-cnn --resume              # continue from checkpoints/last.pt

A task (`bigmodel_cli.tasks`) builds the networks and says what one step does and what
validation returns; the loop does the rest alike for every task: setup (data, devices, the
strategy: one device, DDP or FSDP2), micro-batches with accumulation, one host synchronisation
per optimizer step, validation every epoch, early stopping, best/last checkpoints holding every
network, optimizer, schedule, EMA and RNG state, metrics.jsonl, curves and exact resume.

The sample order of each epoch comes from its own seeded generator and the checkpoint records
every RNG state and the position inside the epoch, so a resumed run continues exactly where the
interrupted one stopped: on CPU its final weights are bit-for-bit those of an uninterrupted run.
Every decision that leads into a collective (stop, diverge, save best, resume) is taken from
values all ranks agree on, never from one rank's own files.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bigmodel_cli import __version__, checkpoint, console, devices
from bigmodel_cli.console import fmt
from bigmodel_cli.data import manifest as manifests
from bigmodel_cli.data.loader import Batches, epoch_order
from bigmodel_cli.data.transform import augmentation
from bigmodel_cli.errors import Interrupted, JobFailed, UsageError
from bigmodel_cli.models.build import model_meta
from bigmodel_cli.run import write_run_files
from bigmodel_cli.tasks import get_task
from bigmodel_cli.tasks.base import Batch, Context, Parts, Split
from bigmodel_cli.training import distributed
from bigmodel_cli.training.callbacks import Callbacks
from bigmodel_cli.training.progress import progress
from bigmodel_cli.training.runtime import StopFlag, ToDtype, rng_state, set_rng_state
from bigmodel_cli.training.strategy import Strategy, check_device_support


@dataclass
class TrainData:
    """What a run learns from: the prepared train and validation splits (or a cross-validation fold)."""

    train: Split
    val: Split
    manifest: dict[str, Any]

    def subset(self, train_rows: int | None = None, val_rows: int | None = None) -> TrainData:
        """The first rows of each split (quick runs in tests and benchmarks), still memory-mapped."""
        def head(split: Split, rows: int | None) -> Split:
            return split if rows is None else Split(split.x, split.y, split.rows(np.arange(min(rows, len(split)))))

        return TrainData(head(self.train, train_rows), head(self.val, val_rows), self.manifest)


def load_data(recipe, recipe_ref: str | None = None) -> TrainData:
    """The recipe's prepared splits, memory-mapped."""
    manifest = manifests.read(recipe.prepared_dir, recipe_ref or recipe.name)
    train = Split(*manifests.load_split(recipe.prepared_dir, "train"))
    val = Split(*manifests.load_split(recipe.prepared_dir, "val"))
    return TrainData(train, val, manifest)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def fit(recipe, run_dir: str | Path, resume: bool = False, recipe_ref: str | None = None,
        data: TrainData | None = None) -> dict[str, Any]:
    """Train the recipe's task on its prepared data (or on `data`); returns the run summary.

    With several processes every rank joins the group first, so that a rank failing at the start (its data
    missing, say) ends the others at once; then the ranks agree on one recipe (`distributed.agree`).
    """
    device = devices.resolve(recipe.train.devices)
    if recipe.train.processes > 1 and not distributed.launched():
        raise UsageError(f"train.devices {recipe.train.devices}: several processes are started by `bigmodel train` "
                         "(torch.distributed.run) or torchrun, not from inside one process")
    dist = distributed.from_env(device.type, recipe.train.dist_timeout_s) if distributed.launched() \
        else distributed.Dist()
    with distributed.together(dist):
        data = data or load_data(recipe, recipe_ref)
        if data.manifest["task"] != recipe.task:
            raise UsageError(f"task '{recipe.task}' does not match the prepared data ({data.manifest['task']}); "
                             f"rerun prepare-data or fix 'task'")
        recipe = distributed.agree(dist, recipe, data.manifest, resume)
        check_device_support(recipe.train, device)
        return Trainer(recipe, Path(run_dir), data, device, dist).run(resume)


class StepContext:
    """What a task's `training_step` is given: autocast, backward and optimizer steps, loss logging."""

    def __init__(self, trainer: Trainer):
        self.recipe = trainer.recipe
        self.device = trainer.device
        self._trainer = trainer
        self.step = 0
        self.boundary = True
        self.weight = 1.0
        self.rows = 0  # real rows of this rank in the current micro-batch
        self.pending_rows = 0  # rows since the last optimizer step
        self.logged: list[tuple[str, torch.Tensor, int]] = []  # (term, value on the device, rows) since then

    def autocast(self):
        precision = self.recipe.train.precision
        if precision == "bf16-mixed":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        if precision == "16-mixed":
            return torch.autocast(self.device.type, dtype=torch.float16)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, network: str) -> None:
        """Backward of `loss` weighted for accumulation and this rank's share of the global batch."""
        scaled = loss * self.weight if self.weight != 1.0 else loss
        self._trainer.scaler.scale(scaled).backward()

    def step_optimizer(self, network: str) -> None:
        """At the end of an optimizer step: unscale, clip, step, zero the gradients, advance the schedule."""
        if not self.boundary:
            return
        t = self._trainer
        optimizer, schedule = t.optimizers[network]
        clip = self.recipe.train.clip_grad_norm
        if clip:
            t.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(t.parts.networks[network].parameters(), clip)
        t.scaler.step(optimizer)
        optimizer.zero_grad(set_to_none=True)
        schedule.step_batch()

    @contextlib.contextmanager
    def frozen(self, network: str):
        """`network`'s weights take no gradient in the forward and backward inside (a GAN's D on a G step). The
        flags are restored after the backward, on the parameters the network holds then: FSDP2 gathers them again
        in the backward, copying the flags of its shards."""
        net = self._trainer.parts.networks[network]
        net.requires_grad_(False)
        try:
            yield
        finally:
            net.requires_grad_(True)

    def penalty(self, network: str):
        """Around the forward of `network` whose output's gradient a penalty takes with create_graph (R1,
        wgan-gp), up to that gradient: `Strategy.gathered_through_penalty`."""
        return self._trainer.strategy.gathered_through_penalty(self._trainer.parts.networks[network])

    def update_average(self, network: str) -> None:
        """Update `network`'s averaged copy (`Parts.averaged`, an EMA) from its current weights."""
        t = self._trainer
        t.parts.averaged[network].update_parameters(t.strategy.whole(t.parts.networks[network]))

    def log(self, **terms: torch.Tensor) -> None:
        """Loss terms (scalars) of this micro-batch: kept on the device, read once per optimizer step."""
        self.logged.extend((name, value.detach(), self.rows) for name, value in terms.items())


class Trainer:
    """One training run: built by `__init__`, resumed or started by `run`."""

    def __init__(self, recipe, run_dir: Path, data: TrainData, device: torch.device, dist: distributed.Dist):
        cfg = recipe.train
        self.recipe, self.run_dir, self.data, self.dist, self.cfg = recipe, run_dir, data, dist, cfg
        self.device = torch.device("cuda", dist.local_rank) if dist.enabled and device.type == "cuda" else device
        if not dist.is_main:
            console.quiet(True)
        self.task = get_task(recipe.task)
        self.task.check(recipe, data.manifest)
        self.monitor, self.mode = self._check_monitor()
        n = len(data.train)
        if cfg.batch_size > n:
            raise UsageError(f"train.batch_size {cfg.batch_size} is larger than the {n} training rows; "
                             f"lower it (--set train.batch_size={max(1, n // 4)})")
        self.global_batch = cfg.batch_size * dist.world
        self.batches_per_epoch = math.ceil(n / self.global_batch)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / cfg.accumulate)
        seed_everything(recipe.seed, cfg.deterministic)
        self.ctx = Context(recipe, data.manifest, self.device, dist, data.train, self.steps_per_epoch,
                           self.steps_per_epoch * cfg.epochs, self.mode, run_dir)
        self.parts: Parts = self.task.build(self.ctx)
        if cfg.precision == "bf16-true":
            self.parts.inputs = torch.nn.Sequential(self.parts.inputs, ToDtype(torch.bfloat16))
        self.strategy = Strategy.create(cfg, dist, self.device)
        self.strategy.wrap(self.parts)
        if dist.enabled:
            torch.manual_seed(recipe.seed + dist.rank)  # same initial weights, own dropout stream per rank
        self.optimizers = self.task.optimizers(self.ctx, self.parts)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "16-mixed")
        self.augment = augmentation(data.manifest)  # declared by prepare-data, applied to training batches only
        self.meta = model_meta(recipe, data.manifest)
        self.terms = self.task.terms(recipe)
        self.state: dict[str, Any] = {"epoch": 0, "batch": 0, "step": 0, "best": None, "best_epoch": None,
                                      "bad_epochs": 0, "history": [], "stopped_early": False,
                                      "sums": {t: 0.0 for t in self.terms}, "counts": {t: 0 for t in self.terms},
                                      "rows": 0}
        self.ckpt_dir = run_dir / "checkpoints"

    # ------------------------------------------------------------------ setup

    def _check_monitor(self) -> tuple[str, str]:
        import difflib

        from bigmodel_cli.evaluation.metrics import lower_is_better

        cfg = self.recipe.train.early_stopping
        names = [f"train_{t}" for t in self.task.terms(self.recipe)] + self.task.metrics(self.recipe,
                                                                                         self.data.manifest)
        if cfg.monitor not in names:
            near = difflib.get_close_matches(cfg.monitor, names, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f"; logged: {', '.join(names)}"
            raise UsageError(f"train.early_stopping.monitor '{cfg.monitor}' is not a logged metric{hint}")
        mode = cfg.mode if cfg.mode != "auto" else ("min" if lower_is_better(cfg.monitor) else "max")
        return cfg.monitor, mode

    def _resume(self) -> None:
        """Continue from last: rank 0 reads the checkpoint and every rank gets the same state.

        Rank 0 finds it and says its name; each rank then looks in its own run directory, which for FSDP
        shards without shared storage is where that node wrote them.
        """
        found = self.dist.broadcast_object(getattr(checkpoint.find(self.run_dir, "last"), "name", "")
                                           if self.dist.is_main else None)
        if not found:
            raise UsageError(f"--resume: no checkpoint at {self.ckpt_dir / 'last.pt'}; train without --resume first")
        last = self.ckpt_dir / found
        if self.strategy.sharded and found.endswith(".pt"):
            raise UsageError(f"--resume: {last} was saved by one process or DDP; resume it with train.strategy ddp, "
                             "or start a new FSDP run from it with model.weights")
        if not found.endswith(".pt"):  # torch.distributed.checkpoint reshards onto this many processes (one included)
            saved = self.dist.broadcast_object(checkpoint.load_extra(last, self.meta) if self.dist.is_main else None)
            checkpoint.load_sharded_into({n: (net, self.optimizers[n][0]) for n, net in self.parts.networks.items()},
                                         last, saved, self.dist)
        else:
            saved = self.dist.broadcast_object(checkpoint.load(last, expect=self.meta) if self.dist.is_main else None)
            for name, net in self.parts.networks.items():
                checkpoint.load_weights(net, saved, last, name)
                self.optimizers[name][0].load_state_dict(saved["optimizers"][name])
        self._restore(saved, last)

    def _restore(self, saved: dict[str, Any], last: Path) -> None:
        for name, (_, schedule) in self.optimizers.items():
            schedule.load_state_dict(saved["schedules"][name])
        for name, averaged in self.parts.averaged.items():
            averaged.load_state_dict(saved["averaged"][name])
        if saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        state = self.state
        state.update(saved["loop"])
        saved_batch = state.pop("global_batch", self.global_batch)
        if saved_batch != self.global_batch:  # another number of processes: the same position in samples
            done = state["batch"] * saved_batch
            state["batch"] = done // self.global_batch
            if done % self.global_batch:
                console.warn(f"resuming at sample {done} of the epoch with global batch {self.global_batch}: "
                             f"{done % self.global_batch} samples are seen again")
        ranks = saved.get("rng_ranks") or [saved["rng"]]
        if len(ranks) == self.dist.world:
            set_rng_state(ranks[self.dist.rank])
        else:
            console.warn(f"resuming {len(ranks)}-process checkpoint on {self.dist.world} process(es): the data order "
                         "continues exactly, the random streams (dropout) are re-seeded")
            torch.manual_seed(self.recipe.seed + 7919 * state["step"] + self.dist.rank)
        console.info(f"resuming from {last}: epoch {state['epoch'] + 1}, batch {state['batch']}, step {state['step']}")
        if state["stopped_early"] or state["epoch"] >= self.cfg.epochs:
            console.info("the run had already finished; nothing to do")

    def _start_files(self) -> None:
        """Rank 0 writes what the run carries; stale temporary files of a killed process are removed."""
        if not self.dist.is_main:
            return
        import shutil

        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in [*self.run_dir.glob(".*.tmp"), *self.ckpt_dir.glob(".*.tmp")]:
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        write_run_files(self.run_dir, self.recipe, self.data.manifest,
                        self.data.train.take(np.arange(min(len(self.data.train), 512))),
                        self.data.val.take(np.arange(min(len(self.data.val), 512))))

    # ------------------------------------------------------------------ the loop

    def run(self, resume: bool) -> dict[str, Any]:
        fresh = self.dist.is_main and not resume and not self.run_dir.exists()
        try:
            return self._run(resume)
        except BaseException:
            if fresh and checkpoint.find(self.run_dir, "last") is None:  # a failed start leaves nothing behind
                import shutil

                shutil.rmtree(self.run_dir, ignore_errors=True)
            raise

    def _run(self, resume: bool) -> dict[str, Any]:
        distributed.check_storage(self.dist, self.run_dir, self.strategy.sharded)
        if resume:
            self._resume()
        # trackers first: a store that cannot be written is exit 2 before anything is written
        self.callbacks = Callbacks(self.recipe, self.run_dir, self.dist.is_main, self.monitor, self.data.manifest,
                                   resume)
        try:
            self._start_files()
            self.dist.barrier()  # rank 0's files are written before anyone trains (io group: not a training timeout)
            self._announce()
            started = time.perf_counter()
            self.samples_seen = 0
            with StopFlag() as stop, progress(self.cfg.epochs, self.batches_per_epoch) as bar:
                while self.state["epoch"] < self.cfg.epochs and not self.state["stopped_early"]:
                    self._train_epoch(stop, bar)
                    self._end_epoch(stop, bar)
                if self.state["stopped_early"]:
                    console.info(f"early stopping: {self.monitor} did not improve for "
                                 f"{self.cfg.early_stopping.patience} epochs")
            if self.state["best_epoch"] is None:  # the monitor was never defined (e.g. AUC with one class)
                self._save("best")
            self.dist.barrier()
            summary = self._summary(time.perf_counter() - started)
        except BaseException as e:
            self.callbacks.close(self.state["history"], error=e)
            raise
        self.callbacks.close(self.state["history"], summary=summary)
        return summary

    def _announce(self) -> None:
        trainable = sum(p.numel() for net in self.parts.networks.values() for p in net.parameters()
                        if p.requires_grad)
        names = "+".join(self.parts.networks) if list(self.parts.networks) != ["model"] else self.meta["model"]
        notes = f", {', '.join(self.parts.notes)}" if self.parts.notes else ""
        console.info(f"training {names} ({trainable:,} trainable parameters{notes}) on {self.device}: "
                     f"{len(self.data.train)} rows, batch {self.cfg.batch_size}"
                     f"{self.strategy.describe(self.dist.world)} x accumulate {self.cfg.accumulate} = "
                     f"{self.global_batch * self.cfg.accumulate} effective, {self.cfg.epochs} epochs, "
                     f"precision {self.cfg.precision} -> {self.run_dir}")

    def _train_mode(self) -> None:
        for net in self.parts.networks.values():
            net.train()
        for layer in self.parts.eval_modes:
            layer.eval()

    def _train_epoch(self, stop: StopFlag, bar) -> None:
        state, cfg = self.state, self.cfg
        epoch = state["epoch"]
        order = epoch_order(self.recipe.seed, epoch, len(self.data.train))
        batches = Batches(self.data.train, order, self.global_batch, self.dist, state["batch"], self.device,
                          self.augment, self.recipe.seed, epoch, self.cfg.loader_workers)
        self._train_mode()
        self.epoch_start, self.rows_at_start = time.perf_counter(), state["rows"]
        bar.start_epoch(epoch, state["batch"])
        step = StepContext(self)
        last_loss = float("nan")
        for b, x, y, rows in batches:
            chunk = min(self.global_batch, len(order) - b * self.global_batch)
            step.boundary = (b + 1) % cfg.accumulate == 0 or b + 1 == self.batches_per_epoch
            step.step, step.rows = state["step"], rows
            step.weight = (rows * self.dist.world / chunk if self.dist.enabled else 1.0) / cfg.accumulate
            with self.strategy.accumulating(self.parts, sync=step.boundary):
                self.task.training_step(self.parts, Batch(x, y, rows, step.weight), step)
            step.pending_rows += rows
            if step.boundary:
                last_loss = self._finish_step(step, stop, b)
            elapsed = time.perf_counter() - self.epoch_start
            seen = state["rows"] - self.rows_at_start
            bar.advance(last_loss, self._lr(), seen / elapsed if elapsed else 0.0)

    def _finish_step(self, step: StepContext, stop: StopFlag, b: int) -> float:
        """Once per optimizer step: the step's losses read from the device (its one wait for the device), then
        summed over ranks with the rows and the stop requests in one small all-reduce."""
        state = self.state
        self.scaler.update()
        logged, step.logged = step.logged, []
        values = torch.stack([value.float() for _, value, _ in logged]).tolist() if logged else []
        sums, counts = dict.fromkeys(self.terms, 0.0), dict.fromkeys(self.terms, 0)
        for (term, _, n), value in zip(logged, values, strict=True):
            sums[term] += value * n
            counts[term] += n
        totals = self.dist.sum(*sums.values(), *counts.values(), step.pending_rows, float(bool(stop.requested)))
        k = len(self.terms)
        term_sums, term_counts, (rows, stopping) = totals[:k], totals[k:2 * k], totals[2 * k:]
        step.pending_rows = 0
        if not all(math.isfinite(v) for v in term_sums):
            bad, value = next((t, v) for t, v in zip(self.terms, term_sums, strict=True) if not math.isfinite(v))
            self._stop_all(JobFailed(f"training diverged: {bad} is {'nan' if math.isnan(value) else 'inf'} at step "
                                     f"{state['step'] + 1} (epoch {state['epoch'] + 1}, batch {b + 1}); lower "
                                     "train.optimizer.lr or set train.clip_grad_norm"))
        for term, value, count in zip(self.terms, term_sums, term_counts, strict=True):
            state["sums"][term] += value
            state["counts"][term] += int(count)
        state["rows"] += int(rows)
        self.samples_seen += int(rows)
        state["step"] += 1
        state["batch"] = b + 1
        # decided from the summed flag only, so that every rank takes the same branch (the save is a collective):
        # a signal that lands after the sum waits for the next step's
        if stopping:
            stop.requested = stop.requested or "SIGTERM"
        if self.cfg.checkpoint_every_steps and state["step"] % self.cfg.checkpoint_every_steps == 0:
            self._save("last")
        if stopping:
            self._save("last")
            last = distributed.on_main(self.dist, self.run_dir, "checkpoints/last.pt")
            self._stop_all(Interrupted(f"{stop.requested}: saved {last} at step {state['step']}; continue with "
                                       "--resume"))
        return term_sums[0] / term_counts[0] if term_counts[0] else float("nan")

    def _end_epoch(self, stop: StopFlag, bar) -> None:
        state, epoch = self.state, self.state["epoch"]
        train_time, seen = time.perf_counter() - self.epoch_start, state["rows"] - self.rows_at_start
        row: dict[str, Any] = {"epoch": epoch + 1, "step": state["step"]}
        for term in self.terms:
            count = state["counts"][term]
            row[f"train_{term}"] = state["sums"][term] / count if count else None
        self.ctx.epoch = epoch + 1
        row.update(self.task.validate(self.parts, self.data.val, self.ctx))
        row.update(self._lrs())
        row.update({"samples_per_s": seen / train_time if train_time > 0 and seen else None,
                    "time_s": time.perf_counter() - self.epoch_start})
        row = self.dist.broadcast_object(row)  # rank 0's row: best, early stopping and schedules agree everywhere
        state["history"].append(row)
        state.update(epoch=epoch + 1, batch=0, sums={t: 0.0 for t in self.terms}, counts={t: 0 for t in self.terms},
                     rows=0)
        for _, schedule in self.optimizers.values():
            schedule.step_epoch(row.get(self.monitor))
        improved = self._update_best(row.get(self.monitor), epoch + 1)
        patience = self.cfg.early_stopping.patience
        if patience is not None and state["bad_epochs"] >= patience:
            state["stopped_early"] = True
        self.callbacks.epoch_end(state["history"], row)
        if improved:  # best written first, last linked to it: a kill between the two leaves last behind
            self._save("best", "last")
        else:
            self._save("last")
        bar.end_epoch(row, improved)
        if self.dist.sum(float(bool(stop.requested)))[0]:
            last = distributed.on_main(self.dist, self.run_dir, "checkpoints/last.pt")
            self._stop_all(Interrupted(f"{stop.requested or 'SIGTERM'}: saved {last} after epoch {epoch + 1}; "
                                       "continue with --resume"))

    def _lr(self) -> float:
        return next(iter(self.optimizers.values()))[0].param_groups[0]["lr"]

    def _lrs(self) -> dict[str, float]:
        if len(self.optimizers) == 1:
            return {"lr": self._lr()}
        return {f"lr_{name}": opt.param_groups[0]["lr"] for name, (opt, _) in self.optimizers.items()}

    def _update_best(self, value: float | None, epoch: int) -> bool:
        state, min_delta = self.state, self.cfg.early_stopping.min_delta
        improved = value is not None and (state["best"] is None or (
            value < state["best"] - min_delta if self.mode == "min" else value > state["best"] + min_delta))
        if improved:
            state["best"], state["best_epoch"], state["bad_epochs"] = value, epoch, 0
        else:
            state["bad_epochs"] += 1
        return improved

    # ------------------------------------------------------------------ checkpoints and the end

    def _save(self, which: str, *also: str) -> None:
        """Every rank calls it (RNG states are gathered); rank 0 writes, FSDP ranks each write their shard.
        `also`: the same state under other names (a hard link to one file; each written again when sharded)."""
        rng = self.dist.gather_objects(rng_state())
        extra = {"format": checkpoint.FORMAT, "bigmodel_version": __version__, "meta": self.meta,
                 "schedules": {n: s.state_dict() for n, (_, s) in self.optimizers.items()},
                 "averaged": {n: a.state_dict() for n, a in self.parts.averaged.items()},
                 "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                 "loop": {**self.state, "global_batch": self.global_batch}, "rng": rng[0],
                 "rng_ranks": rng if self.dist.enabled else None}
        if self.strategy.sharded:
            pairs = {n: (net, self.optimizers[n][0] if n in self.optimizers else None)
                     for n, net in self.parts.networks.items()}
            for name in (which, *also):
                checkpoint.save_sharded(pairs, extra, self.ckpt_dir / name, self.dist)
        else:
            if self.dist.is_main:
                checkpoint.save_atomic(self.ckpt_dir / f"{which}.pt", {
                    **extra, "networks": {n: net.state_dict() for n, net in self.parts.networks.items()},
                    "optimizers": {n: opt.state_dict() for n, (opt, _) in self.optimizers.items()}},
                    also=tuple(self.ckpt_dir / f"{name}.pt" for name in also))
            self.dist.barrier()  # the others wait for the write here (io group), not in the next step's all-reduce

    def _stop_all(self, error: Exception) -> None:
        """Every rank raises together, after rank 0 has finished writing (the launcher ends the others)."""
        self.dist.barrier()
        raise error

    def _summary(self, wall: float) -> dict[str, Any]:
        state, history = self.state, self.state["history"]
        summary = {
            "run_dir": str(self.run_dir), "task": self.recipe.task, "epochs_run": state["epoch"],
            "steps": state["step"], "monitor": self.monitor, "best_epoch": state["best_epoch"],
            "best_value": state["best"], "stopped_early": state["stopped_early"],
            "best_metrics": history[state["best_epoch"] - 1] if state["best_epoch"] else None,
            "last_metrics": history[-1] if history else None,
            "effective_batch_size": self.global_batch * self.cfg.accumulate, "processes": self.dist.world,
            "wall_time_s": wall, "samples_per_s": self.samples_seen / wall if wall > 0 and self.samples_seen else None,
            "checkpoints": {"best": str(self.ckpt_dir / "best.pt"), "last": str(self.ckpt_dir / "last.pt")},
            "device": str(self.device),
        }
        console.info(f"done in {wall:.1f} s: best {self.monitor} {fmt(state['best'])} at epoch "
                     f"{state['best_epoch']}; checkpoints in {self.ckpt_dir}")
        return summary
