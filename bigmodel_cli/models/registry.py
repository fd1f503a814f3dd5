"""The model registry. A builder is a function `(num_classes, input_shape, **args) -> nn.Module`.

    @register_model("mlp", kinds=("tabular",))
    def mlp(num_classes, input_shape, hidden=(128,), dropout=0.0): ...

`model.component: "pkg.module:build"` in a recipe plugs in a user's own builder with
the same signature. `num_classes` is the number of outputs (1 for regression).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from bigmodel_cli.errors import UsageError

_REGISTRY: dict[str, Callable[..., Any]] = {}
_KINDS: dict[str, tuple[str, ...]] = {}


def register_model(name: str, kinds: tuple[str, ...] = ("tabular", "image", "text")):
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        _REGISTRY[name] = fn
        _KINDS[name] = kinds
        return fn

    return wrap


def _ensure_loaded() -> None:
    from bigmodel_cli.models import cnn, mlp  # noqa: F401  (registers on import)


def list_models() -> dict[str, dict[str, Any]]:
    """Name -> {kinds, doc}; used by `bigmodel info` and by tests parametrised over every model."""
    _ensure_loaded()
    return {
        name: {"kinds": list(_KINDS[name]), "doc": (inspect.getdoc(fn) or "").splitlines()[0]}
        for name, fn in sorted(_REGISTRY.items())
    }


def create_model(name: str, num_classes: int, input_shape: list[int], **args: Any):
    _ensure_loaded()
    if name not in _REGISTRY:
        near = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f"; did you mean '{near[0]}'?" if near else f"; registered: {', '.join(sorted(_REGISTRY))}"
        raise UsageError(f"model.name '{name}' is not a registered model{hint}")
    return _call(_REGISTRY[name], f"model '{name}'", num_classes, input_shape, args)


def _import_component(ref: str) -> Callable[..., Any]:
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise UsageError(f"model.component '{ref}': expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UsageError(f"model.component '{ref}': cannot import {module_name} ({e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UsageError(f"model.component '{ref}': {module_name} has no callable '{attr}'")
    return fn


def _call(fn: Callable[..., Any], what: str, num_classes: int, input_shape: list[int], args: dict[str, Any]):
    try:
        inspect.signature(fn).bind(num_classes=num_classes, input_shape=input_shape, **args)
    except TypeError as e:
        raise UsageError(f"{what}: model.args do not fit its builder ({e})") from None
    return fn(num_classes=num_classes, input_shape=list(input_shape), **args)


def build_from_recipe(model_section, manifest: dict[str, Any]):
    """Build the recipe's model for this data and check that it fits (one forward pass)."""
    import torch

    from bigmodel_cli.data.manifest import input_shape, num_outputs

    shape, outputs = input_shape(manifest), num_outputs(manifest)
    if model_section.component:
        net = _call(_import_component(model_section.component), f"model.component '{model_section.component}'",
                    outputs, shape, dict(model_section.args))
        what = model_section.component
    elif model_section.name:
        _ensure_loaded()
        kinds = _KINDS.get(model_section.name)
        if kinds is not None and manifest["kind"] not in kinds:
            raise UsageError(f"model '{model_section.name}' takes {'/'.join(kinds)} data, but the prepared data "
                             f"is {manifest['kind']} (shape {shape})")
        net = create_model(model_section.name, outputs, shape, **model_section.args)
        what = model_section.name
    else:
        raise UsageError("the recipe sets neither model.name nor model.component")
    if not isinstance(net, torch.nn.Module):
        raise UsageError(f"model '{what}': the builder returned {type(net).__name__}, not a torch.nn.Module")
    _check_fits(net, what, shape, outputs)
    return net


def _check_fits(net, what: str, shape: list[int], outputs: int) -> None:
    import torch

    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(torch.zeros([2, *shape]))
    except Exception as e:  # the model cannot take this data at all
        raise UsageError(f"model '{what}' does not fit the data: input [N, {', '.join(map(str, shape))}] "
                         f"fails ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    finally:
        net.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, outputs):
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UsageError(f"model '{what}' does not fit the data: expected output [N, {outputs}], got {got}")
