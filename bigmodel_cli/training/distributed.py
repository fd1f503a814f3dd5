"""Several processes, one run: torch.distributed under `bigmodel train`.

    bigmodel train -r digits-cnn --devices 2                      # 2 workers on this machine
    bigmodel train -r R --devices 8 --nnodes 2 --node-rank 0 --master-addr node0   # and --node-rank 1 on node1
    torchrun --nproc-per-node 4 -m bigmodel_cli train -r R        # launched by the user: no second launch
    srun python -m bigmodel_cli train -r R                        # SLURM: ranks from SLURM_* variables

`launch` hands the command to torch.distributed.run (the elastic launcher torchrun uses);
each worker finds its rank in the environment (`from_env`), joins the process group (NCCL on
GPUs, gloo on CPU, `train.dist_timeout_s`) and binds its own GPU (LOCAL_RANK). `Dist` holds the
few collectives the trainer needs: agreeing to stop, gathering validation outputs without
duplicates, and rank 0's decisions and files shared with everyone.

A run never hangs on a failed rank:
- training collectives time out after `train.dist_timeout_s`; waits for one rank's file I/O
  (rank 0 reading or writing a checkpoint) use a second gloo group (`Dist.io`) with a generous
  timeout, so a large checkpoint is not mistaken for a lost node;
- a rank that fails leaves its error in the launcher's store (`Peers.post`) before it exits; a
  rank whose collective then breaks reports that error instead of "connection closed", so every
  node's log names the rank that failed first and why;
- a watch thread ends this worker when another rank has failed and this one did not notice (it
  was not in a collective), when its launcher is gone (torch.distributed.run starts workers in
  their own session: they would train on as orphans), or when node 0's store is unreachable;
- `shutdown` cannot hang the exit of a failed worker (destroy in a thread, NCCL aborted, and a
  faulthandler guard that ends the process if a C++ teardown blocks).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bigmodel_cli.errors import (
    BigmodelError,
    Interrupted,
    JobFailed,
    UsageError,
    first_line,
    named_line,
    report_to_launcher,
)

IO_TIMEOUT_S = 1800.0  # how long the other ranks wait for one rank reading or writing files (the io group)
NOTICE_WAIT_S = 8.0  # how long a rank whose connection broke waits for the failed rank's own error
GRACE_S = 3.0  # how long the watch lets this worker end by itself after another rank failed
STORE_LOST_S = 15.0  # how long node 0's store may be unreachable before this worker gives up
# recipe keys that may differ between nodes: local paths and what each machine can run
LOCAL_KEYS = ("data.prepared", "data.source", "model.weights", "train.devices", "train.loader_workers")


@dataclass
class Dist:
    """This process's place in the run; `world == 1` means no process group at all."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    node: int = field(default=0, compare=False)
    host: str = field(default_factory=socket.gethostname, compare=False)
    timeout_s: float = field(default=0.0, compare=False)
    shared: bool = field(default=True, compare=False)  # every rank sees rank 0's run directory
    folder_writer: bool = field(default=True, compare=False)  # makes checkpoint folders (see check_storage)
    layout: list[tuple[int, int, str, bool]] = field(default_factory=list, compare=False)  # (rank, node, host, sees)
    main_run_dir: str = field(default="", compare=False)  # rank 0's run directory, as rank 0 names it
    io: Any = field(default=None, compare=False, repr=False)  # gloo group for waits on one rank's files
    peers: Peers | None = field(default=None, compare=False, repr=False)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def where(self) -> str:
        return f"node {self.node} ({self.host})"

    def sum(self, *values: float) -> list[float]:
        """Sum over ranks (one small all-reduce), so every rank sees the same totals and takes the same decisions."""
        if not self.enabled:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def broadcast_object(self, obj):
        """Rank 0's `obj` on every rank (a decision or a state read from rank 0's files only).

        On the io group: the others may wait here while rank 0 reads a large checkpoint.
        """
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.io)
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
        dist.all_gather_object(out, obj, group=self.io)
        return out

    def barrier(self) -> None:
        """Wait for every rank, typically for rank 0 to finish writing (io group: no training timeout)."""
        if self.enabled:
            import torch.distributed as dist

            dist.barrier(group=self.io)

    def _device(self) -> torch.device:
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    # ------------------------------------------------------------------ failures

    def explain(self, error: BaseException) -> BaseException:
        """What this rank ends with: its own error (left for the others), or, when its connection to the others
        broke, the error of the rank that failed first."""
        if self.peers is None or isinstance(error, Interrupted):  # SIGINT/SIGTERM: every rank stops together
            return error
        broken = _broken_collective(error)
        mine = self._lost(error) if broken else error
        try:
            if not broken:
                self.peers.post(*describe(error))  # the first failure is kept; the others relay it
                return error
            timed_out = "timed out" in str(error).lower()
            notice = self.peers.read(0.0 if timed_out else NOTICE_WAIT_S) or self.peers.post(*describe(mine))
        except Exception:  # node 0's store is gone too
            return self._lost(error, store_gone=True) if broken else error
        return PeerFailed(notice) if notice["rank"] != self.rank else mine

    def _lost(self, error: BaseException, store_gone: bool = False) -> JobFailed:
        detail = re.sub(r"^\[[^\]]*\]\s*", "", first_line(error)).split(". This is typically")[0]
        if "timed out" in detail.lower() or "timeout" in detail.lower():
            return JobFailed(f"no answer from the other ranks within train.dist_timeout_s ({self.timeout_s:g} s): a "
                             f"rank stopped responding or the ranks disagree on the next step ({detail}); raise "
                             "train.dist_timeout_s if one rank legitimately works alone for longer")
        if store_gone:
            return JobFailed(f"lost the connection to the other ranks and to node 0's store: node 0 or its "
                             f"`bigmodel train` is gone ({detail})")
        return JobFailed(f"lost the connection to another rank, which left no error (killed, or its machine or "
                         f"network went down): {detail}")


