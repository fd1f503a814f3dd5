"""`--json` prints exactly one JSON document on stdout and nothing else there; without it, stdout stays empty
(human output is on stderr), so `bigmodel eval runs/x --json | jq .metrics.f1` and `2>/dev/null` both work.

Every command that has `--json` is run here, on one tiny breast-cancer-mlp run (1 epoch).
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

NAME = "breast-cancer-mlp"
# command path -> its arguments (run with --json, and again without it where that is cheap)
COMMANDS = {
    "info": [],
    "recipes list": [],
    "recipes validate": ["mine.yaml"],
    "prepare-data": ["-r", NAME],
    "train": ["-r", NAME, "--set", "train.epochs=1"],
    "eval": [f"runs/{NAME}"],
    "export": [f"runs/{NAME}", "--verify-samples", "16"],
    "benchmark": [f"runs/{NAME}", "--batch-sizes", "1", "--iterations", "2"],
    "tune": ["-r", NAME, "--space", "space.yaml", "--trials", "1", "--prune", "none", "--set", "train.epochs=1"],
}

# commands whose --json is checked on a run of their own kind elsewhere (one document parsed from stdout)
ELSEWHERE = {
    "generate": "tests/e2e/test_recipes_generative.py: generate needs a generation run",
    "predict": "tests/cli/test_predict.py: predict needs raw rows in the columns the run was trained on",
    "prune": "tests/cli/test_prune.py: prune needs a trained image run (Torch-Pruning traces a conv net)",
}


def commands_with_json() -> set[str]:
    """Every command of the real app that takes --json (so a new one cannot be left out of this test)."""
    import typer

    from bigmodel_cli.cli.app import app

    found = set()

    def walk(command, path: str) -> None:
        if hasattr(command, "commands"):  # a group (typer vendors its own click)
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}".strip())
        elif any("--json" in getattr(p, "opts", []) for p in command.params):
            found.add(path)

    walk(typer.main.get_command(app), "")
    return found


def one_document(stdout: str) -> dict:
    assert stdout.startswith("{"), f"something before the JSON document: {stdout[:200]!r}"
    return json.loads(stdout)  # raises on anything after the document too


def test_every_command_with_json_is_covered():
    assert commands_with_json() == set(COMMANDS) | set(ELSEWHERE)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("json")


@pytest.mark.slow
def test_json_is_one_document_and_human_output_is_on_stderr(workdir):
    assert run_cli("recipes", "copy", NAME, "mine.yaml", cwd=workdir).code == 0
    (workdir / "space.yaml").write_text("train.optimizer.lr: {float: [1.0e-4, 1.0e-2], log: true}\n")
    documents = {}
    for command, args in COMMANDS.items():  # in pipeline order: each step needs the one before
        result = run_cli(*command.split(), *args, "--json", cwd=workdir)
        assert result.code == 0, f"{command}: {result.stderr[-2000:]}"
        documents[command] = one_document(result.stdout)
    assert documents["prepare-data"]["prepared"] == f"data/{NAME}"
    assert documents["train"]["epochs_run"] == 1
    assert documents["eval"]["n"] == documents["prepare-data"]["manifest"]["splits"]["test"]
    assert documents["export"]["verification"]["passed"] is True
    assert documents["recipes validate"]["valid"] is True
    assert NAME in {r["name"] for r in documents["recipes list"]["recipes"]}

    # info and recipes list without --json: tests/cli/test_app.py
    for command in ("recipes validate", "prepare-data", "eval"):
        result = run_cli(*command.split(), *COMMANDS[command], cwd=workdir)
        assert result.code == 0, f"{command}: {result.stderr[-2000:]}"
        assert result.stdout == "", f"{command} printed human output on stdout: {result.stdout[:300]!r}"
        assert result.stderr.strip(), f"{command} printed nothing for people"


def test_a_failed_command_with_json_prints_nothing_on_stdout(tmp_path):
    result = run_cli("eval", "no-such-run", "--json", cwd=tmp_path)
    assert result.code == 2 and result.stdout == "" and result.stderr.startswith("error: ")
