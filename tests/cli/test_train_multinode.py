"""`bigmodel train --nnodes 2`: two machines simulated on loopback, two launchers with one gloo process each.

Each test starts two real `bigmodel train` launchers (node 0 and node 1), as a user of two machines would,
with the same run directory (shared storage) or one each (none). The model is breast-cancer-mlp's MLP wrapped
so that one rank can fail on cue: raise, be killed, kill its launcher, hang or send its launcher SIGTERM.
"""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from bigmodel_cli.config.recipe import resolve
from bigmodel_cli.data.prepare import prepare
from tests.conftest import history as shared_history

pytestmark = pytest.mark.slow

TRIGGERS = textwrap.dedent('''
    import os, signal, time
    from torch import nn
    from bigmodel_cli.models.mlp import mlp

    class Trigger(nn.Module):
        """breast-cancer-mlp's network; rank `rank` does `how` at its `at`-th training forward, once (stamp file)."""
        def __init__(self, net, at, how, rank, stamp):
            super().__init__()
            self.net, self.at, self.how, self.rank, self.stamp, self.calls = net, at, how, str(rank), stamp, 0
        def forward(self, x):
            out = self.net(x)
            if self.training and self.how != "none" and os.environ.get("RANK") == self.rank:
                self.calls += 1
                if self.calls == self.at and not os.path.exists(self.stamp):
                    with open(self.stamp, "w") as f:
                        f.write(f"{os.getpid()} {time.time()}")
                    if self.how == "raise":
                        raise RuntimeError("rank one exploded")
                    if self.how == "hang":
                        time.sleep(3600)
                    sig = signal.SIGTERM if self.how == "term" else signal.SIGKILL
                    os.kill(os.getppid() if self.how in ("term", "kill-launcher") else os.getpid(), sig)
            return out

    def build(num_classes, input_shape, hidden=(64, 32), dropout=0.1, at=-1, how="none", rank=1, stamp=""):
        return Trigger(mlp(num_classes, input_shape, hidden, dropout), at, how, rank, stamp)
''')

COMMON = ["--set", "model.name=null", "--set", "model.component=multinode_nets:build", "--set", "train.epochs=3"]
LOCAL = ("time_s", "samples_per_s")  # measured by rank 0, not computed


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode")
    prepare(resolve("breast-cancer-mlp", {"data.prepared": str(root / "data/breast-cancer-mlp")}, []))
    (root / "multinode_nets.py").write_text(TRIGGERS)
    return root


@dataclass
class Ended:
    code: int
    stderr: str
    at: float  # time.time() when the launcher was seen ended

    def last(self) -> str:
        return self.stderr.strip().splitlines()[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(work: Path, run_dirs: list[str], *args: str, per_node=((), ()), rdzv: bool = False,
              timeout: float = 180) -> list[Ended]:
    """Start node 0's and node 1's `bigmodel train` and wait for both; stderr of each, its exit code and end."""
    port = _free_port()
    env = {**{k: v for k, v in os.environ.items() if k != "BIGMODEL_DEBUG"}, "CI": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(work), os.environ.get("PYTHONPATH", "")])}
    procs, logs = [], []
    for node, run_dir in enumerate(run_dirs):
        where = ["--rdzv-endpoint", f"127.0.0.1:{port}"] if rdzv else \
            ["--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port)]
        cmd = [sys.executable, "-m", "bigmodel_cli", "train", "-r", "breast-cancer-mlp", "--nnodes", "2", *where,
               "--run-dir", run_dir, *COMMON, *args, *per_node[node]]
        logs.append(open(work / f"node{node}-{port}.err", "w+"))  # noqa: SIM115
        procs.append(subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=logs[-1]))
    ended: list[float | None] = [None, None]
    deadline = time.time() + timeout
    while None in ended and time.time() < deadline:
        for i, proc in enumerate(procs):
            if ended[i] is None and proc.poll() is not None:
                ended[i] = time.time()
        time.sleep(0.1)
    for proc in procs:
        if proc.poll() is None:  # hung: do not leave it behind
            proc.kill()
            proc.wait()
    results = []
    for proc, log, at in zip(procs, logs, ended, strict=True):
        log.seek(0)
        results.append(Ended(proc.returncode, log.read(), at if at is not None else float("inf")))
        log.close()
    return results


