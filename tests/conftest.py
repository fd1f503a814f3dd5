"""Shared fixtures: run the real `bigmodel` command, and a small trained digits run reused by many tests."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self):
        return json.loads(self.stdout)


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> Result:
    """Run `python -m bigmodel_cli ARGS` in a subprocess, as a user's shell or CI would."""
    full_env = {k: v for k, v in os.environ.items() if k != "BIGMODEL_DEBUG"}
    full_env.update({"CI": "1", "PYTHONWARNINGS": "ignore", **(env or {})})
    proc = subprocess.run([sys.executable, "-m", "bigmodel_cli", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def _several_processes(args: tuple[str, ...]) -> bool:
    for flag, value in zip(args, args[1:], strict=False):
        if flag == "--devices" and value.isdigit() and int(value) > 1:
            return True
    return any(a.startswith("--devices=") and a.split("=", 1)[1].isdigit() and int(a.split("=", 1)[1]) > 1
               for a in args)


def run_in_process(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> Result:
    """`bigmodel ARGS` through `main(argv)` in this process; the same Result as `run_cli`."""
    if (args and args[0] == "serve") or _several_processes(args):
        return run_cli(*args, cwd=cwd, env=env, timeout=timeout)
    import torch

    from bigmodel_cli.cli.app import main

    threads = torch.get_num_threads()
    if env and env.get("OMP_NUM_THREADS", "").isdigit():  # what the variable does to a fresh process
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    os.environ.pop("BIGMODEL_DEBUG", None)
    os.environ.update({"CI": "1", **(env or {})})
    os.chdir(cwd)
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            main(list(args))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        torch.set_num_threads(threads)
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli(tmp_path):
    """`cli("train", "-r", "digits-cnn")` runs the real command in a fresh folder, in-process (`run_in_process`).

    A `bigmodel` subprocess spends 5-6 s importing torch, torch._dynamo (the first optimizer), scikit-learn and
    matplotlib before it does anything; most CLI tests run several commands. Tests that need a process of their
    own (signals, exit by kill, C-level output on stdout, `python -m bigmodel_cli`) call `run_cli`.
    """
    return lambda *args, **kw: run_in_process(*args, cwd=kw.pop("cwd", tmp_path), **kw)


def history(run: Path, drop: tuple[str, ...] = ()) -> list[dict]:
    """A run's metrics.jsonl, one dict per epoch, without the keys in `drop` (timings that differ between runs)."""
    rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in drop} for row in rows]


def tree(path: Path) -> dict[str, int]:
    """Every file under `path` with its size: to assert that a failed command wrote nothing."""
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> Path:
    """A digits-cnn run trained for a few epochs, in-process (shared, read-only for tests)."""
    from bigmodel_cli.config.recipe import resolve
    from bigmodel_cli.data.prepare import prepare
    from bigmodel_cli.training.loop import fit

    root = tmp_path_factory.mktemp("digits")
    recipe = resolve("digits-cnn", {"data.prepared": str(root / "data")}, ["train.epochs=3"])
    prepare(recipe)
    fit(recipe, root / "run")
    return root / "run"
