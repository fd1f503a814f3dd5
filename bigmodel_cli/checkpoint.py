"""Checkpoint files: the full training state of a run, written atomically, read with `weights_only=True`.

    save_atomic(run_dir / "checkpoints/last.pt", state)
    state = load(path, expect=meta)          # exit 2 when it belongs to another model, data or class list
    load_weights(net, state, path)           # the task's inference network ("model" by default)

A checkpoint holds `networks` (state dicts by name: "model" for supervised tasks; "generator",
"discriminator"... for others), `optimizers`, `schedules` and `averaged` (EMA copies) under
the same names, the grad scaler, the loop's position, every rank's RNG state and `meta`: what
the model was built for (task, model, classes, input shape, the prepared data's fingerprint).
FSDP writes a folder instead: torch.distributed.checkpoint shards of the sharded tensors, and
`state.pt` with everything that is the same on every rank (buffers, optimizer step counts and
hyper-parameters, the loop). Without shared storage each node keeps its own ranks' shards in
its own run directory (`shards.json` there says what the folder holds and where the rest is).
A process killed at any instant leaves the previous checkpoint intact (temporary file, fsync,
rename).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from bigmodel_cli import atomic
from bigmodel_cli.errors import UsageError, first_line

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


def save_atomic(path: str | Path, state: dict[str, Any], also: tuple[str | Path, ...] = ()) -> Path:
    """Write `state` to `path`; `also`: other names for the same state (best and last after an improving
    epoch), hard links to the one file written rather than a second serialisation of it."""
    import torch

    with atomic.atomic_path(path) as tmp:
        torch.save(state, tmp)
    for name in also:
        atomic.link(path, name)
    for name in (path, *also):
        sharded = Path(name).with_suffix("")
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
        raise UsageError(f"{path}: not a readable checkpoint ({first_line(e)})") from e
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
        raise UsageError(f"{path}: not a readable sharded checkpoint ({first_line(e)})") from e
    _check_format(path, state)
    check_meta(path, state, expect)
    return state


def _load_sharded(path: Path, expect: dict[str, Any] | None) -> dict[str, Any]:
    """A torch.distributed.checkpoint folder read in one process (eval, export): full tensors, any world size."""
    import tempfile

    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    state = load_extra(path, expect)
    missing = missing_shards(path)
    if missing:
        written = state.get("written_on") or {}
        where = ", ".join(f"{name} (rank {rank}" + (f" on {written[rank]})" if rank in written else ")")
                          for name, rank in missing)
        raise UsageError(f"{path}: the shard files {where} are not in this folder: the run trained without shared "
                         "storage and each node kept its ranks' shards in its own run directory; copy them here "
                         f"(e.g. scp NODE:RUN_DIR/checkpoints/{path.name}/{missing[0][0]} {path}/)")
    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(str(path), f"{tmp}/full.pt")
        full = torch.load(f"{tmp}/full.pt", map_location="cpu", weights_only=True)
    _merge(full, state.pop("replicated", None) or {})
    for key in _SHARDED:
        state[key] = full.get(key, {})
    return state


def missing_shards(path: Path) -> list[tuple[str, int]]:
    """Shard files that `.metadata` names and this folder lacks, with the rank that wrote each."""
    from torch.distributed.checkpoint import FileSystemReader

    try:
        metadata = FileSystemReader(str(path)).read_metadata()
    except (OSError, RuntimeError, ValueError, EOFError) as e:
        raise UsageError(f"{path}: not a readable sharded checkpoint ({first_line(e)})") from e
    names = {info.relative_path for info in (metadata.storage_data or {}).values()}
    missing = sorted(name for name in names if not (path / name).is_file())
    return [(name, int(name.split("_")[2]) if name.count("_") >= 3 else -1) for name in missing]


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
    """torch.distributed.checkpoint: every rank writes its shard into a temporary folder, then it is swapped in.

    `pairs` maps a network's name to (network, its optimizer or None). The sharded tensors go to the shard
    files; what is the same on every rank goes to rank 0's `state.pt`. Without shared storage (`dist.shared`
    false) the first rank of every node that cannot see rank 0's run directory (`dist.folder_writer`) makes
    the same folder in its own: its ranks' shards land there, with `.metadata` (sent by rank 0) and
    `shards.json`, so that a resume on the same nodes finds every shard where it was written.
    """
    import torch
    import torch.distributed.checkpoint as dcp

    networks, optimizers = _sharded_state(pairs)
    shards, replicated = _split({"networks": networks, "optimizers": optimizers})
    tmp = dest.parent / f".{dest.name}.{extra['loop']['step']}.tmp"
    if dist.folder_writer:
        for stale in dest.parent.glob(f".{dest.name}.*.tmp"):  # of a killed process
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    dcp.save(shards, checkpoint_id=str(tmp), process_group=dist.io)
    written = {r: f"node {n} ({h})" for r, n, h, _ in dist.layout} if not dist.shared else {}
    if not dist.shared:  # every node's folder describes the whole checkpoint
        metadata = dist.broadcast_object((tmp / ".metadata").read_bytes() if dist.is_main else None)
        if dist.folder_writer and not dist.is_main:
            (tmp / ".metadata").write_bytes(metadata)
    if dist.folder_writer and not dist.shared:
        here = [r for r, n, _, sees in dist.layout if sees] if dist.is_main else \
            [r for r, n, _, sees in dist.layout if n == dist.node and not sees]
        atomic.write_json(tmp / "shards.json", {
            "checkpoint": dest.name, "step": extra["loop"]["step"], "world": dist.world, "ranks_here": here,
            "written_on": {str(r): w for r, w in written.items()},
            "note": "the run directory (recipe, metrics, state.pt) is on node 0" if not dist.is_main else
                    "the other nodes' shards stayed in their own run directories"})
    if dist.is_main:
        torch.save({**extra, "replicated": replicated or {}, "written_on": written}, tmp / "state.pt")
    if dist.folder_writer:
        old = dest.parent / f".{dest.name}.old.tmp"
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    if dist.is_main:
        dest.with_suffix(".pt").unlink(missing_ok=True)  # an older single-file checkpoint of the same name
    dist.barrier()


def _split(tree: Any) -> tuple[Any, Any]:
    """(the sharded tensors, everything else) of a nested state dict, each keeping the nesting."""
    from torch.distributed.tensor import DTensor

    if isinstance(tree, dict):
        sharded, rest = {}, {}
        for key, value in tree.items():
            a, b = _split(value)
            if a is not None:
                sharded[key] = a
            if b is not None:
                rest[key] = b
        return sharded or None, rest or (None if sharded else {})
    return (tree, None) if isinstance(tree, DTensor) else (None, tree)


def _without(tree: dict[str, Any], rest: dict[str, Any]) -> dict[str, Any]:
    """`tree` less the leaves `rest` holds (what `_split` put aside), whatever the target networks' sharding."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and isinstance(rest.get(key), dict):
            out[key] = _without(value, rest[key])
        elif key not in rest:
            out[key] = value
    return out