def history(run: Path) -> list[dict]:
    return shared_history(run, drop=tuple(LOCAL))


def fired(stamp: Path) -> tuple[int, float]:
    pid, at = stamp.read_text().split()
    return int(pid), float(at)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.fixture(scope="module")
def shared_run(work):
    """Two nodes writing one run directory (shared storage), static --master-addr rendezvous."""
    ends = two_nodes(work, ["shared", "shared"])
    assert [e.code for e in ends] == [0, 0], ends[0].stderr + ends[1].stderr
    return ends


def test_two_nodes_sharing_a_run_directory_train_like_two_processes_on_one(work, shared_run):
    assert "storage: shared is shared by all 2 nodes" in shared_run[0].stderr
    one = subprocess.run([sys.executable, "-m", "bigmodel_cli", "train", "-r", "breast-cancer-mlp", "--devices", "2",
                          "--run-dir", "single", *COMMON], cwd=work, capture_output=True, text=True, timeout=180,
                         env={**os.environ, "CI": "1", "PYTHONPATH": os.pathsep.join([str(work),
                                                                                      os.environ.get("PYTHONPATH",
                                                                                                     "")])})
    assert one.returncode == 0, one.stderr
    assert history(work / "shared") == history(work / "single")  # same numbers, bit for bit
    assert len(history(work / "shared")) == 3


def test_without_shared_storage_node_0_holds_the_run_and_resume_after_sigterm_is_exact(work, shared_run):
    stamp = work / "term-stamp"
    args = ["--set", f"model.args={{at: 2, how: term, rank: 0, stamp: {stamp}}}"]
    stopped = two_nodes(work, ["n0", "n1"], *args, rdzv=True)
    assert [e.code for e in stopped] == [130, 130], stopped[0].stderr + stopped[1].stderr
    assert "storage: n0 is not shared with node 1" in stopped[0].stderr
    assert "this node keeps nothing" in stopped[1].stderr  # node 1 says what it holds: nothing
    assert "saved n0/checkpoints/last.pt on node 0" in stopped[1].stderr  # not a path of its own
    saved = torch.load(work / "n0/checkpoints/last.pt", weights_only=True)["loop"]
    assert saved["epoch"] * 7 + saved["batch"] < 21  # stopped before the end (7 optimizer steps an epoch)
    assert not (work / "n1").exists()

    resumed = two_nodes(work, ["n0", "n1"], "--resume", rdzv=True)  # node 1 has no recipe.yaml: rank 0's is used
    assert [e.code for e in resumed] == [0, 0], resumed[0].stderr + resumed[1].stderr
    assert "resuming from n0/checkpoints/last.pt" in resumed[0].stderr
    assert history(work / "n0") == history(work / "shared")  # continued exactly
    for name in ("recipe.yaml", "preprocessing.json", "metrics.jsonl", "curves.png", "checkpoints/best.pt",
                 "checkpoints/last.pt"):
        assert (work / "n0" / name).is_file(), name
    assert not (work / "n1").exists()


def test_a_rank_raising_mid_epoch_ends_both_nodes_with_its_error(work):
    stamp = work / "raise-stamp"
    ends = two_nodes(work, ["r0", "r1"], "--set", f"model.args={{at: 5, how: raise, rank: 1, stamp: {stamp}}}")
    _, at = fired(stamp)
    assert [e.code for e in ends] == [1, 1]
    assert max(e.at for e in ends) - at < 60
    assert ends[1].last() == ("error: worker rank 1 failed: internal error: RuntimeError: rank one exploded (rerun "
                              "with --debug for the traceback)")
    assert ends[0].last().startswith("error: worker rank 1 (node 1, ")  # node 1's error, in node 0's output
    assert ends[0].last().endswith("failed: internal error: RuntimeError: rank one exploded (rerun with --debug "
                                   "for the traceback)")


