"""`bigmodel train`: the training loop, validation every epoch, best/last checkpoints, resume.

    bigmodel train -r digits-cnn                       # -> runs/digits-cnn
    bigmodel train -r digits-cnn --resume              # continue from checkpoints/last.pt

The prepared arrays are held as tensors and batched by index (no DataLoader, no worker
processes), the data order of each epoch comes from its own seeded generator, and the
checkpoint records every RNG state and the position inside the epoch, so a resumed run
continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bigmodel_cli import __version__, atomic, console, devices
from bigmodel_cli.config.recipe import dump
from bigmodel_cli.data import manifest as manifests
from bigmodel_cli.data.transform import normalizer
from bigmodel_cli.errors import Interrupted, JobFailed, UsageError
from bigmodel_cli.evaluation import metrics as M
from bigmodel_cli.evaluation.predict import predict, softmax
from bigmodel_cli.models import build_from_recipe
from bigmodel_cli.training import checkpoint
from bigmodel_cli.training.optim import create_optimizer, create_scheduler

VAL_METRICS = {"classification": ("accuracy", "f1", "roc_auc"), "regression": ("mse", "mae", "r2")}


def model_meta(recipe, manifest: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint must agree on with the model that loads it."""
    return {
        "recipe": recipe.name,
        "task": recipe.task,
        "model": recipe.model.name or recipe.model.component,
        "model_args": recipe.model.args,
        "num_classes": manifests.num_outputs(manifest),
        "input_shape": manifests.input_shape(manifest),
        "classes": manifest["classes"],
    }


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The sample order of one epoch: a function of (seed, epoch) only, so resume can replay it."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _StopFlag:
    """SIGINT/SIGTERM ask the loop to stop at the next optimiser step and save; a second one aborts."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not in the main thread
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _loss_fn(recipe) -> nn.Module:
    if recipe.task == "classification":
        return nn.CrossEntropyLoss(label_smoothing=recipe.train.label_smoothing)
    return nn.MSELoss()


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


def fit(recipe, run_dir: str | Path, resume: bool = False, recipe_ref: str | None = None) -> dict[str, Any]:
    """Train the recipe's model on its prepared data; returns the run summary."""
    run_dir = Path(run_dir)
    cfg = recipe.train
    manifest = manifests.read(recipe.prepared_dir, recipe_ref or recipe.name)
    if manifest["task"] != recipe.task:
        raise UsageError(f"task '{recipe.task}' does not match the prepared data ({manifest['task']}); "
                         f"rerun prepare-data or fix 'task'")
    device = devices.resolve(cfg.devices)
    if cfg.precision == "16-mixed" and device.type != "cuda":
        raise UsageError("train.precision 16-mixed needs a CUDA GPU; on CPU use bf16-mixed or 32")

    names = ["val_loss"] + [f"val_{m}" for m in VAL_METRICS[recipe.task]]
    monitor = cfg.early_stopping.monitor
    if monitor not in names:
        import difflib

        near = difflib.get_close_matches(monitor, names, n=1)
        hint = f"; did you mean '{near[0]}'?" if near else f"; logged: {', '.join(names)}"
        raise UsageError(f"train.early_stopping.monitor '{monitor}' is not a logged metric{hint}")
    mode = cfg.early_stopping.mode
    if mode == "auto":
        mode = "min" if M.lower_is_better(monitor) else "max"

    seed_everything(recipe.seed)
    net = build_from_recipe(recipe.model, manifest)
    if recipe.model.weights:
        _load_pretrained(net, recipe.model.weights)
    meta = model_meta(recipe, manifest)
    norm = normalizer(manifest).to(device)
    net.to(device)

    x_train, y_train = (torch.from_numpy(np.array(a)) for a in manifests.load_split(recipe.prepared_dir, "train"))
    x_val, y_val = (np.array(a) for a in manifests.load_split(recipe.prepared_dir, "val"))
    if device.type == "cuda" and x_train.nbytes < 2**30:  # small data: keep it on the GPU
        x_train, y_train = x_train.to(device), y_train.to(device)
    n = len(x_train)
    if cfg.batch_size > n:
        raise UsageError(f"train.batch_size {cfg.batch_size} is larger than the {n} training rows; "
                         f"lower it (--set train.batch_size={max(1, n // 4)})")
    batches_per_epoch = math.ceil(n / cfg.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.accumulate)
    total_steps = steps_per_epoch * cfg.epochs

    optimizer = create_optimizer(net, cfg.optimizer)
    scheduler = create_scheduler(optimizer, cfg.scheduler, total_steps, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "16-mixed")
    loss_fn = _loss_fn(recipe)

    ckpt_dir = run_dir / "checkpoints"
    state: dict[str, Any] = {"epoch": 0, "batch": 0, "step": 0, "best": None, "best_epoch": None,
                             "bad_epochs": 0, "history": [], "stopped_early": False}
    if resume:
        last = ckpt_dir / "last.pt"
        if not last.is_file():
            raise UsageError(f"--resume: no checkpoint at {last}; train without --resume first")
        saved = checkpoint.load(last, expect=meta)
        checkpoint.load_weights(net, saved, last)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        state.update(saved["loop"])
        _set_rng_state(saved["rng"])
        console.info(f"resuming from {last}: epoch {state['epoch'] + 1}, batch {state['batch']}, "
                     f"step {state['step']}")
        if state["stopped_early"] or state["epoch"] >= cfg.epochs:
            console.info("the run had already finished; nothing to do")

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(run_dir / "recipe.yaml", dump(recipe))

    def save(path: Path) -> None:
        checkpoint.save_atomic(path, {
            "format": checkpoint.FORMAT, "bigmodel_version": __version__, "meta": meta,
            "model": net.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "loop": dict(state), "rng": _rng_state(),
        })

    console.info(f"training {meta['model']} on {device} ({n} rows, batch {cfg.batch_size} x accumulate "
                 f"{cfg.accumulate} = {cfg.batch_size * cfg.accumulate} effective, {cfg.epochs} epochs, "
                 f"precision {cfg.precision}) -> {run_dir}")
    started = time.perf_counter()
    samples_seen = 0
    with _StopFlag() as stop, _progress(cfg.epochs, batches_per_epoch) as bar:
        while state["epoch"] < cfg.epochs and not state["stopped_early"]:
            epoch = state["epoch"]
            order = epoch_order(recipe.seed, epoch, n)
            net.train()
            epoch_start, loss_sum, loss_rows = time.perf_counter(), 0.0, 0
            bar.start_epoch(epoch, state["batch"])
            for b in range(state["batch"], batches_per_epoch):
                idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                idx = idx.to(x_train.device)
                xb = norm(x_train[idx].to(device, non_blocking=True))
                yb = y_train[idx].to(device, non_blocking=True)
                with _autocast(device, cfg.precision):
                    out = net(xb)
                    loss = loss_fn(out.float(), yb) if recipe.task == "classification" else loss_fn(
                        out.float()[:, 0], yb.float())
                if not torch.isfinite(loss):
                    raise JobFailed(f"training diverged: loss is {loss.item()} at step {state['step'] + 1} "
                                    f"(epoch {epoch + 1}, batch {b + 1}); lower train.optimizer.lr or set "
                                    "train.clip_grad_norm")
                scaler.scale(loss / cfg.accumulate).backward()
                rows = len(idx)
                loss_sum += loss.item() * rows
                loss_rows += rows
                samples_seen += rows
                if (b + 1) % cfg.accumulate == 0 or b + 1 == batches_per_epoch:
                    if cfg.clip_grad_norm:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.clip_grad_norm)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
                    state["step"] += 1
                    state["batch"] = b + 1
                    if cfg.checkpoint_every_steps and state["step"] % cfg.checkpoint_every_steps == 0:
                        save(ckpt_dir / "last.pt")
                    if stop.requested:
                        save(ckpt_dir / "last.pt")
                        raise Interrupted(f"{stop.requested}: saved {ckpt_dir / 'last.pt'} at step "
                                          f"{state['step']}; continue with --resume")
                bar.advance(loss.item())

            train_time = time.perf_counter() - epoch_start
            outputs = predict(net, norm, x_val, device)
            val_loss = float(loss_fn(torch.from_numpy(outputs), torch.from_numpy(y_val)).item()) if (
                recipe.task == "classification") else float(np.mean((outputs[:, 0] - y_val) ** 2))
            row = {"epoch": epoch + 1, "step": state["step"],
                   "train_loss": loss_sum / max(1, loss_rows)}
            row.update(validation_metrics(recipe, manifest, outputs, y_val, val_loss))
            row.update({"lr": optimizer.param_groups[0]["lr"],
                        "samples_per_s": loss_rows / train_time if train_time > 0 else None,
                        "time_s": time.perf_counter() - epoch_start})
            state["history"].append(row)
            state["epoch"], state["batch"] = epoch + 1, 0

            value = row.get(monitor)
            improved = value is not None and (state["best"] is None or (
                value < state["best"] - cfg.early_stopping.min_delta if mode == "min"
                else value > state["best"] + cfg.early_stopping.min_delta))
            if improved:
                state["best"], state["best_epoch"], state["bad_epochs"] = value, epoch + 1, 0
            else:
                state["bad_epochs"] += 1
            patience = cfg.early_stopping.patience
            if patience is not None and state["bad_epochs"] >= patience:
                state["stopped_early"] = True
            atomic.write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in state["history"]))
            if improved:
                save(ckpt_dir / "best.pt")
            save(ckpt_dir / "last.pt")
            bar.end_epoch(row, monitor, improved)
            if stop.requested:
                raise Interrupted(f"{stop.requested}: saved {ckpt_dir / 'last.pt'} after epoch {epoch + 1}; "
                                  "continue with --resume")
        if state["stopped_early"]:
            console.info(f"early stopping: {monitor} did not improve for {cfg.early_stopping.patience} epochs")

    if not (ckpt_dir / "best.pt").is_file():  # monitor never defined (e.g. AUC with one class): keep last
        save(ckpt_dir / "best.pt")
    wall = time.perf_counter() - started
    summary = {
        "run_dir": str(run_dir),
        "epochs_run": state["epoch"],
        "steps": state["step"],
        "monitor": monitor,
        "best_epoch": state["best_epoch"],
        "best_value": state["best"],
        "stopped_early": state["stopped_early"],
        "last_metrics": state["history"][-1] if state["history"] else None,
        "wall_time_s": wall,
        "samples_per_s": samples_seen / wall if wall > 0 else None,
        "checkpoints": {"best": str(ckpt_dir / "best.pt"), "last": str(ckpt_dir / "last.pt")},
        "device": str(device),
    }
    console.info(f"done in {wall:.1f} s: best {monitor} {_fmt(state['best'])} at epoch {state['best_epoch']}; "
                 f"checkpoints in {ckpt_dir}")
    return summary


