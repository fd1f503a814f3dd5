"""The shipped recipes: YAML files in the top-level `recipes/` folder, installed as
`bigmodel_cli._recipes` so that a plain `pip install` has them too.

    bigmodel recipes list
    bigmodel recipes copy digits-cnn my.yaml

Listing reads only YAML (no torch), so it is fast.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any

import yaml


def directory() -> Path:
    return Path(str(importlib.resources.files("bigmodel_cli._recipes")))


def names() -> list[str]:
    return sorted(p.stem for p in directory().glob("*.yaml"))


def path_of(name: str) -> Path | None:
    path = directory() / f"{name}.yaml"
    return path if path.is_file() else None


def summary(path: Path) -> dict[str, Any]:
    """Name, task, model, data source and the one-line description (the file's first comment)."""
    text = path.read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    description = ""
    for line in text.splitlines():
        if line.startswith("#"):
            description = line.lstrip("#").strip()
            head, sep, tail = description.partition(":")
            if sep and head.strip() == path.stem:
                description = tail.strip()
            break
    model = data.get("model") or {}
    return {
        "name": path.stem,
        "task": data.get("task", "classification"),
        "model": model.get("name") or model.get("component"),
        "source": (data.get("data") or {}).get("source"),
        "description": description,
        "path": str(path),
    }
