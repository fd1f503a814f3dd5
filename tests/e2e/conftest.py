"""The recipes' commands run through the real entry point (`bigmodel_cli.cli.app.main`) inside the test process.

A `bigmodel` subprocess spends several seconds importing torch, onnxruntime and scikit-learn before it does
anything, and an end-to-end recipe test runs five or more commands: most of its time went there. Here each
command runs in-process with its own working directory, environment, stdout and stderr, and its exit code
from `main`'s SystemExit. `serve` (a server that must be stopped) and several processes (`--devices N`) still
run as subprocesses, and tests/e2e/test_pipeline.py runs the whole path as a user's shell does.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import pytest

from tests.conftest import Result, run_cli


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
    """`cli("train", "-r", "digits-cnn")` runs the real command in a fresh folder, in-process."""
    return lambda *args, **kw: run_in_process(*args, cwd=kw.pop("cwd", tmp_path), **kw)