def _load_pretrained(net: nn.Module, path: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"model.weights: file not found: {path}")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            weights = load_file(str(p))
        else:
            weights = torch.load(p, map_location="cpu", weights_only=True)
            if isinstance(weights, dict) and "model" in weights and isinstance(weights["model"], dict):
                weights = weights["model"]
    except Exception as e:
        raise UsageError(f"model.weights {path}: cannot read ({str(e).splitlines()[0]})") from None
    try:
        net.load_state_dict(weights)
    except RuntimeError as e:
        raise UsageError(f"model.weights {path}: does not fit the model ({' '.join(str(e).split())[:300]})") from None


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


class _Plain:
    """One line per epoch (CI, pipes, --json silences it)."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def start_epoch(self, epoch: int, batch: int) -> None:
        pass

    def advance(self, loss: float) -> None:
        pass

    def end_epoch(self, row: dict[str, Any], monitor: str, improved: bool) -> None:
        metrics = " ".join(f"{k}={_fmt(v)}" for k, v in row.items()
                           if k.startswith(("train_", "val_")))
        sps = row.get("samples_per_s")
        console.info(f"epoch {row['epoch']}/{self.epochs} {metrics} lr={row['lr']:.3g} "
                     f"{sps:.0f} samples/s {row['time_s']:.1f}s{' *' if improved else ''}")


class _Rich(_Plain):
    """A rich progress bar with loss and ETA, when stderr is a terminal."""

    def __init__(self, epochs: int, batches: int, progress):
        super().__init__(epochs)
        self.progress, self.batches = progress, batches
        self.task = progress.add_task("train", total=batches, loss=float("nan"))

    def start_epoch(self, epoch: int, batch: int) -> None:
        self.progress.reset(self.task, total=self.batches, completed=batch,
                            description=f"epoch {epoch + 1}/{self.epochs}")

    def advance(self, loss: float) -> None:
        self.progress.update(self.task, advance=1, loss=loss)

    def end_epoch(self, row: dict[str, Any], monitor: str, improved: bool) -> None:
        self.progress.console.print(f"epoch {row['epoch']}/{self.epochs} train_loss={_fmt(row['train_loss'])} "
                                    f"{monitor}={_fmt(row.get(monitor))}{' *' if improved else ''}")


@contextlib.contextmanager
def _progress(epochs: int, batches: int):
    if not console.interactive() or console.is_quiet():
        yield _Plain(epochs)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn(),
                  console=console.console, transient=True) as progress:
        yield _Rich(epochs, batches, progress)
