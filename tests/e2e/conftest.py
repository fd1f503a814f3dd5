"""The recipes' commands run through the real entry point (`bigmodel_cli.cli.app.main`) inside the test process.

A `bigmodel` subprocess spends several seconds importing torch, onnxruntime and scikit-learn before it does
anything, and an end-to-end recipe test runs five or more commands: most of its time went there. Here each
command runs in-process with its own working directory, environment, stdout and stderr, and its exit code
from `main`'s SystemExit. `serve` (a server that must be stopped) and several processes (`--devices N`) still
run as subprocesses, and tests/e2e/test_pipeline.py runs the whole path as a user's shell does.
"""

from __future__ import annotations

import pytest

from tests.conftest import run_in_process


@pytest.fixture
def cli(tmp_path):
    """`cli("train", "-r", "digits-cnn")` runs the real command in a fresh folder, in-process."""
    return lambda *args, **kw: run_in_process(*args, cwd=kw.pop("cwd", tmp_path), **kw)