def _merge(into: dict[str, Any], rest: dict[str, Any]) -> None:
    for key, value in rest.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _sharded_state(pairs: dict[str, tuple[Any, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    networks, optimizers = {}, {}
    for name, (net, optimizer) in pairs.items():
        model_sd, optim_sd = get_state_dict(net, optimizer if optimizer is not None else [])
        networks[name] = model_sd
        if optimizer is not None:
            optimizers[name] = optim_sd
    return networks, optimizers


def load_sharded_into(pairs: dict[str, tuple[Any, Any]], path: Path, saved: dict[str, Any], dist) -> None:
    """Read a sharded folder into sharded networks and optimizers (any number of processes: dcp reshards).

    `saved` is rank 0's `state.pt` (shared by broadcast); `path` is this rank's own folder. Every rank checks
    first that the shards it needs are there, so that a node without them is named (exit 2 on every rank).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    written = saved.get("written_on") or {}
    problem = None
    if not (path / ".metadata").is_file():
        problem = f"{dist.where} has no {path}"
    else:  # on as many processes each rank reads only its own shard file; resharding reads them all
        missing = missing_shards(path)
        if len(saved.get("rng_ranks") or [None]) == dist.world:
            missing = [(name, rank) for name, rank in missing if rank == dist.rank]
        if missing:
            name, rank = missing[0]
            problem = (f"{dist.where} lacks {path / name} (written by rank {rank}"
                       f"{' on ' + written[rank] if rank in written else ''})")
    problems = [p for p in dist.gather_objects(problem) if p]
    if problems:
        raise UsageError(f"--resume: the shards of checkpoints/{path.name} are not where they were written: "
                         f"{problems[0]}. Without shared storage every node keeps its ranks' shards in its own "
                         "run directory: resume with the same nodes (--node-rank), --devices and --run-dir on each, "
                         "or gather every node's checkpoints/" + path.name + "/ files into one folder")
    networks, optimizers = _sharded_state(pairs)
    full = {"networks": networks, "optimizers": optimizers}
    replicated = saved.get("replicated")
    try:  # what the shard files hold, in place (older checkpoints held everything there); the rest from state.pt
        dcp.load(_without(full, replicated or {}), checkpoint_id=str(path), process_group=dist.io)
    except Exception as e:
        raise UsageError(f"{path}: sharded checkpoint does not fit the model ({first_line(e, 300)})") from e
    _merge(full, replicated or {})
    for name, (net, optimizer) in pairs.items():
        set_state_dict(net, optimizer if optimizer is not None else [], model_state_dict=networks[name],
                       optim_state_dict=optimizers.get(name, {}))
