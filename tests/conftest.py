"""Shared fixtures: run the real `bigmodel` command, and a small trained digits run reused by many tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


@pytest.fixture
def cli(tmp_path):
    """`cli("train", "-r", "digits-cnn")` runs the real command in a fresh folder."""
    return lambda *args, **kw: run_cli(*args, cwd=kw.pop("cwd", tmp_path), **kw)


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
