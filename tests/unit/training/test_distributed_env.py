"""Who launches: torchrun / srun environments are detected so that bigmodel never launches twice."""

import pytest

from bigmodel_cli.training import distributed


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID",
                "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID", "SLURM_JOB_NODELIST", "SLURM_NODELIST"):
        monkeypatch.delenv(key, raising=False)


def test_plain_process_is_not_launched():
    assert not distributed.launched()
    assert distributed.from_env("cpu") == distributed.Dist(rank=0, world=1, local_rank=0)


def test_torchrun_worker_is_detected(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert distributed.launched()


def test_srun_step_gives_ranks_but_a_batch_script_does_not(monkeypatch):
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu-node-a")
    assert not distributed.launched()  # inside sbatch, outside srun: one process
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "8")
    assert distributed.launched()
    env = distributed._slurm_env()
    assert env["RANK"] == "3" and env["WORLD_SIZE"] == "8" and env["LOCAL_RANK"] == "1"
    assert env["MASTER_ADDR"] == "gpu-node-a" and env["MASTER_PORT"] == "29500"


def test_single_process_collectives_are_identities():
    d = distributed.Dist()
    assert d.sum(1.0, 2.5) == [1.0, 2.5] and d.gather_objects("x") == ["x"]
    import numpy as np

    out = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert d.gather_rows(out, 3) is out