class PeerFailed(BigmodelError):
    """This rank stopped because another one failed first: that rank's error, with its exit code."""

    def __init__(self, notice: dict[str, Any]):
        super().__init__(f"rank {notice['rank']} (node {notice['node']}, {notice['host']}) failed: "
                         f"{notice['message']}")
        self.exit_code = int(notice["code"])


def describe(error: BaseException) -> tuple[int, str]:
    """The exit code and the one line `bigmodel` prints for `error` (as cli/app.py does)."""
    if isinstance(error, BigmodelError):
        return error.exit_code, first_line(error)
    if isinstance(error, KeyboardInterrupt):
        return 130, "interrupted"
    return 1, f"internal error: {named_line(error)} (rerun with --debug for the traceback)"


def _broken_collective(error: BaseException) -> bool:
    """An error a collective raises when another rank is gone or silent (a symptom, not a cause)."""
    import torch.distributed as dist

    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    marks = ("gloo", "NCCL", "Connection closed", "Connection reset", "Broken pipe", "timed out", "Timed out")
    return isinstance(error, RuntimeError) and any(m in str(error) for m in marks)


class Peers:
    """Failure notices between ranks in the launcher's TCPStore, and the watch thread of this worker."""

    KEY = "bigmodel/failure"

    def __init__(self, d: Dist, addr: str, port: int):
        from torch.distributed import TCPStore

        self.d, self.addr, self.port = d, addr, port
        self._store = TCPStore(addr, port, is_master=False, timeout=timedelta(seconds=10), wait_for_workers=False)
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def post(self, code: int, message: str) -> dict[str, Any]:
        """Leave this rank's error for the others; the first failure posted is kept and returned."""
        mine = json.dumps({"rank": self.d.rank, "node": self.d.node, "host": self.d.host, "code": code,
                           "message": message})
        with self._lock:
            if self._store is None:  # stopped
                return json.loads(mine)
            held = self._store.compare_set(self.KEY, "", mine)
        return json.loads(held)

    def read(self, wait_s: float = 0.0) -> dict[str, Any] | None:
        deadline = time.monotonic() + wait_s
        while True:
            with self._lock:
                if self._store is None:  # stopped
                    return None
                if self._store.check([self.KEY]):
                    return json.loads(self._store.get(self.KEY))
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.2)

    def watch(self, launcher_pid: int | None) -> None:
        self._thread = threading.Thread(target=self._watch, args=(launcher_pid,), name="bigmodel-peers", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the watch thread and close the store connection now, while the interpreter is whole: a thread
        left inside a store call, or a store destroyed at interpreter exit, can abort the process
        ("terminate called without an active exception") after a run that succeeded."""
        self._stopped.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=15)  # one poll, or one store call's 10 s timeout
        with self._lock:
            self._store = None

    def _watch(self, launcher_pid: int | None) -> None:
        d, notice, seen, reachable = self.d, None, 0.0, time.monotonic()
        poll = 0.5 if d.world <= 64 else 2.0  # every rank asks the store: keep it light on large clusters
        while not self._stopped.wait(poll):
            if launcher_pid and os.getppid() != launcher_pid:
                message = f"its launcher (pid {launcher_pid}) ended: the `bigmodel train` of {d.where} was killed"
                with contextlib.suppress(Exception):
                    self.post(1, message)
                _die(1, f"rank {d.rank} on {d.where}: {message}; stopping this worker")
            if notice is None:
                try:
                    notice = self.read()
                    reachable = time.monotonic()
                except Exception:
                    if time.monotonic() - reachable > STORE_LOST_S:
                        _die(1, f"rank {d.rank} on {d.where}: lost contact with node 0 (the store at {self.addr}:"
                                f"{self.port}) for {STORE_LOST_S:g} s: node 0 or its launcher is gone")
                    continue
                if notice is not None and notice["rank"] == d.rank:
                    return  # this rank's own failure: its main thread is ending the process
                seen = time.monotonic()
            if notice is not None and time.monotonic() - seen > GRACE_S and not self._stopped.is_set():
                _die(int(notice["code"]), str(PeerFailed(notice)))


def _die(code: int, line: str) -> None:
    """End this worker now (from the watch thread: the main thread may be blocked in a collective)."""
    with contextlib.suppress(Exception):
        sys.stderr.write(f"error: {line}\n")
        sys.stderr.flush()
    report_to_launcher(line)
    os._exit(code)


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


def from_env(device_type: str, timeout_s: float = 45.0) -> Dist:
    """Join the process group described by the environment (or none); binds this rank's GPU."""
    slurm = _slurm_env()
    if slurm and "RANK" not in os.environ:
        os.environ.update(slurm)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    addr, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", "29500"))
    try:
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        io = dist.new_group(backend="gloo", timeout=timedelta(seconds=max(IO_TIMEOUT_S, timeout_s)))
    except (RuntimeError, ValueError) as e:
        raise JobFailed(f"could not join the other ranks at {addr}:{port} within train.dist_timeout_s "
                        f"({timeout_s:g} s): {first_line(e)}") from e
    node = int(os.environ.get("GROUP_RANK") or os.environ.get("SLURM_NODEID") or 0)
    d = Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank, node=node,
             timeout_s=timeout_s, io=io)
    with contextlib.suppress(Exception):  # without a reachable store: no notices, no watch (collectives still fail)
        d.peers = Peers(d, addr, port)
    if d.peers is not None:
        launcher = os.getppid() if "TORCHELASTIC_RUN_ID" in os.environ else None  # not under srun
        d.peers.watch(launcher)
        folder = os.environ.get("BIGMODEL_LAUNCH_DIR")
        if folder and os.path.isdir(folder):  # where this node's launcher finds the store after a worker was killed
            with contextlib.suppress(OSError):
                Path(folder, f"rank{d.rank}.json").write_text(json.dumps(
                    {"addr": addr, "port": port, "rank": d.rank, "node": node, "host": d.host}))
    return d


