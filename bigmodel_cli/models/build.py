"""The network of a run, built in one place for train, eval, export and benchmark.

    net = build_network(recipe, data)                 # the recipe's model for this data, checked by one forward
    meta = model_meta(recipe, data)                   # what a checkpoint must agree on with it
    net, norm, path = load_trained(run, "best")       # eval mode, weights from the checkpoint

`data` is the run's data description (`RUN_DIR/preprocessing.json`, or a prepared data
manifest at train time): task, kind, classes, input shape, fitted preprocessing, fingerprint.
A binary classifier trained with BCE has a one-logit head that `BinaryLogits` presents as
two logits `[0, z]`, so nothing downstream needs a special case.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bigmodel_cli.errors import UsageError, first_line, named_line
from bigmodel_cli.models import registry


class BinaryLogits(nn.Module):
    """Wrap a one-output network as two logits `[0, z]` (class 0, class 1)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net(x)
        return torch.cat([torch.zeros_like(z), z], dim=1)


def resolve_loss(cfg, task: str, classes: list[str] | None) -> str:
    """The concrete loss name for `train.loss` and the data, or an exit-2 error when they do not fit."""
    name = cfg.loss
    if name == "auto":
        if task == "regression":
            return "mse"
        return "bce" if classes is not None and len(classes) == 2 else "cross_entropy"
    if task == "regression" and name in ("cross_entropy", "bce"):
        raise UsageError(f"train.loss {name} is for classification; regression takes mse, mae or huber")
    if task == "classification" and name in ("mse", "mae", "huber"):
        raise UsageError(f"train.loss {name} is for regression; classification takes cross_entropy or bce")
    if name == "bce" and (classes is None or len(classes) != 2):
        raise UsageError(f"train.loss bce needs exactly 2 classes, the data has {len(classes or [])}; "
                         "use cross_entropy")
    return name


def num_outputs(data: dict[str, Any]) -> int:
    """Model outputs the data decides: number of classes, or 1 for regression."""
    return len(data["classes"]) if data["task"] == "classification" else 1


def data_args(data: dict[str, Any]) -> dict[str, Any]:
    """What the data decides beyond classes and shape: the vocabulary size of text."""
    if data.get("kind") != "text":
        return {}
    prep = data.get("preprocessing") or {}
    text = prep.get("text") or prep.get("tokenizer") or {}
    size = data.get("vocab_size") or text.get("vocab_size")
    if not size:
        raise UsageError("the prepared text data has no vocabulary size in its manifest; rerun prepare-data")
    return {"vocab_size": int(size)}


