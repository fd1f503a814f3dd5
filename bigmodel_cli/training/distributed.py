"""Several processes, one run: torch.distributed under `bigmodel train`.

    bigmodel train -r digits-cnn --devices 2                      # 2 workers on this machine
    torchrun --nproc-per-node 4 -m bigmodel_cli train -r R        # launched by the user: no second launch
    srun python -m bigmodel_cli train -r R                        # SLURM: ranks from SLURM_* variables

`launch` hands the command to torch.distributed.run (the elastic launcher torchrun uses);
each worker finds its rank in the environment (`from_env`), joins the process group (NCCL on
GPUs, gloo on CPU) and binds its own GPU (LOCAL_RANK). `Dist` holds the few collectives the
trainer needs: agreeing to stop, and gathering validation outputs without duplicates.
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass

import numpy as np
import torch

from bigmodel_cli.errors import JobFailed, UsageError


@dataclass
class Dist:
    """This process's place in the run; `world == 1` means no process group at all."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, *values: float) -> list[float]:
        """Sum over ranks (one small all-reduce), so every rank sees the same totals and takes the same decisions."""
        if not self.enabled:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def sum_tensor(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a small tensor over ranks in place (values already on this rank's device)."""
        if self.enabled:
            import torch.distributed as dist

            values = values.to(self._device())
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def broadcast_object(self, obj):
        """Rank 0's `obj` on every rank (a decision or a state read from rank 0's files only)."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_rows(self, outputs: np.ndarray, n: int) -> np.ndarray:
        """Reassemble outputs of rows `rank::world` from every rank into the `n` rows, in order, no duplicates."""
        if not self.enabled:
            return outputs
        import torch.distributed as dist

        width = outputs.shape[1] if outputs.ndim == 2 else 1
        size = -(-n // self.world)  # every rank holds at most ceil(n / world) rows
        padded = torch.zeros(size, width, dtype=torch.float32, device=self._device())
        padded[: len(outputs)] = torch.from_numpy(outputs.reshape(len(outputs), width)).to(padded.device)
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        full = np.empty((n, width), dtype=np.float32)
        for r, part in enumerate(parts):
            rows = len(range(r, n, self.world))
            full[r::self.world] = part[:rows].cpu().numpy()
        return full

    def gather_objects(self, obj):
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def _device(self) -> torch.device:
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def _slurm_env() -> dict[str, str] | None:
    """torchrun-style variables from SLURM's, when started by `srun` without a launcher.

    SLURM_STEP_NUM_TASKS is set by `srun` for its job step, not in the batch script itself, so a
    script that runs `bigmodel train` directly in a multi-task allocation is one process, not a rank.
    """
    tasks = os.environ.get("SLURM_STEP_NUM_TASKS", "1")
    if "SLURM_PROCID" not in os.environ or tasks == "1":
        return None
    env = {"RANK": os.environ["SLURM_PROCID"], "WORLD_SIZE": tasks,
           "LOCAL_RANK": os.environ.get("SLURM_LOCALID", "0")}
    if "MASTER_ADDR" not in os.environ:
        nodes = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST") or "127.0.0.1"
        try:
            first = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True,
                                   check=True).stdout.split()[0]
        except (OSError, subprocess.CalledProcessError, IndexError):
            first = nodes.split(",")[0]
        env["MASTER_ADDR"] = first
    env.setdefault("MASTER_PORT", os.environ.get("MASTER_PORT", "29500"))
    return env


def launched() -> bool:
    """True inside a worker started by torchrun / torch.distributed.run / srun (do not launch again)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or _slurm_env() is not None


def from_env(device_type: str) -> Dist:
    """Join the process group described by the environment (or none); binds this rank's GPU."""
    slurm = _slurm_env()
    if slurm and "RANK" not in os.environ:
        os.environ.update(slurm)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import datetime

    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=10))
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank)


def shutdown(d: Dist) -> None:
    if d.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(worker_args: list[str], nproc: int, nnodes: int = 1, node_rank: int = 0, master_addr: str | None = None,
           master_port: int | None = None, rdzv_endpoint: str | None = None) -> None:
    """Run `python -m bigmodel_cli WORKER_ARGS` in `nproc` processes per node with torch.distributed.run.

    A failing worker ends the whole run: JobFailed (exit 1) naming the rank and its error.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = [f"--nproc-per-node={nproc}", f"--nnodes={nnodes}", "--max-restarts=0", "--monitor-interval=0.5"]
    if rdzv_endpoint:
        args += ["--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}"]
    elif nnodes == 1 and master_addr is None:
        args += ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{master_port or _free_port()}"]
    else:
        if master_addr is None:
            raise UsageError("--nnodes > 1 needs --master-addr HOST (the node-rank-0 machine) or --rdzv-endpoint")
        args += [f"--node-rank={node_rank}", f"--master-addr={master_addr}", f"--master-port={master_port or 29500}"]
    args += ["-m", "bigmodel_cli", *worker_args]
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    from bigmodel_cli.errors import Interrupted

    try:
        run(get_args_parser().parse_args(args))
    except SignalException as e:  # the launcher was told to stop: it passed the signal on to the workers
        raise Interrupted(f"interrupted ({e.sigval.name}): workers saved checkpoints/last.pt; continue with "
                          "--resume") from None
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        detail = failure.message
        while isinstance(detail, dict):
            detail = detail.get("message", "")
        detail = str(detail).strip().splitlines()[-1] if str(detail).strip() else ""
        if "To enable traceback" in detail or not detail:
            detail = f"exit code {failure.exitcode}"
        if failure.exitcode == 130:
            raise Interrupted(f"interrupted: {detail}") from None
        if failure.exitcode == 2:
            raise UsageError(f"worker rank {rank}: {detail}") from None
        raise JobFailed(f"worker rank {rank} failed: {detail}") from None


def shard(net: torch.nn.Module, precision: str, activation_checkpointing: bool) -> torch.nn.Module:
    """FSDP2: `fully_shard` each repeated block (children of Sequential/ModuleList holding >= 1000 parameters),
    then the root; optional activation checkpointing of the same blocks; bf16/fp16 compute policy."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype else MixedPrecisionPolicy()
    containers = (torch.nn.Sequential, torch.nn.ModuleList)
    blocks = [child for module in net.modules() if isinstance(module, containers) for child in module.children()
              if not isinstance(child, containers) and sum(p.numel() for p in child.parameters()) >= 1000]
    if activation_checkpointing and blocks:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

        wanted = set(map(id, blocks))
        apply_activation_checkpointing(net, check_fn=lambda m: id(m) in wanted)
    for block in blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(net, mp_policy=policy)
    return net