@contextlib.contextmanager
def together(d: Dist):
    """One rank's part of a run: its failure is left for the others (or another rank's explains it), and the
    process group is shut down without hanging."""
    failed = True
    try:
        yield
        failed = False
    except BaseException as e:
        explained = d.explain(e)
        if explained is e:
            raise
        raise explained from e
    finally:
        shutdown(d, failed)


_guard_file = None


def shutdown(d: Dist, failed: bool = False) -> None:
    """Leave the process group. After a failure this cannot hang: NCCL is aborted, gloo destroyed in a thread,
    and a faulthandler guard ends the process (exit 1) should a C++ teardown block it later."""
    if not d.enabled:
        return
    import faulthandler

    import torch.distributed as dist

    from bigmodel_cli.console import debug_enabled

    if d.peers is not None:
        d.peers.stop()
    if failed:
        global _guard_file
        _guard_file = sys.stderr if debug_enabled() else (_guard_file or open(os.devnull, "w"))  # noqa: SIM115
        faulthandler.dump_traceback_later(30, exit=True, file=_guard_file)
    if not dist.is_initialized():
        return
    if not failed:
        dist.destroy_process_group()
        return
    abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
    if dist.get_backend() == "nccl" and abort is not None:
        with contextlib.suppress(Exception):
            abort()
        return

    def destroy() -> None:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()

    ender = threading.Thread(target=destroy, daemon=True)
    ender.start()
    ender.join(10)


