"""What a tracker records about a run besides its metrics: the recipe as flat parameters, the code and the data.

    flatten({"train": {"optimizer": {"lr": 0.003}}})   # {"train.optimizer.lr": 0.003}
    git_commit()                                        # "c423ab6..." when the working directory is in a git repo
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections as dotted keys; lists and empty mappings stay values (`model.args.hidden: [64, 32]`)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def param_value(value: Any) -> str:
    """A parameter as MLflow stores it: strings as they are, everything else as JSON (`true`, `null`, `[64, 32]`)."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def recipe_dict(recipe: Any) -> dict[str, Any]:
    """The resolved recipe as plain data, from a `schema.Recipe` or a mapping."""
    return recipe.model_dump(mode="json") if hasattr(recipe, "model_dump") else dict(recipe)


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The commit checked out where the command runs, or None outside a git repository (or without git)."""
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = proc.stdout.strip()
    return commit if proc.returncode == 0 and len(commit) >= 40 else None


def data_tags(manifest: dict[str, Any]) -> dict[str, str]:
    """The prepared data's identity as tags: its fingerprint (or the source's SHA-256) and source."""
    tags = {}
    fingerprint = manifest.get("fingerprint") or manifest.get("data_fingerprint") or manifest.get("source_sha256")
    if fingerprint:
        tags["bigmodel.data_fingerprint"] = str(fingerprint)
    if manifest.get("source"):
        tags["bigmodel.data_source"] = str(manifest["source"])
    return tags
