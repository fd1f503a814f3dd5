"""Knowledge distillation: a trained run as the frozen teacher of a supervised student.

    bigmodel train -r wine-small --teacher runs/wine-mlp          # train.distill.teacher, from the command line
    bigmodel train -r wine-small --set train.distill.weight=0.7 --set train.distill.temperature=2
    bigmodel prune runs/digits-cnn --ratio 0.5 --finetune-epochs 5 --teacher runs/digits-cnn

The student's loss is `(1-w)·task + w·T²·KL(p_teacher || p_student)`, both distributions softened by the
temperature T (Hinton et al., 2015; T² keeps the gradients' scale as T changes). The teacher is loaded from
its own run directory with its own preprocessing (`preprocessing.json`: its normalisation, not the
student's), in eval mode and without gradients, and it is a `Parts.frozen` network: the strategy moves it
to the device and never wraps it in DDP or FSDP, so each process runs its own copy on its own share of
the same augmented batch the student sees. Its predictions must mean the same thing as the student's
labels: kind, classes, input shape, the table's features or the text's tokenizer must agree (exit 2
naming the first difference).

The run records the teacher under `teacher` in its `preprocessing.json` (run directory, checkpoint and
its SHA-256, the teacher's data fingerprint, its validation accuracy on the student's validation split,
which is also logged once when training starts).

`train.distill.cache_logits` (augmentation off): the teacher's logits on the training split are computed
once (the processes share the work) and kept, looked up by the content of each row, so a 2-core machine
does not run the teacher every epoch. They are also saved beside the prepared data
(`teacher_logits/<teacher checkpoint sha>-<data fingerprint>-<rows>.npy`) and reused by the next run or resume.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bigmodel_cli import console
from bigmodel_cli.errors import UsageError

CACHE_DIR = "teacher_logits"
HASH_CHUNK = 4096  # rows read at once when the training split is hashed


class DistillLoss(nn.Module):
    """T²·KL(softmax(teacher/T) || softmax(student/T)), averaged over the rows of the batch."""

    def __init__(self, temperature: float):
        super().__init__()
        self.temperature = temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        log_p_student = F.log_softmax(student.float() / t, dim=1)
        log_p_teacher = F.log_softmax(teacher.float() / t, dim=1)
        return F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean") * (t * t)


class Teacher(nn.Module):
    """Raw batch (as stored) -> the teacher's own normalisation -> its network -> logits; frozen.

    With a cache, the logits of rows seen before are looked up by the rows' content instead of being
    computed (exact: a teacher in eval mode gives the same logits for the same input).
    """

    def __init__(self, norm: nn.Module, net: nn.Module):
        super().__init__()
        self.norm, self.net = norm, net
        self.cache: dict[bytes, int] | None = None
        self.register_buffer("cached", torch.zeros(0), persistent=False)

    def use_cache(self, keys: list[bytes], logits: np.ndarray) -> None:
        self.cache = {key: i for i, key in enumerate(keys)}
        self.cached = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32)).to(self.cached.device)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cache is not None:
            found = [self.cache.get(key) for key in row_keys(x.cpu().numpy())]
            if all(i is not None for i in found):
                return self.cached[torch.tensor(found, device=self.cached.device)]
        return self.net(self.norm(x)).float()


def row_keys(x: np.ndarray) -> list[bytes]:
    """A 16-byte digest of each row's stored bytes (the cache's key)."""
    flat = np.ascontiguousarray(x).reshape(len(x), -1)
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]


# ------------------------------------------------------------------ checks, before anything is built


def teacher_run(path: str):
    """The teacher's run directory, trained (a best checkpoint), or an exit-2 error naming the key."""
    from bigmodel_cli import checkpoint
    from bigmodel_cli.run import load_run

    try:
        run = load_run(path)
    except UsageError as e:
        raise UsageError(f"train.distill.teacher: {e}") from e
    if checkpoint.find(run.path, "best") is None:
        raise UsageError(f"train.distill.teacher {path}: the run has no best checkpoint; train it first")
    return run


def check(recipe, data: dict[str, Any]):
    """Exit 2 unless the teacher's run predicts what the student learns, on the same inputs; returns the run."""
    cfg = recipe.train.distill
    if recipe.task != "classification":
        raise UsageError(f"train.distill.teacher: distillation needs a classification task, this recipe's task is "
                         f"{recipe.task}")
    run = teacher_run(cfg.teacher)
    mine = run.manifest
    where = f"teacher {cfg.teacher}"
    if mine["task"] != "classification":
        raise UsageError(f"{where} is a {mine['task']} run; a teacher must be a classifier")
    if mine["kind"] != data["kind"]:
        raise UsageError(f"{where} was trained on {mine['kind']} data, the student's data is {data['kind']}")
    if list(mine["classes"]) != list(data["classes"]):
        raise UsageError(f"{where} has classes {_listing(mine['classes'])}, the student's data has "
                         f"{_listing(data['classes'])}: a teacher must predict the student's classes, in order")
    if list(mine["input_shape"]) != list(data["input_shape"]):
        raise UsageError(f"{where} takes inputs of shape {list(mine['input_shape'])}, the student's data has shape "
                         f"{list(data['input_shape'])}")
    if data["kind"] == "tabular" and list(mine.get("features") or []) != list(data.get("features") or []):
        raise UsageError(f"{where} was trained on features {_listing(mine.get('features') or [])}, the student's "
                         f"data has {_listing(data.get('features') or [])}")
    if data["kind"] == "text" and _tokenizer(mine) != _tokenizer(data):
        raise UsageError(f"{where} tokenises text with another vocabulary than the student's data (the same token "
                         "ids would mean other words); prepare the student's data from the teacher's source and "
                         "recipe, or distill from a teacher trained on the student's prepared data")
    if cfg.cache_logits and (data.get("preprocessing") or {}).get("augment"):
        raise UsageError("train.distill.cache_logits: the training batches are augmented (data.augment), so the "
                         "teacher must see each augmented batch; turn one of them off")
    return run