def agree(d: Dist, recipe, manifest: dict[str, Any], resume: bool):
    """The recipe every rank trains with: the same everywhere, checked once at the start.

    Nodes may differ only in local paths and what each machine runs (LOCAL_KEYS). A fresh run whose
    nodes were started with different recipes, versions or prepared data is refused (exit 2 on every
    rank); `--resume` takes rank 0's recipe, the run's own (another node may have no run directory).
    """
    if not d.enabled:
        return recipe
    from bigmodel_cli import __version__
    from bigmodel_cli.tracking.run_info import flatten as flat

    mine = {"recipe": recipe, "fingerprint": manifest.get("fingerprint"), "resume": resume, "where": d.where,
            "versions": f"bigmodel {__version__}, torch {torch.__version__}"}
    every = d.gather_objects(mine)
    main = every[0]
    base = flat(main["recipe"].model_dump(mode="json"))
    problems = []
    for other in every[1:]:
        who = other["where"]
        if other["versions"] != main["versions"]:
            problems.append(f"{who} runs {other['versions']}, {main['where']} {main['versions']}")
        if other["resume"] != main["resume"]:
            problems.append(f"{who} was started {'with' if other['resume'] else 'without'} --resume, "
                            f"{main['where']} {'with' if main['resume'] else 'without'}")
        if other["fingerprint"] != main["fingerprint"]:
            problems.append(f"{who} prepared other data (fingerprint {str(other['fingerprint'])[:12]}) than "
                            f"{main['where']} ({str(main['fingerprint'])[:12]}); prepare it with the same recipe "
                            "and source on every node")
        if not main["resume"]:
            theirs = flat(other["recipe"].model_dump(mode="json"))
            for key in sorted(set(base) | set(theirs)):
                if key not in LOCAL_KEYS and base.get(key) != theirs.get(key):
                    problems.append(f"{who} was started with {key}={theirs.get(key)!r}, {main['where']} with "
                                    f"{base.get(key)!r}")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UsageError(f"the nodes disagree: {problems[0]}{more}; start every node with the same recipe, --set "
                         f"options and prepared data (only {', '.join(LOCAL_KEYS)} may differ)")
    if not resume or d.is_main:
        return recipe
    own = flat(recipe.model_dump(mode="json"))  # rank 0's recipe with this node's local paths
    data = main["recipe"].data.model_copy(update={"prepared": recipe.data.prepared, "source": recipe.data.source})
    model = main["recipe"].model.model_copy(update={"weights": own.get("model.weights")})
    return main["recipe"].model_copy(update={"data": data, "model": model})


def check_storage(d: Dist, run_dir: Path, sharded: bool) -> None:
    """Whether every rank sees rank 0's run directory: rank 0 writes a marker there, the others look for it
    after a barrier. Sets `d.shared` and `d.folder_writer` (rank 0, and the first rank of each node that
    cannot see rank 0's run directory: it makes that node's checkpoint folders for FSDP shards)."""
    if not d.enabled:
        return
    import secrets

    marker = None
    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        marker = f".shared-{secrets.token_hex(8)}.tmp"  # a stale one is removed with the run's other .tmp files
        (run_dir / marker).write_text(d.host)
    marker, d.main_run_dir = d.broadcast_object((marker, str(run_dir)))
    sees = d.is_main or (run_dir / marker).is_file()
    d.layout = [tuple(x) for x in d.gather_objects((d.rank, d.node, d.host, sees))]
    if d.is_main:
        (run_dir / marker).unlink(missing_ok=True)
    d.shared = all(s for *_, s in d.layout)
    firsts: dict[int, int] = {}
    for r, n, _, s in d.layout:
        if not s:
            firsts.setdefault(n, r)
    d.folder_writer = d.is_main or firsts.get(d.node) == d.rank
    nodes = sorted({(n, h) for _, n, h, _ in d.layout})
    if len(nodes) == 1:
        return
    from bigmodel_cli import console

    keeps = "only its ranks' shards of the FSDP checkpoints, in checkpoints/ of its own --run-dir" if sharded \
        else "nothing"
    if d.shared:
        console.info(f"storage: {run_dir} is shared by all {len(nodes)} nodes")
    elif d.is_main:
        others = ", ".join(f"node {n} ({h})" for n, h in sorted({(n, h) for _, n, h, s in d.layout if not s}))
        console.info(f"storage: {run_dir} is not shared with {others}: node 0 ({d.host}) writes the whole run "
                     f"here; each other node keeps {keeps}")
    elif d.folder_writer:  # one line from each node without the run directory, in that node's own log
        console.console.print(f"{d.where}: {run_dir} here is not node 0's run directory (no shared storage): the "
                              f"run is written on node 0 ({d.layout[0][2]}); this node keeps {keeps}")


