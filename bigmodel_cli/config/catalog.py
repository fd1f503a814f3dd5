"""The shipped recipes: YAML files in the top-level `recipes/` folder, installed as
`bigmodel_cli._recipes` so that a plain `pip install` has them too.

    bigmodel recipes list
    bigmodel recipes copy digits-cnn my.yaml      # a copy named `my`: data/my, runs/my

Listing reads only YAML (no torch), so it is fast.
"""

from __future__ import annotations

import importlib.resources
import re
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


NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # as schema.Recipe.name


def renamed(text: str, old: str, new: str, ref: str) -> str:
    """A recipe file's text with its `name:` set to `new`, comments kept.

    The opening comment's commands follow: `-r OLD` becomes `-r REF` (the copy's path) and
    `data/OLD`, `runs/OLD` become `data/NEW`, `runs/NEW`, so the copy's header runs the copy.
    """
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    header = True
    named = False
    for line in lines:
        if header and line.startswith("#"):
            line = re.sub(rf"^# {re.escape(old)}:", f"# {new}:", line)
            line = re.sub(rf"(-r\s+){re.escape(old)}(?![\w.-])", lambda m: m.group(1) + ref, line)
            line = re.sub(rf"\b(data|runs)/{re.escape(old)}(?![\w.-])", lambda m: f"{m.group(1)}/{new}", line)
            out.append(line)
            continue
        if header and line.strip():
            header = False
        match = re.match(r"^name:([ \t]*)(\S[^#\n]*?|)([ \t]*(#.*)?)(\r?\n)?$", line)
        if match and not named:
            line = f"name:{match.group(1) or ' '}{new}{match.group(3)}{match.group(5) or ''}"
            named = True
        out.append(line)
    if not named:  # no top-level `name:` line: add one after the opening comment
        at = next((i for i, line in enumerate(out) if not line.startswith("#")), len(out))
        out.insert(at, f"name: {new}\n")
    return "".join(out)
