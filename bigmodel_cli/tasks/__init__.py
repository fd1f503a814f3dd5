"""Kinds of job: a registry of tasks by the recipe's `task` name (see `tasks.base` for the interface).

    task = get_task("classification")
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bigmodel_cli.errors import UsageError

_TASKS: dict[str, Callable[[], Any]] = {}


def register_task(name: str, factory: Callable[[], Any]) -> None:
    _TASKS[name] = factory


def get_task(name: str):
    _load()
    if name not in _TASKS:
        raise UsageError(f"task '{name}' has no training engine; known: {', '.join(sorted(_TASKS))}")
    return _TASKS[name]()


def _load() -> None:
    from bigmodel_cli.tasks.generation import Generation
    from bigmodel_cli.tasks.language_modeling import LanguageModeling
    from bigmodel_cli.tasks.restoration import Restoration
    from bigmodel_cli.tasks.supervised import Supervised

    for name in ("classification", "regression"):
        _TASKS.setdefault(name, lambda name=name: Supervised(name))
    _TASKS.setdefault("generation", Generation)
    _TASKS.setdefault("restoration", Restoration)
    _TASKS.setdefault("language-modeling", LanguageModeling)
