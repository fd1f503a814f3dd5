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
    from bigmodel_cli.models import cnn, mlp, text, vision  # noqa: F401  (registers on import)


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


def data_args(manifest: dict[str, Any]) -> dict[str, Any]:
    """What the data decides beyond classes and shape: the vocabulary size of text."""
    if manifest.get("kind") != "text":
        return {}
    prep = manifest.get("preprocessing") or {}
    text = prep.get("text") or prep.get("tokenizer") or {}
    size = manifest.get("vocab_size") or text.get("vocab_size")
    if not size:
        raise UsageError("the prepared text data has no vocabulary size in its manifest; rerun prepare-data")
    return {"vocab_size": int(size)}


def _call(fn: Callable[..., Any], what: str, num_classes: int, input_shape: list[int], args: dict[str, Any],
          data: dict[str, Any] | None = None):
    params = inspect.signature(fn).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    extra = {k: v for k, v in (data or {}).items() if (k in params or accepts_any) and k not in args}
    try:
        inspect.signature(fn).bind(num_classes=num_classes, input_shape=input_shape, **extra, **args)
    except TypeError as e:
        raise UsageError(f"{what}: model.args do not fit its builder ({e})") from None
    return fn(num_classes=num_classes, input_shape=list(input_shape), **extra, **args)


def build_from_recipe(model_section, manifest: dict[str, Any], one_logit: bool = False):
    """Build the recipe's model for this data and check that it fits (one forward pass).

    `one_logit` (binary classification trained with BCE): the builder makes one output, wrapped
    so that everything downstream sees two logits `[0, z]`.
    """
    import torch

    from bigmodel_cli.data.manifest import input_shape, num_outputs

    shape, outputs = input_shape(manifest), num_outputs(manifest)
    built_outputs = 1 if one_logit else outputs
    data = data_args(manifest)
    if model_section.component:
        net = _call(_import_component(model_section.component), f"model.component '{model_section.component}'",
                    built_outputs, shape, dict(model_section.args), data)
        what = model_section.component
    elif model_section.name:
        _ensure_loaded()
        kinds = _KINDS.get(model_section.name)
        if kinds is not None and manifest["kind"] not in kinds:
            raise UsageError(f"model '{model_section.name}' takes {'/'.join(kinds)} data, but the prepared data "
                             f"is {manifest['kind']} (shape {shape})")
        if model_section.name not in _REGISTRY:
            create_model(model_section.name, built_outputs, shape)  # raises with the nearest name
        net = _call(_REGISTRY[model_section.name], f"model '{model_section.name}'", built_outputs, shape,
                    dict(model_section.args), data)
        what = model_section.name
    else:
        raise UsageError("the recipe sets neither model.name nor model.component")
    if not isinstance(net, torch.nn.Module):
        raise UsageError(f"model '{what}': the builder returned {type(net).__name__}, not a torch.nn.Module")
    if one_logit:
        from bigmodel_cli.training.losses import BinaryLogits

        _check_fits(net, what, shape, 1, manifest.get("kind"))
        net = BinaryLogits(net)
    _check_fits(net, what, shape, outputs, manifest.get("kind"))
    return net


def _check_fits(net, what: str, shape: list[int], outputs: int, kind: str | None = None) -> None:
    import torch

    was_training = net.training
    net.eval()
    sample = torch.ones([2, *shape], dtype=torch.long) if kind == "text" else torch.zeros([2, *shape])
    try:
        with torch.no_grad():
            out = net(sample)
    except Exception as e:  # the model cannot take this data at all
        raise UsageError(f"model '{what}' does not fit the data: input [N, {', '.join(map(str, shape))}] "
                         f"fails ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    finally:
        net.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, outputs):
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UsageError(f"model '{what}' does not fit the data: expected output [N, {outputs}], got {got}")


def head_prefix(net) -> str:
    """The name of the last module holding parameters: the classifier head (`fc`, `classifier.3`, `head`)."""
    last = ""
    for name, module in net.named_modules():
        if name and any(True for _ in module.parameters(recurse=False)):
            last = name
    return last


def freeze(net, prefixes: list[str]) -> int:
    """Freeze parameters whose names start with a prefix (`backbone`: all but the head); returns how many."""
    names = [n for n, _ in net.named_parameters()]
    frozen = 0
    for prefix in prefixes:
        if prefix == "backbone":
            head = head_prefix(net)
            chosen = [n for n in names if not (n == head or n.startswith(head + "."))]
        else:
            chosen = [n for n in names if n == prefix or n.startswith(prefix + ".")]
            if not chosen:
                tops = sorted({n.split(".")[0] for n in names})
                near = difflib.get_close_matches(prefix, tops, n=1)
                hint = f"; did you mean '{near[0]}'?" if near else f"; top-level parts: {', '.join(tops)}"
                raise UsageError(f"model.freeze '{prefix}' matches no parameter{hint}")
        for name, p in net.named_parameters():
            if name in chosen and p.requires_grad:
                p.requires_grad_(False)
                frozen += p.numel()
    return frozen


def frozen_norm_layers(net) -> list[Any]:
    """BatchNorm layers whose parameters are all frozen: train keeps them in eval mode, so that their running
    statistics (part of the frozen backbone) stay as loaded instead of drifting to the new data's batches."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return [m for m in net.modules() if isinstance(m, _BatchNorm) and any(True for _ in m.parameters())
            and not any(p.requires_grad for p in m.parameters())]


def load_pretrained(net, path: str) -> dict[str, Any]:
    """Load local weights (state dict or safetensors); tensors whose shape differs (a new head) are skipped."""
    from pathlib import Path

    import torch

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"model.weights: file not found: {path}")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            weights = load_file(str(p))
        else:
            weights = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UsageError(f"model.weights {path}: cannot read ({str(e).splitlines()[0]})") from None
    for key in ("model", "state_dict"):  # a bigmodel checkpoint, or a Lightning one
        if isinstance(weights, dict) and isinstance(weights.get(key), dict):
            weights = weights[key]
    if not isinstance(weights, dict):
        raise UsageError(f"model.weights {path}: not a state dict")
    own = net.state_dict()
    if not any(k in own for k in weights) and all(k.startswith("net.") for k in own):
        own = {k.removeprefix("net."): v for k, v in own.items()}  # weights of the bare network (BCE head)
        target = net.net
    else:
        target = net
    loaded = {k: v for k, v in weights.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    skipped = sorted(k for k in weights if k in own and k not in loaded)
    if not loaded:
        raise UsageError(f"model.weights {path}: no tensor fits the model (first keys: {', '.join(list(weights)[:3])})")
    target.load_state_dict(loaded, strict=False)
    return {"loaded": len(loaded), "skipped_shape": skipped, "missing": sorted(set(own) - set(loaded))}