def on_main(d: Dist, run_dir: Path, name: str) -> str:
    """`run_dir / name` as the user finds it: in node 0's run directory when the storage is not shared."""
    if d.shared:
        return str(run_dir / name)
    return f"{Path(d.main_run_dir) / name} on node 0 ({d.layout[0][2]})"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RELAY = re.compile(r"rank \d+ \(node \d+, [^)]*\) failed: ")  # a worker reporting another rank's failure


def launch(worker_args: list[str], nproc: int, nnodes: int = 1, node_rank: int = 0, master_addr: str | None = None,
           master_port: int | None = None, rdzv_endpoint: str | None = None) -> None:
    """Run `python -m bigmodel_cli WORKER_ARGS` in `nproc` processes per node with torch.distributed.run.

    A failing worker ends the whole run: JobFailed (exit 1) naming the rank that failed first and its error, on
    every node (a worker killed by a signal could not say so itself: its launcher leaves the notice for it).
    """
    import shutil
    import tempfile

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
    from bigmodel_cli.console import debug_enabled

    if not debug_enabled():  # c10d's C++ warnings (with stack frames) when a peer is gone: the error line says it
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    folder = tempfile.mkdtemp(prefix="bigmodel-launch-")
    os.environ["BIGMODEL_LAUNCH_DIR"] = folder
    try:
        run(get_args_parser().parse_args(args))
    except SignalException as e:  # the launcher was told to stop: it passed the signal on to the workers
        raise Interrupted(f"interrupted ({e.sigval.name}): workers saved checkpoints/last.pt; continue with "
                          "--resume") from None
    except ChildFailedError as e:
        rank, failure, detail = _first_cause(e.failures)
        if failure.exitcode < 0:  # killed by a signal: tell the other nodes, whose connections just broke
            _post_for(Path(folder), rank, detail)
        who = f"worker {RELAY.match(detail).group(0)[:-len(' failed: ')]}" if RELAY.match(detail) \
            else f"worker rank {rank}"
        detail = RELAY.sub("", detail, count=1)
        if failure.exitcode == 130:
            raise Interrupted(f"interrupted: {detail}") from None
        if failure.exitcode == 2:
            raise UsageError(f"{who}: {detail}") from None
        raise JobFailed(f"{who} failed: {detail}") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _first_cause(failures: dict[int, Any]) -> tuple[int, Any, str]:
    """The failure to report: the earliest cause, not a worker relaying another rank's error nor one that the
    launcher stopped (SIGTERM) because another had failed."""

    def text(failure) -> str:
        detail = failure.message
        while isinstance(detail, dict):
            detail = detail.get("message", "")
        detail = str(detail).strip().splitlines()[-1] if str(detail).strip() else ""
        return f"exit code {failure.exitcode}" if "To enable traceback" in detail or not detail else detail

    found = sorted(((r, f, text(f)) for r, f in failures.items()), key=lambda x: (x[1].timestamp, x[0]))
    causes = [x for x in found if not RELAY.match(x[2])]
    first = [x for x in causes if x[1].exitcode not in (-signal.SIGTERM, 130)]
    return (first or causes or found)[0]


def _post_for(folder: Path, rank: int, detail: str) -> None:
    """Leave the notice a killed worker could not (see Peers.post), in the store its files name."""
    files = sorted(folder.glob("rank*.json"))
    if not files:
        return
    with contextlib.suppress(Exception):
        info = json.loads((folder / f"rank{rank}.json").read_text()) if (folder / f"rank{rank}.json").is_file() \
            else {**json.loads(files[0].read_text()), "rank": rank}
        from torch.distributed import TCPStore

        store = TCPStore(info["addr"], int(info["port"]), is_master=False, timeout=timedelta(seconds=3),
                         wait_for_workers=False)
        store.compare_set(Peers.KEY, "", json.dumps({"rank": rank, "node": info["node"], "host": info["host"],
                                                      "code": 1, "message": detail}))
