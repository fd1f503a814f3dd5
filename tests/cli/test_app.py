"""The command itself: help, version, lazy imports, recipes commands, info."""

import subprocess
import sys

import yaml

from bigmodel_cli import __version__
from tests.conftest import run_cli

NO_TORCH = """
import sys
from bigmodel_cli.cli.app import main
try:
    main({args!r})
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in ("torch", "onnxruntime", "sklearn", "numpy", "transformers", "peft") if m in sys.modules)
print("HEAVY", heavy, "CODE", code, file=sys.stderr)
"""


def _imports(args):
    proc = subprocess.run([sys.executable, "-c", NO_TORCH.format(args=args)], capture_output=True, text=True)
    return proc.stderr.strip().splitlines()[-1]


def test_help_and_recipes_list_do_not_import_heavy_libraries():
    assert _imports(["--help"]) == "HEAVY [] CODE 0"
    assert _imports(["recipes", "list"]) == "HEAVY [] CODE 0"
    assert _imports(["train", "--help"]) == "HEAVY [] CODE 0"


def test_version_and_module_entry_point(tmp_path):
    result = run_cli("--version", cwd=tmp_path)  # `python -m bigmodel_cli`, in a process of its own
    assert result.code == 0 and result.stdout.strip() == f"bigmodel {__version__}"
    help_text = run_cli("--help", cwd=tmp_path).stdout
    for command in ("info", "recipes", "prepare-data", "train", "eval", "export", "serve"):
        assert command in help_text


def test_recipes_list_show_copy(cli, tmp_path):
    listed = cli("recipes", "list", "--json").json()["recipes"]
    assert {"digits-cnn", "breast-cancer-mlp"} <= {r["name"] for r in listed}
    human = cli("recipes", "list")
    assert human.code == 0 and human.stdout == ""  # the listing is for people: stderr
    lines = human.stderr.splitlines()
    assert lines[0].split() == ["recipe", "task", "model", "data"] and max(map(len, lines)) <= 100
    assert any(line.split()[:3] == ["digits-cnn", "classification", "cnn_small"] for line in lines)
    shown = cli("recipes", "show", "digits-cnn").stdout  # the file itself is the answer, as `cat` prints it
    assert shown.startswith("# digits-cnn") and yaml.safe_load(shown)["name"] == "digits-cnn"
    assert cli("recipes", "copy", "digits-cnn", "mine.yaml").code == 0
    copied = (tmp_path / "mine.yaml").read_text()
    assert yaml.safe_load(copied) == {**yaml.safe_load(shown), "name": "mine"}  # only the name differs
    assert copied.startswith("# mine: ") and "bigmodel train -r mine.yaml" in copied and "runs/mine" in copied
    assert len(copied.splitlines()) == len(shown.splitlines())  # every comment kept
    again = cli("recipes", "copy", "digits-cnn", "mine.yaml")
    assert again.code == 2 and "already exists" in again.stderr
    assert cli("recipes", "validate", "mine.yaml").code == 0


def test_copy_is_named_after_its_file_so_its_data_is_its_own(cli, tmp_path):
    """Issue 20: a copy that kept `name: breast-cancer-mlp` prepared its data into the shipped recipe's folder."""
    copied = cli("recipes", "copy", "breast-cancer-mlp", "my-recipe.yaml")
    assert copied.code == 0, copied.stderr
    assert yaml.safe_load((tmp_path / "my-recipe.yaml").read_text())["name"] == "my-recipe"
    prepared = cli("prepare-data", "-r", "my-recipe.yaml", "--json")
    assert prepared.code == 0, prepared.stderr
    assert prepared.json()["prepared"] == "data/my-recipe"
    assert (tmp_path / "data/my-recipe/manifest.json").is_file() and not (tmp_path / "data/breast-cancer-mlp").exists()
    named = cli("recipes", "copy", "breast-cancer-mlp", "other.yaml", "--name", "churn-v2")
    assert named.code == 0 and yaml.safe_load((tmp_path / "other.yaml").read_text())["name"] == "churn-v2"


def test_copy_refuses_a_name_that_would_share_a_shipped_recipes_folders(cli, tmp_path):
    for args, message in [
        (["digits-cnn", "digits-cnn.yaml"], "digits-cnn.yaml: the copy's name 'digits-cnn' (its file name) is a "
                                            "shipped recipe's name"),
        (["digits-cnn", "x.yaml", "--name", "wine-mlp"], "--name wine-mlp is a shipped recipe's name"),
        (["digits-cnn", "my recipe.yaml"], "'my recipe' (its file name) is not a valid recipe name"),
        (["digits-cnn", "."], "the copy's name 'digits-cnn'"),  # into a folder: the shipped file name
    ]:
        result = cli("recipes", "copy", *args)
        assert result.code == 2 and "pass --name" in result.stderr and message in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_info_lists_versions_devices_and_models(cli):
    import torch

    report = cli("info", "--json").json()
    assert report["bigmodel_version"] == __version__
    assert report["torch"]["version"] == torch.__version__
    assert report["torch"]["cuda_available"] is torch.cuda.is_available()
    assert len(report["torch"]["devices"]) == torch.cuda.device_count()
    assert "CPUExecutionProvider" in report["onnxruntime"]["usable_providers"]
    assert {"mlp", "cnn_small", "resnet18", "vit_b_16", "transformer_encoder", "lstm"} <= set(report["models"])
    assert report["distributed"]["gloo"] is True
    assert report["distributed"]["backend"] == ("nccl" if torch.cuda.is_available() else "gloo")
    from importlib import metadata

    assert report["extras"]["inception"] == {"torch-fidelity": metadata.version("torch-fidelity")}  # make install
    assert set(report["extras"]) == {"hf", "ops", "inception", "tensorboard"}  # has them all (the dev extra)
    human = cli("info")
    assert human.code == 0 and human.stdout == "" and f"bigmodel {__version__}" in human.stderr
    assert "inception (torch-fidelity " in human.stderr


def test_info_says_how_to_install_a_missing_extra(monkeypatch, cli):
    from bigmodel_cli import environment

    real = environment._version
    monkeypatch.setattr(environment, "_version", lambda name: None if name == "peft" else real(name))
    result = cli("info")
    assert result.code == 0 and "hf (not installed: pip install 'bigmodel-cli[hf]')" in result.stderr