def _data_key(data: dict[str, Any]) -> str:
    """The prepared data's fingerprint, or a digest of its description when it has none."""
    import json

    if data.get("fingerprint"):
        return str(data["fingerprint"])[:12]
    described = {k: v for k, v in data.items() if k != "teacher"}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _tokenizer(data: dict[str, Any]) -> Any:
    text = (data.get("preprocessing") or {}).get("text") or {}
    return text.get("tokenizer")


def _listing(values: list[Any], most: int = 6) -> str:
    shown = ", ".join(map(str, values[:most]))
    return f"[{shown}{', ...' if len(values) > most else ''}] ({len(values)})"


# ------------------------------------------------------------------ at build time, on every process


def load_teacher(ctx, predict) -> tuple[Teacher, list[str]]:
    """The frozen teacher on the device (checked again), its record in the run's data description, a note.

    `predict(net, inputs, split, device, dist)` is the task's prediction of every row of a split exactly
    once, shared by the processes (`tasks.supervised.predict_split`)."""
    from bigmodel_cli.export.metadata import fingerprint
    from bigmodel_cli.run import load_network

    cfg = ctx.recipe.train.distill
    run = check(ctx.recipe, ctx.data)
    net, norm, path = load_network(run, "best")
    teacher = Teacher(norm, net).to(ctx.device).eval().requires_grad_(False)
    sha = fingerprint(path)
    accuracy, rows = _val_accuracy(teacher, ctx, predict)
    shown = f"{accuracy:.4f} on the student's {rows} validation rows" if accuracy is not None else "n/a (no rows)"
    console.info(f"teacher {run.path} ({path.name}): validation accuracy {shown}")
    ctx.data["teacher"] = {"run": str(run.path), "checkpoint": str(path), "sha256": sha,
                           "fingerprint": run.manifest.get("fingerprint"), "model": run.recipe.model.name
                           or run.recipe.model.component, "val_accuracy": accuracy, "val_rows": rows,
                           "weight": cfg.weight, "temperature": cfg.temperature}
    if cfg.cache_logits:
        _cache(teacher, ctx, sha, predict)
    note = f"distilled from {run.path.name} (w {cfg.weight:g}, T {cfg.temperature:g}" + (
        ", cached logits)" if cfg.cache_logits else ")")
    return teacher, [note]


def _val_accuracy(teacher: Teacher, ctx, predict) -> tuple[float | None, int]:
    """The teacher's accuracy on the student's validation split (each process predicts its share)."""
    from bigmodel_cli.data import manifest as manifests
    from bigmodel_cli.tasks.base import Split

    try:
        val = Split(*manifests.load_split(ctx.recipe.prepared_dir, "val"))
    except UsageError:
        return None, 0
    if len(val) == 0:
        return None, 0
    logits = predict(teacher.net, teacher.norm, val, ctx.device, ctx.dist)
    return float((logits.argmax(1) == val.labels).mean()), len(val)


def _cache(teacher: Teacher, ctx, sha: str, predict) -> None:
    """Logits of every training row: read from the file beside the prepared data, or computed once (shared)."""
    from bigmodel_cli import atomic

    train = ctx.train
    rows = "all" if train.index is None else hashlib.blake2b(np.asarray(train.index).tobytes(),
                                                             digest_size=6).hexdigest()
    name = f"{sha[:16]}-{_data_key(ctx.data)}-{rows}.npy"
    file = Path(ctx.recipe.prepared_dir) / CACHE_DIR / name
    everywhere = ctx.dist.sum(float(file.is_file()))[0] == ctx.dist.world  # else every process computes its share
    logits = np.load(file) if everywhere else None
    if logits is None or logits.shape[0] != len(train):
        logits = predict(teacher.net, teacher.norm, train, ctx.device, ctx.dist)
        if ctx.dist.is_main:
            try:
                file.parent.mkdir(exist_ok=True)
                with atomic.atomic_path(file) as tmp, tmp.open("wb") as f:
                    np.save(f, logits)  # to the open file: np.save(path) would append .npy
            except OSError as e:  # read-only prepared data: the logits are kept in memory only
                console.warn(f"train.distill.cache_logits: cannot write {file} ({e}); kept in memory")
        console.info(f"teacher logits of {len(train)} training rows computed once -> {file}")
    else:
        console.info(f"teacher logits of {len(train)} training rows read from {file}")
    keys: list[bytes] = []
    for start in range(0, len(train), HASH_CHUNK):
        x, _ = train.take(np.arange(start, min(start + HASH_CHUNK, len(train))))
        keys += row_keys(x)
    teacher.use_cache(keys, logits)
