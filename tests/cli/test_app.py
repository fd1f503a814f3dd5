"""The command itself: help, version, lazy imports, recipes commands, info."""

import subprocess
import sys

import yaml

from bigmodel_cli import __version__

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


def test_version_and_module_entry_point(cli):
    result = cli("--version")
    assert result.code == 0 and result.stdout.strip() == f"bigmodel {__version__}"
    help_text = cli("--help").stdout
    for command in ("info", "recipes", "prepare-data", "train", "eval", "export", "serve"):
        assert command in help_text


def test_recipes_list_show_copy(cli, tmp_path):
    listed = cli("recipes", "list", "--json").json()["recipes"]
    assert {"digits-cnn", "breast-cancer-mlp"} <= {r["name"] for r in listed}
    shown = cli("recipes", "show", "digits-cnn").stdout
    assert shown.startswith("# digits-cnn") and yaml.safe_load(shown)["name"] == "digits-cnn"
    assert cli("recipes", "copy", "digits-cnn", "mine.yaml").code == 0
    assert (tmp_path / "mine.yaml").read_text() == shown
    again = cli("recipes", "copy", "digits-cnn", "mine.yaml")
    assert again.code == 2 and "already exists" in again.stderr
    assert cli("recipes", "validate", "mine.yaml").code == 0


def test_info_json_lists_versions_devices_and_models(cli):
    report = cli("info", "--json").json()
    assert report["bigmodel_version"] == __version__
    assert report["torch"]["cuda_available"] in (True, False)
    assert "CPUExecutionProvider" in report["onnxruntime"]["usable_providers"]
    assert {"mlp", "cnn_small", "resnet18", "vit_b_16", "transformer_encoder", "lstm"} <= set(report["models"])
    assert report["distributed"]["gloo"] is True and report["distributed"]["backend"] in ("gloo", "nccl")
