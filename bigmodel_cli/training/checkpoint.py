"""Checkpoints: full training state, written atomically, read with `weights_only=True`.

    save_atomic(run_dir / "checkpoints/last.pt", state)
    state = load(path, expect=meta)      # exit 2 when it belongs to another model or data

A process killed at any instant leaves the previous checkpoint intact (temporary file,
fsync, rename).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from bigmodel_cli import atomic
from bigmodel_cli.errors import UsageError

FORMAT = 1
# the parts of `meta` that must agree for a checkpoint to fit a model
_MUST_MATCH = ("task", "model", "loss", "num_classes", "input_shape")


def find(run_dir: str | Path, which: str) -> Path | None:
    """`best`/`last` of a run: `checkpoints/<which>.pt`, or the sharded folder `checkpoints/<which>/` (FSDP)."""
    base = Path(run_dir) / "checkpoints"
    for path in (base / f"{which}.pt", base / which):
        if path.is_file() or (path / "state.pt").is_file():
            return path
    return None


def save_atomic(path: str | Path, state: dict[str, Any]) -> Path:
    import torch

    with atomic.atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load(path: str | Path, expect: dict[str, Any] | None = None, map_location: str = "cpu") -> dict[str, Any]:
    import pickle

    import torch

    path = Path(path)
    if path.is_dir():
        return _load_sharded(path, expect)
    if not path.is_file():
        raise UsageError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        raise UsageError(f"{path}: not a readable checkpoint ({str(e).splitlines()[0]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model" not in state:
        raise UsageError(f"{path}: not a bigmodel checkpoint")
    _check_meta(path, state, expect)
    return state


def load_extra(path: Path, expect: dict[str, Any] | None) -> dict[str, Any]:
    """The loop/meta/RNG part of a sharded checkpoint folder (`state.pt`)."""
    import torch

    try:
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as e:
        raise UsageError(f"{path}: not a readable sharded checkpoint ({str(e).splitlines()[0]})") from None
    _check_meta(path, state, expect)
    return state


def _load_sharded(path: Path, expect: dict[str, Any] | None) -> dict[str, Any]:
    """A torch.distributed.checkpoint folder read in one process (eval, export): full tensors, any world size."""
    import tempfile

    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    state = load_extra(path, expect)
    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(str(path), f"{tmp}/full.pt")
        full = torch.load(f"{tmp}/full.pt", map_location="cpu", weights_only=True)
    state["model"] = full["model"]
    return state


def _check_meta(path: Path, state: dict[str, Any], expect: dict[str, Any] | None) -> None:
    if expect is not None:
        meta = state.get("meta", {})
        for key in _MUST_MATCH:
            if key in expect and meta.get(key) != expect[key]:
                raise UsageError(f"{path}: checkpoint was saved for {key}={meta.get(key)!r}, "
                                 f"but this run has {key}={expect[key]!r}")


def load_weights(net, state: dict[str, Any], path: str | Path) -> None:
    """Load a checkpoint's model weights; a shape or key mismatch is an exit-2 error naming the tensor."""
    try:
        net.load_state_dict(state["model"])
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        raise UsageError(f"{path}: checkpoint does not fit the model ({detail[:300]})") from None


def resolve(run_dir: str | Path, which: str) -> Path:
    """`best`, `last` or a path -> the checkpoint file."""
    if which in ("best", "last"):
        path = find(run_dir, which)
        if path is None:
            raise UsageError(f"{run_dir}: no {which}.pt checkpoint; train first: bigmodel train -r RECIPE "
                             f"--run-dir {run_dir}")
        return path
    return Path(which)


def save_sharded(net, optimizer, extra: dict[str, Any], dest: Path, dist) -> None:
    """torch.distributed.checkpoint: every rank writes its shard into a temporary folder, then rank 0 swaps it in."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(net, optimizer)
    tmp = dest.parent / f".{dest.name}.{extra['loop']['step']}.tmp"
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(tmp))
    if dist.is_main:
        torch.save(extra, tmp / "state.pt")
        old = dest.parent / f".{dest.name}.old.tmp"
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
        dest.with_suffix(".pt").unlink(missing_ok=True)  # an older single-file checkpoint of the same name
    dist.barrier()


def load_sharded_into(net, optimizer, path: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(net, optimizer)
    try:
        dcp.load({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(path))
    except Exception as e:
        detail = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        raise UsageError(f"{path}: sharded checkpoint does not fit the model ({detail})") from None
    set_state_dict(net, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)
