"""A pruned network written down as what differs from its registered builder's, so any command can rebuild it.

    spec = record(pruned_net, build_network(unpruned_recipe, data))   # -> recipe's model.pruned
    # {"layer1.0.conv1": {"out_channels": 32, "weight": "32x64x3x3"}, "layer1.0.bn1": {"num_features": 32, ...}}
    apply(build_network_of_the_builder, spec)                         # same shapes as pruned_net, weights unset

Structured pruning changes the shapes of layers, not their kinds or their order: a pruned ResNet is the
registered ResNet with fewer channels in some convolutions and batch norms. `record` lists, per module
name, the plain attributes (`out_channels`, `in_features`, `num_features`, `groups`...) and the shapes
of the tensors (parameters and buffers) that differ; `apply` sets those attributes and replaces those
tensors by empty ones of the recorded shape, so that `load_state_dict` of the pruned checkpoint fits.
The spec is plain data (YAML in `recipe.yaml`), so a pruned run stays a run: eval, export, benchmark,
serve and `train --resume` rebuild it through `models.build` like any other.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn

_PLAIN = (int, float, tuple, list)


def _plain(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, _PLAIN):
        return False
    return not isinstance(value, (tuple, list)) or all(isinstance(v, (int, float)) for v in value)


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    own = {k: v for k, v in module._parameters.items() if v is not None}
    own.update({k: v for k, v in module._buffers.items() if v is not None})
    return own


def record(pruned: nn.Module, original: nn.Module) -> dict[str, dict[str, Any]]:
    """Per module name: the attributes and tensor shapes of `pruned` that differ from `original` (same builder)."""
    before = dict(original.named_modules())
    spec: dict[str, dict[str, Any]] = {}
    for name, module in pruned.named_modules():
        ref = before.get(name)
        if ref is None or type(ref) is not type(module):
            raise ValueError(f"module '{name}' is not in the builder's network: not a structured pruning")
        changes: dict[str, Any] = {}
        for key, value in vars(module).items():
            if key.startswith("_") or key == "training" or not _plain(value):
                continue
            if value != vars(ref).get(key):
                changes[key] = list(value) if isinstance(value, tuple) else value
        ref_tensors = _tensors(ref)
        for key, tensor in _tensors(module).items():
            if key not in ref_tensors:
                raise ValueError(f"tensor '{name}.{key}' is not in the builder's network: not a structured pruning")
            if tuple(tensor.shape) != tuple(ref_tensors[key].shape):
                changes[key] = "x".join(map(str, tensor.shape))  # "64x32x3x3": one short line in recipe.yaml
        if changes:
            spec[name or "."] = changes
    return spec


def apply(net: nn.Module, spec: dict[str, dict[str, Any]]) -> nn.Module:
    """Give `net` (fresh from the builder) the recorded shapes, in place; its weights are then to be loaded."""
    modules = dict(net.named_modules())
    for name, changes in spec.items():
        module = modules.get("" if name == "." else name)
        if module is None:
            raise KeyError(name)
        tensors = _tensors(module)
        for key, value in changes.items():
            if key in tensors:
                old = tensors[key]
                shape = [int(v) for v in str(value).split("x")] if str(value) else []
                new = torch.zeros(shape, dtype=old.dtype, device=old.device)
                if key in module._parameters:
                    module._parameters[key] = nn.Parameter(new, requires_grad=old.requires_grad)
                else:
                    module._buffers[key] = new
            else:
                old_value = getattr(module, key, None)
                setattr(module, key, tuple(value) if isinstance(old_value, tuple) else value)
    return net


def digest(spec: dict[str, dict[str, Any]] | None) -> str | None:
    """A short fingerprint of a pruned architecture (None: the builder's own), recorded in checkpoints."""
    if not spec:
        return None
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
