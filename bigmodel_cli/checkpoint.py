"""Checkpoint files: the full training state of a run, written atomically, read with `weights_only=True`.

    save_atomic(run_dir / "checkpoints/last.pt", state)
    state = load(path, expect=meta)          # exit 2 when it belongs to another model, data or class list
    load_weights(net, state, path)           # the task's inference network ("model" by default)

A checkpoint holds `networks` (state dicts by name: "model" for supervised tasks; "generator",
"discriminator"... for others), `optimizers`, `schedules` and `averaged` (EMA copies) under
the same names, the grad scaler, the loop's position, every rank's RNG state and `meta`: what
the model was built for (task, model, classes, input shape, the prepared data's fingerprint).
FSDP writes a folder instead (torch.distributed.checkpoint shards plus `state.pt`).
A process killed at any instant leaves the previous checkpoint intact (temporary file, fsync,
rename).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from bigmodel_cli import atomic
from bigmodel_cli.errors import UsageError

FORMAT = 2
# the parts of `meta` that must agree for a checkpoint to fit a model and its data
_MUST_MATCH = ("task", "model", "loss", "num_classes", "input_shape", "classes", "fingerprint", "pruned")
_SHARDED = ("networks", "optimizers")  # what torch.distributed.checkpoint holds in a sharded folder


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
    sharded = Path(path).with_suffix("")
    if sharded.is_dir():  # an older sharded checkpoint of the same name
        shutil.rmtree(sharded, ignore_errors=True)
    return Path(path)


def load(path: str | Path, expect: dict[str, Any] | None = None, map_location: str = "cpu") -> dict[str, Any]:
    """A whole checkpoint (a sharded folder is gathered into full tensors), checked against `expect`."""
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
        raise UsageError(f"{path}: not a readable checkpoint ({str(e).splitlines()[0]})") from e
    _check_format(path, state)
    check_meta(path, state, expect)
    return state


def _check_format(path: Path, state: Any) -> None:
    if not isinstance(state, dict) or "format" not in state:
        raise UsageError(f"{path}: not a bigmodel checkpoint")
    if state["format"] != FORMAT:
        raise UsageError(f"{path}: checkpoint format {state['format']} was written by an older bigmodel "
                         f"(this one reads format {FORMAT}); train the run again")


def load_extra(path: Path, expect: dict[str, Any] | None) -> dict[str, Any]:
    """Everything but the sharded tensors of a sharded checkpoint folder (`state.pt`)."""
    import torch

    try:
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as e:
        raise UsageError(f"{path}: not a readable sharded checkpoint ({str(e).splitlines()[0]})") from e
    _check_format(path, state)
    check_meta(path, state, expect)
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
    for key in _SHARDED:
        state[key] = full.get(key, {})
    return state


def check_meta(path: Path | str, state: dict[str, Any], expect: dict[str, Any] | None) -> None:
    """Exit 2 naming the first difference between what the checkpoint was saved for and what loads it."""
    if expect is None:
        return
    meta = state.get("meta", {})
    for key in _MUST_MATCH:
        if key in expect and meta.get(key) != expect[key]:
            saved, want = meta.get(key), expect[key]
            if key == "fingerprint":
                raise UsageError(f"{path}: checkpoint was trained on prepared data {str(saved)[:12]}, but this run "
                                 f"describes data {str(want)[:12]}; it belongs to another run")
            if key == "pruned":
                have = "a pruned network (bigmodel prune)" if saved else "the unpruned network"
                builds = "a pruned architecture" if want else "the unpruned architecture"
                raise UsageError(f"{path}: checkpoint holds {have}, but this run builds {builds}"
                                 f"{' (pruned differently)' if saved and want else ''}; load it through the run "
                                 "directory that wrote it (its recipe.yaml records model.pruned)")
            raise UsageError(f"{path}: checkpoint was saved for {key}={saved!r}, but this run has {key}={want!r}")


def load_weights(net, state: dict[str, Any], path: str | Path, name: str = "model") -> None:
    """Load one network's weights; a shape or key mismatch is an exit-2 error naming the tensor."""
    weights = state.get("networks", {}).get(name)
    if weights is None:
        raise UsageError(f"{path}: checkpoint holds no network '{name}' (it has: "
                         f"{', '.join(state.get('networks', {})) or 'none'})")
    try:
        net.load_state_dict(weights)
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        raise UsageError(f"{path}: checkpoint does not fit the model ({detail[:300]})") from e


def resolve(run_dir: str | Path, which: str) -> Path:
    """`best`, `last` or a path -> the checkpoint file (or sharded folder)."""
    if which in ("best", "last"):
        path = find(run_dir, which)
        if path is None:
            raise UsageError(f"{run_dir}: no {which}.pt checkpoint; train first: bigmodel train -r RECIPE "
                             f"--run-dir {run_dir}")
        return path
    return Path(which)


def save_sharded(pairs: dict[str, tuple[Any, Any]], extra: dict[str, Any], dest: Path, dist) -> None:
    """torch.distributed.checkpoint: every rank writes its shard into a temporary folder, then rank 0 swaps it in.

    `pairs` maps a network's name to (network, its optimizer or None).
    """
    import torch
    import torch.distributed.checkpoint as dcp

    networks, optimizers = _sharded_state(pairs)
    tmp = dest.parent / f".{dest.name}.{extra['loop']['step']}.tmp"
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    dcp.save({"networks": networks, "optimizers": optimizers}, checkpoint_id=str(tmp))
    if dist.is_main:
        torch.save(extra, tmp / "state.pt")
        old = dest.parent / f".{dest.name}.old.tmp"
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
        dest.with_suffix(".pt").unlink(missing_ok=True)  # an older single-file checkpoint of the same name
    dist.barrier()


def _sharded_state(pairs: dict[str, tuple[Any, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    networks, optimizers = {}, {}
    for name, (net, optimizer) in pairs.items():
        model_sd, optim_sd = get_state_dict(net, optimizer if optimizer is not None else [])
        networks[name] = model_sd
        if optimizer is not None:
            optimizers[name] = optim_sd
    return networks, optimizers


def load_sharded_into(pairs: dict[str, tuple[Any, Any]], path: Path) -> None:
    """Read a sharded folder into sharded networks and optimizers (any number of processes: dcp reshards)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    networks, optimizers = _sharded_state(pairs)
    try:
        dcp.load({"networks": networks, "optimizers": optimizers}, checkpoint_id=str(path))
    except Exception as e:
        detail = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        raise UsageError(f"{path}: sharded checkpoint does not fit the model ({detail})") from e
    for name, (net, optimizer) in pairs.items():
        set_state_dict(net, optimizer if optimizer is not None else [], model_state_dict=networks[name],
                       optim_state_dict=optimizers.get(name, {}))
