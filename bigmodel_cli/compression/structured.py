"""Structured pruning with Torch-Pruning: whole channels and neurons removed, tensors made smaller.

    pruner = StructuredPruner(net, example, "resnet18", ratio=0.5, method="l2", steps=1)
    pruner.step()                         # the net now has half the channels in every prunable group
    macs, params = count(net, example)

Torch-Pruning traces the network into a dependency graph and removes coupled channels together (a
convolution's output, the batch norm after it, the next layer's input, every layer joined by a residual
addition), so the pruned network is an ordinary, smaller network: its speed-up is real on any runtime,
unlike masks. What is never pruned: the classifier head's outputs (the classes), the network's input,
and the width of attention layers (`nn.MultiheadAttention` cannot have an inner width other than its
embedding width, so a transformer keeps its residual width and loses feed-forward neurons instead).
Recurrent layers are refused: Torch-Pruning 1.6 finds no prunable group in an LSTM run over packed
sequences.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from bigmodel_cli.errors import UsageError, named_line
from bigmodel_cli.models.build import head_prefix

METHODS = ("l2", "taylor", "bn-scale")


def refuse_unprunable(net: nn.Module, what: str) -> None:
    """Exit 2 for networks the library cannot prune, before anything is traced."""
    recurrent = sorted({type(m).__name__ for m in net.modules() if isinstance(m, nn.RNNBase)})
    if recurrent:
        raise UsageError(f"model '{what}' cannot be pruned: Torch-Pruning finds no structured group in recurrent "
                         f"layers ({', '.join(recurrent)}) run over packed sequences; prune a convolutional, MLP or "
                         "transformer model, or train a smaller one (model.args) and distill it (--teacher)")


def check_method(net: nn.Module, method: str, what: str) -> None:
    if method not in METHODS:
        raise UsageError(f"--method {method}: expected one of {', '.join(METHODS)}")
    if method == "bn-scale" and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()):
        raise UsageError(f"--method bn-scale ranks channels by their BatchNorm scale, and model '{what}' has no "
                         "BatchNorm layer; use --method l2 or taylor")


def _importance(method: str):
    import torch_pruning as tp

    if method == "taylor":
        return tp.importance.GroupTaylorImportance()
    if method == "bn-scale":
        return tp.importance.BNScaleImportance()
    return tp.importance.GroupMagnitudeImportance(p=2)


def _is_attention_width(group, graph) -> bool:
    """A group that would change the width of an nn.MultiheadAttention (a transformer's residual stream)."""
    return any(isinstance(dep.target.module, nn.MultiheadAttention) and graph.is_out_channel_pruning_fn(dep.handler)
               for dep, _ in group)


class StructuredPruner:
    """Torch-Pruning's MetaPruner over every group but the head's outputs, `steps` times to reach `ratio`."""

    def __init__(self, net: nn.Module, example: torch.Tensor, what: str, ratio: float, method: str = "l2",
                 steps: int = 1, round_to: int | None = None):
        import torch_pruning as tp

        self.net, self.what, self.method = net, what, method
        head = dict(net.named_modules())[head_prefix(net)]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.pruner = tp.pruner.MetaPruner(
                    net, example, importance=_importance(method), pruning_ratio=ratio, iterative_steps=steps,
                    ignored_layers=[head], round_to=round_to)
        except Exception as e:  # the graph of a user's model that Torch-Pruning cannot trace
            raise UsageError(f"model '{what}' cannot be pruned: Torch-Pruning cannot trace it "
                             f"({named_line(e, 200)})") from e

    def step(self) -> int:
        """Prune to the next step's ratio; returns the number of groups pruned."""
        pruned = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for group in self.pruner.step(interactive=True):
                if _is_attention_width(group, self.pruner.DG):
                    continue
                group.prune()
                pruned += 1
        return pruned


def taylor_gradients(net: nn.Module, norm: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]],
                     task: str) -> None:
    """Gradients of the task's loss on a few training batches, which Taylor importance multiplies by weights."""
    net.zero_grad(set_to_none=True)
    was_training = net.training
    net.eval()  # batch norm statistics stay as trained; the gradients are what Taylor needs
    try:
        for x, y in batches:
            out = net(norm(x))
            if task == "classification":
                loss = nn.functional.cross_entropy(out, y.long())
            else:
                loss = nn.functional.mse_loss(out[:, 0], y.float())
            loss.backward()
    finally:
        net.train(was_training)


def count(net: nn.Module, example: torch.Tensor) -> dict[str, Any]:
    """Parameters and multiply-accumulates per input row (Torch-Pruning's counter)."""
    import torch_pruning as tp

    was_training = net.training
    net.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            macs, params = tp.utils.count_ops_and_params(net, example[:1])
    finally:
        net.train(was_training)
    return {"parameters": int(params), "macs": int(macs)}