def model_meta(recipe, data: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint must agree on with the model that loads it (checked by `checkpoint.load`)."""
    return {
        "recipe": recipe.name,
        "task": recipe.task,
        "model": recipe.model.name or recipe.model.component,
        "model_args": recipe.model.args,
        "loss": resolve_loss(recipe.train, recipe.task, data["classes"]),
        "num_classes": num_outputs(data),
        "input_shape": list(data["input_shape"]),
        "classes": data["classes"],
        "fingerprint": data.get("fingerprint"),
        "pruned": _pruned_digest(recipe.model),
    }


def _pruned_digest(model_section) -> str | None:
    """None for the builder's own architecture, else a fingerprint of the pruned one (`model.pruned`)."""
    if not getattr(model_section, "pruned", None):
        return None
    from bigmodel_cli.compression.architecture import digest

    return digest(model_section.pruned)


def build_network(recipe, data: dict[str, Any], pretrained: bool = True) -> nn.Module:
    """The recipe's network for this data (a one-logit head when a binary task trains with BCE).

    `pretrained=False` (a trained run, whose checkpoint holds every weight): a pre-trained `hf` model is
    built from the config its run carries, without reading the model folder's weights.
    """
    one_logit = resolve_loss(recipe.train, recipe.task, data["classes"]) == "bce"
    if recipe.model.name == "hf":  # a local Hugging Face folder (models/hf.py)
        from bigmodel_cli.models import hf

        net = hf.from_recipe(recipe, data, 1 if one_logit else num_outputs(data), pretrained)
        return BinaryLogits(net) if one_logit else net
    return build_from_recipe(recipe.model, data, one_logit=one_logit)


def build_from_recipe(model_section, data: dict[str, Any], one_logit: bool = False) -> nn.Module:
    """Build the recipe's model for this data and check that it fits (one forward pass).

    `one_logit` (binary classification trained with BCE): the builder makes one output, wrapped
    so that everything downstream sees two logits `[0, z]`.
    """
    shape, outputs = list(data["input_shape"]), num_outputs(data)
    built_outputs = 1 if one_logit else outputs
    extra = data_args(data)
    if model_section.component:
        what = model_section.component
        fn = registry.import_component(what)
        net = registry.call_builder(fn, f"model.component '{what}'", built_outputs, shape, dict(model_section.args),
                                    extra)
    elif model_section.name:
        what = model_section.name
        fn = registry.builder(what)
        kinds, tasks = registry.kinds_of(what), registry.tasks_of(what)
        if tasks is not None and data["task"] not in tasks:
            raise UsageError(f"model '{what}' is for task {'/'.join(tasks)}, but the recipe's task is {data['task']}")
        if kinds is not None and data["kind"] not in kinds:
            raise UsageError(f"model '{what}' takes {'/'.join(kinds)} data, but the prepared data "
                             f"is {data['kind']} (shape {shape})")
        net = registry.call_builder(fn, f"model '{what}'", built_outputs, shape, dict(model_section.args), extra)
    else:
        raise UsageError("the recipe sets neither model.name nor model.component")
    if not isinstance(net, nn.Module):
        raise UsageError(f"model '{what}': the builder returned {type(net).__name__}, not a torch.nn.Module")
    if one_logit:
        check_fits(net, what, shape, 1, data.get("kind"))
        net = BinaryLogits(net)
    if getattr(model_section, "pruned", None):  # a run written by `bigmodel prune`: the builder's net, resized
        from bigmodel_cli.compression.architecture import apply

        apply(net, model_section.pruned)
    check_fits(net, what, shape, outputs, data.get("kind"))
    return net


def check_fits(net: nn.Module, what: str, shape: list[int], outputs: int, kind: str | None = None) -> None:
    """One forward pass of two zero samples: the model takes this data and gives [N, outputs].

    Running out of memory is not "the model does not fit the data": it is re-raised as it is.
    """
    was_training = net.training
    net.eval()
    sample = torch.ones([2, *shape], dtype=torch.long) if kind == "text" else torch.zeros([2, *shape])
    try:
        with torch.no_grad():
            out = net(sample)
    except (MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as e:  # the model cannot take this data at all
        raise UsageError(f"model '{what}' does not fit the data: input [N, {', '.join(map(str, shape))}] "
                         f"fails ({named_line(e)})") from e
    finally:
        net.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, outputs):
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UsageError(f"model '{what}' does not fit the data: expected output [N, {outputs}], got {got}")


def head_prefix(net: nn.Module) -> str:
    """The name of the last module holding parameters: the classifier head (`fc`, `classifier.3`, `head`)."""
    last = ""
    for name, module in net.named_modules():
        if name and any(True for _ in module.parameters(recurse=False)):
            last = name
    return last


def freeze(net: nn.Module, prefixes: list[str]) -> int:
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


def frozen_norm_layers(net: nn.Module) -> list[nn.Module]:
    """BatchNorm layers whose parameters are all frozen: train keeps them in eval mode, so that their running
    statistics (part of the frozen backbone) stay as loaded instead of drifting to the new data's batches."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return [m for m in net.modules() if isinstance(m, _BatchNorm) and any(True for _ in m.parameters())
            and not any(p.requires_grad for p in m.parameters())]


def load_pretrained(net: nn.Module, path: str) -> dict[str, Any]:
    """Load local weights (state dict or safetensors); tensors whose shape differs (a new head) are skipped."""
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
        raise UsageError(f"model.weights {path}: cannot read ({first_line(e)})") from e
    for key in ("model", "state_dict"):  # a bigmodel checkpoint of another format, or a Lightning one
        if isinstance(weights, dict) and isinstance(weights.get(key), dict):
            weights = weights[key]
    if isinstance(weights, dict) and isinstance(weights.get("networks"), dict):  # a bigmodel checkpoint
        weights = weights["networks"].get("model", weights)
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


def load_trained(run, which: str = "best"):
    """The trained network of a run (eval mode, CPU), its input normaliser, and the checkpoint path."""
    from bigmodel_cli import checkpoint
    from bigmodel_cli.data.transform import normalizer

    path = checkpoint.resolve(run.path, which)
    state = checkpoint.load(path, expect=model_meta(run.recipe, run.manifest))
    net = build_network(run.recipe, run.manifest, pretrained=False)
    checkpoint.load_weights(net, state, path)
    net.eval()
    return net, normalizer(run.manifest).eval(), path
