"""How the networks of a task are placed on devices: one device, DDP or FSDP2.

    strategy = Strategy.create(recipe.train, dist, device)
    strategy.wrap(parts)                       # parts.modules[name]: what the step calls
    with strategy.accumulating(parts, sync=boundary): ...   # no gradient all-reduce between micro-batches

DDP wraps each trained network on its own; FSDP2 (`fully_shard`) shards each repeated block
(children of Sequential/ModuleList holding at least 1000 parameters) and then the root, with a
bf16/fp16 compute policy for mixed precision; a network's `forward_methods` (a VAE's encode and decode) gather
their parameters as forward does. `train.sync_batchnorm` converts BatchNorm layers
for DDP so that N processes x batch b normalise like 1 process x N*b.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bigmodel_cli import console
from bigmodel_cli.errors import UsageError, first_line


@dataclass
class Strategy:
    kind: str  # single | ddp | fsdp
    device: torch.device
    precision: str
    activation_checkpointing: bool = False
    sync_batchnorm: bool = False
    compile: bool = False

    @classmethod
    def create(cls, cfg, dist, device: torch.device) -> Strategy:
        kind = "single"
        if dist.enabled:
            kind = "fsdp" if cfg.strategy == "fsdp" else "ddp"
        elif cfg.strategy == "fsdp":
            console.warn("train.strategy fsdp shards a model over several processes; with one it trains unsharded")
        return cls(kind, device, cfg.precision, cfg.activation_checkpointing, cfg.sync_batchnorm, cfg.compile)

    @property
    def sharded(self) -> bool:
        return self.kind == "fsdp"

    def describe(self, world: int) -> str:
        return f" x {world} processes ({self.kind})" if self.kind != "single" else ""

    def wrap(self, parts) -> None:
        """Move every network to the device and set `parts.modules` (wrapped, maybe compiled)."""
        for name, net in list(parts.networks.items()):
            parts.modules[name] = self._wrap_one(net)
        parts.inputs.to(self.device)
        for module in [*parts.losses.values(), *parts.frozen.values(), *parts.averaged.values()]:
            module.to(self.device)
        for frozen in parts.frozen.values():
            frozen.eval().requires_grad_(False)

    def _wrap_one(self, net: nn.Module):
        if self.sync_batchnorm and self.kind == "ddp":
            _convert_sync_batchnorm(net)
        net.to(self.device)
        if self.precision == "bf16-true":  # weights and activations in bf16, no autocast
            net.to(torch.bfloat16)
        if self.kind == "fsdp":
            shard(net, self.precision, self.activation_checkpointing, self.device)
            module: Any = net
        elif self.kind == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            module = DistributedDataParallel(net, device_ids=ids)
        else:
            module = net
        return compiled(module) if self.compile else module

    @contextlib.contextmanager
    def accumulating(self, parts, sync: bool):
        """Skip the gradient all-reduce on micro-batches that do not end an optimizer step."""
        if sync or self.kind == "single":
            yield
            return
        with contextlib.ExitStack() as stack:
            for net, module in zip(parts.networks.values(), parts.modules.values(), strict=True):
                if self.kind == "ddp":
                    inner = getattr(module, "_orig_mod", module)
                    stack.enter_context(inner.no_sync())
                else:
                    net.set_requires_gradient_sync(False)
                    stack.callback(net.set_requires_gradient_sync, True)
            yield

    @contextlib.contextmanager
    def gathered_through_penalty(self, net: nn.Module):
        """Around a forward whose output's gradient is taken with create_graph (R1, a gradient penalty) before the
        loss's backward: FSDP2 frees gathered weights at the end of each backward, and the penalty's own backward
        would free those the loss's backward still needs. Leaving the block, the next backward reshards."""
        if not self.sharded:
            yield
            return
        net.set_reshard_after_backward(False)
        try:
            yield
        finally:
            net.set_reshard_after_backward(True)

    def whole(self, net: nn.Module):
        """`net` as an averaged copy's update reads it (AveragedModel.update_parameters): FSDP2's parameter
        shards all-gathered (every rank updates its copy at the same step, so every rank joins)."""
        return _Whole(net) if self.sharded else net


class _Whole:
    def __init__(self, net: nn.Module):
        self.net = net

    def parameters(self):
        return (p.full_tensor() if hasattr(p, "full_tensor") else p for p in self.net.parameters())

    def buffers(self):
        return self.net.buffers()


def _convert_sync_batchnorm(net: nn.Module) -> None:
    """BatchNorm -> SyncBatchNorm in place (the children of `net`; the root itself is never a BatchNorm here)."""
    for name, child in net.named_children():
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(child)
        if converted is not child:
            setattr(net, name, converted)


class _CompileProbe:
    """torch.compile compiles at the first call, not when asked: the first forward tells whether it works."""

    def __init__(self, module, fallback):
        self.module, self.fallback, self.checked = module, fallback, False

    def __call__(self, *args, **kwargs):
        if self.checked:
            return self.module(*args, **kwargs)
        try:
            out = self.module(*args, **kwargs)
        except (MemoryError, torch.OutOfMemoryError):
            raise
        except Exception as e:  # no compiler toolchain, an unsupported op...
            first = first_line(e, 200)
            console.warn(f"train.compile: torch.compile failed at the first forward ({first}); training without it")
            self.module = self.fallback
            out = self.module(*args, **kwargs)
        self.checked = True
        return out

    def __getattr__(self, name):
        return getattr(self.module, name)


def compiled(module):
    try:
        return _CompileProbe(torch.compile(module), module)
    except Exception as e:  # torch.compile itself refuses (an unsupported Python, say)
        console.warn(f"train.compile: torch.compile is unavailable ({first_line(e, 200)}); "
                     "training without it")
        return module


def shard(net: nn.Module, precision: str, activation_checkpointing: bool,
          device: torch.device | None = None) -> nn.Module:
    """FSDP2: `fully_shard` each repeated block, then the root; optional activation checkpointing of the blocks.

    On a GPU, mixed precision is FSDP's own policy (parameters gathered in bf16/fp16). On CPU, parameters
    stay float32 and autocast alone lowers the compute: CPU BatchNorm cannot take bf16 weights beside float32
    running statistics.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    on_gpu = device is None or device.type == "cuda"
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision) if on_gpu else None
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype else MixedPrecisionPolicy()
    containers = (nn.Sequential, nn.ModuleList)
    blocks = [child for module in net.modules() if isinstance(module, containers) for child in module.children()
              if not isinstance(child, containers) and sum(p.numel() for p in child.parameters()) >= 1000]
    if activation_checkpointing and blocks:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

        wanted = set(map(id, blocks))
        apply_activation_checkpointing(net, check_fn=lambda m: id(m) in wanted)
    for block in blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(net, mp_policy=policy)
    for method in getattr(net, "forward_methods", ()):  # methods other than forward that run the network
        register_fsdp_forward_method(net, method)
    return net


def check_device_support(cfg, device: torch.device) -> None:
    """Refuse, before anything is written, settings this device cannot run."""
    if cfg.precision == "16-mixed" and device.type != "cuda":
        raise UsageError("train.precision 16-mixed needs a CUDA GPU; on CPU use bf16-mixed or 32")
    if cfg.sync_batchnorm and device.type != "cuda":
        raise UsageError("train.sync_batchnorm needs CUDA GPUs (torch's SyncBatchNorm runs on GPUs only); on CPU "
                         "each process normalises its own batch")