@pytest.mark.parametrize("how", ["kill", "kill-launcher"])
def test_a_lost_worker_or_launcher_on_node_1_ends_both_nodes(work, how):
    stamp = work / f"{how}-stamp"
    ends = two_nodes(work, [f"{how}0", f"{how}1"], "--set",
                     f"model.args={{at: 5, how: {how}, rank: 1, stamp: {stamp}}}")
    worker, at = fired(stamp)
    assert ends[0].code == 1 and max(e.at for e in ends) - at < 60
    if how == "kill":
        assert ends[1].code == 1 and "SIGKILL" in ends[1].last()
        assert ends[0].last().startswith("error: worker rank 1 (node 1, ") and "SIGKILL" in ends[0].last()
    else:
        assert ends[1].code == -signal.SIGKILL  # the launcher itself; its worker (an orphan) must not train on
        deadline = at + 60
        while alive(worker) and time.time() < deadline:
            time.sleep(0.2)
        assert not alive(worker)
        assert "its launcher" in ends[0].last() and "was killed" in ends[0].last()


def test_a_silent_rank_fails_both_nodes_after_the_timeout(work):
    stamp = work / "hang-stamp"
    ends = two_nodes(work, ["h0", "h1"], "--set", "train.dist_timeout_s=3", "--set",
                     f"model.args={{at: 5, how: hang, rank: 1, stamp: {stamp}}}")
    _, at = fired(stamp)
    assert [e.code for e in ends] == [1, 1] and max(e.at for e in ends) - at < 60
    assert "no answer from the other ranks within train.dist_timeout_s (3 s)" in ends[0].last()
    assert ends[1].last().startswith("error: worker rank 0 (node 0, ")  # its watch ended the silent rank


def test_nodes_started_with_different_recipes_are_refused(work):
    ends = two_nodes(work, ["d0", "d1"], per_node=((), ("--set", "train.batch_size=16")))
    assert [e.code for e in ends] == [2, 2]
    for end in ends:
        assert "the nodes disagree: node 1 " in end.last() and "train.batch_size=16" in end.last()
    assert not (work / "d0").exists() and not (work / "d1").exists()


def test_fsdp_without_shared_storage_keeps_each_nodes_shards_and_resumes_from_them(work, shared_run):
    from bigmodel_cli import checkpoint
    from bigmodel_cli.errors import UsageError

    stamp = work / "fsdp-stamp"
    args = ["--set", "train.strategy=fsdp", "--set", f"model.args={{at: 2, how: term, rank: 0, stamp: {stamp}}}"]
    stopped = two_nodes(work, ["f0", "f1"], *args)
    assert [e.code for e in stopped] == [130, 130], stopped[0].stderr + stopped[1].stderr
    assert "keeps only its ranks' shards" in stopped[1].stderr
    assert sorted(p.name for p in (work / "f0/checkpoints/last").iterdir()) == [
        ".metadata", "__0_0.distcp", "shards.json", "state.pt"]
    assert sorted(str(p.relative_to(work / "f1")) for p in (work / "f1").rglob("*") if p.is_file()) == [
        "checkpoints/last/.metadata", "checkpoints/last/__1_0.distcp", "checkpoints/last/shards.json"]
    with pytest.raises(UsageError, match=r"__1_0\.distcp \(rank 1 on node 1 .*copy them here"):
        checkpoint.load(work / "f0/checkpoints/last")  # eval/export on node 0 say which shard is where

    (work / "f1/checkpoints/last").rename(work / "f1-away")  # node 1's shards are not where they were written
    lost = two_nodes(work, ["f0", "f1"], "--resume")
    assert [e.code for e in lost] == [2, 2]
    assert all("node 1 (" in e.last() and "has no f1/checkpoints/last" in e.last() for e in lost)

    (work / "f1-away").rename(work / "f1/checkpoints/last")
    resumed = two_nodes(work, ["f0", "f1"], "--resume")
    assert [e.code for e in resumed] == [0, 0], resumed[0].stderr + resumed[1].stderr
    for fsdp, ddp in zip(history(work / "f0"), history(work / "shared"), strict=True):  # FSDP sums in another order
        assert fsdp == pytest.approx(ddp, rel=1e-4)
