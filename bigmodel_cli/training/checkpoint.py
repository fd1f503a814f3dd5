"""Checkpoints: full training state, written atomically, read with `weights_only=True`.

    save_atomic(run_dir / "checkpoints/last.pt", state)
    state = load(path, expect=meta)      # exit 2 when it belongs to another model or data

A process killed at any instant leaves the previous checkpoint intact (temporary file,
fsync, rename).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bigmodel_cli import atomic
from bigmodel_cli.errors import UsageError

FORMAT = 1
# the parts of `meta` that must agree for a checkpoint to fit a model
_MUST_MATCH = ("task", "model", "num_classes", "input_shape")


def save_atomic(path: str | Path, state: dict[str, Any]) -> Path:
    import torch

    with atomic.atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load(path: str | Path, expect: dict[str, Any] | None = None, map_location: str = "cpu") -> dict[str, Any]:
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        raise UsageError(f"{path}: not a readable checkpoint ({str(e).splitlines()[0]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model" not in state:
        raise UsageError(f"{path}: not a bigmodel checkpoint")
    if expect is not None:
        meta = state.get("meta", {})
        for key in _MUST_MATCH:
            if key in expect and meta.get(key) != expect[key]:
                raise UsageError(f"{path}: checkpoint was saved for {key}={meta.get(key)!r}, "
                                 f"but this run has {key}={expect[key]!r}")
    return state


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
        path = Path(run_dir) / "checkpoints" / f"{which}.pt"
        if not path.is_file():
            raise UsageError(f"{run_dir}: no {which}.pt checkpoint; train first: bigmodel train -r RECIPE "
                             f"--run-dir {run_dir}")
        return path
    return Path(which)
