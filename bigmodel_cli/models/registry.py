"""The model registry: a dict and a decorator. A builder is `(num_classes, input_shape, **args) -> nn.Module`.

    @register_model("mlp", kinds=("tabular",))
    def mlp(num_classes, input_shape, hidden=(128,), dropout=0.0): ...

The registry imports no model family: each family registers itself when `bigmodel_cli.models`
is imported (as timm's families do). `model.component: "pkg.module:build"` in a recipe plugs in
a user's own builder with the same signature. `num_classes` is the number of outputs (1 for
regression).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

from bigmodel_cli.errors import UsageError

_REGISTRY: dict[str, Callable[..., Any]] = {}
_KINDS: dict[str, tuple[str, ...]] = {}
_TASKS: dict[str, tuple[str, ...]] = {}
SUPERVISED = ("classification", "regression")


def register_model(name: str, kinds: tuple[str, ...] = ("tabular", "image", "text"),
                   tasks: tuple[str, ...] = SUPERVISED):
    """`tasks`: the recipe tasks the model serves (a GAN's builder returns a generator and discriminator pair)."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        _REGISTRY[name] = fn
        _KINDS[name] = kinds
        _TASKS[name] = tasks
        return fn

    return wrap


def list_models() -> dict[str, dict[str, Any]]:
    """Name -> {kinds, tasks, doc}; used by `bigmodel info` and by tests parametrised over every model."""
    return {
        name: {"kinds": list(_KINDS[name]), "tasks": list(_TASKS[name]),
               "doc": (inspect.getdoc(fn) or "").splitlines()[0]}
        for name, fn in sorted(_REGISTRY.items())
    }


def kinds_of(name: str) -> tuple[str, ...] | None:
    return _KINDS.get(name)


def tasks_of(name: str) -> tuple[str, ...] | None:
    return _TASKS.get(name)


def builder(name: str) -> Callable[..., Any]:
    """The registered builder, or an exit-2 error naming the nearest registered model."""
    if name not in _REGISTRY:
        near = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f"; did you mean '{near[0]}'?" if near else f"; registered: {', '.join(sorted(_REGISTRY))}"
        raise UsageError(f"model.name '{name}' is not a registered model{hint}")
    return _REGISTRY[name]


def create_model(name: str, num_classes: int, input_shape: list[int], **args: Any):
    return call_builder(builder(name), f"model '{name}'", num_classes, input_shape, args)


def import_component(ref: str) -> Callable[..., Any]:
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise UsageError(f"model.component '{ref}': expected 'package.module:function'")
    try:
        module = _import_here_too(module_name)
    except ImportError as e:
        raise UsageError(f"model.component '{ref}': cannot import {module_name} ({e})") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UsageError(f"model.component '{ref}': {module_name} has no callable '{attr}'")
    return fn


def _import_here_too(module_name: str):
    """Import `module_name`, looking in the working directory too (after the installed packages), as the
    processes of `--devices N` and of `tune` trials do (`python -m bigmodel_cli` puts it on their path)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        here = os.getcwd()
        if e.name != module_name.split(".")[0] or here in sys.path or "" in sys.path:
            raise
        sys.path.append(here)
        try:
            return importlib.import_module(module_name)
        except ImportError:
            sys.path.remove(here)
            raise


def call_builder(fn: Callable[..., Any], what: str, num_classes: int, input_shape: list[int], args: dict[str, Any],
                 data: dict[str, Any] | None = None):
    """Call a builder with the data's shapes, what else the data decides (if it takes it) and `model.args`."""
    params = inspect.signature(fn).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    extra = {k: v for k, v in (data or {}).items() if (k in params or accepts_any) and k not in args}
    try:
        inspect.signature(fn).bind(num_classes=num_classes, input_shape=input_shape, **extra, **args)
    except TypeError as e:
        raise UsageError(f"{what}: model.args do not fit its builder ({e})") from e
    return fn(num_classes=num_classes, input_shape=list(input_shape), **extra, **args)
