"""Every recipe `bigmodel recipes list` shows is a usable starting point: it validates, names a registered
model of the right kind, and its header gives the commands that run it and the result we measured."""

from __future__ import annotations

import re

import pytest

from bigmodel_cli.config import catalog
from bigmodel_cli.config.recipe import problems, resolve
from tests.conftest import REPO, run_cli

# the catalogue issue 9 promises; the listing may grow, never shrink
PROMISED = {"digits-cnn", "breast-cancer-mlp", "wine-mlp", "diabetes-regression", "tabular-csv", "mnist-cnn",
            "cifar10-resnet18", "imagefolder-resnet50", "imagefolder-vit", "text-transformer"}


# what `recipes list --json` prints, read in-process at collection (no subprocess before the tests run);
# test_the_promised_recipes_are_listed checks that the command prints exactly this
LISTED = [catalog.summary(catalog.path_of(name)) for name in catalog.names()]


def test_the_promised_recipes_are_listed():
    result = run_cli("recipes", "list", "--json", cwd=REPO)
    assert result.code == 0, result.stderr
    listed = result.json()["recipes"]
    assert {r["name"] for r in listed} >= PROMISED
    assert listed == LISTED


@pytest.mark.parametrize("entry", LISTED, ids=[r["name"] for r in LISTED])
def test_listed_recipe_validates_and_names_a_registered_model(entry):
    name, path = entry["name"], catalog.path_of(entry["name"])
    assert problems(path) == [], f"{name}: {problems(path)}"
    from bigmodel_cli.models.registry import list_models  # imports torch: in the test, not at collection

    recipe = resolve(name)
    assert recipe.name == name
    assert entry["description"] and entry["task"] == recipe.task
    models = list_models()
    assert recipe.model.name in models, f"{name}: model {recipe.model.name} is not registered"
    kinds = models[recipe.model.name]["kinds"]
    if recipe.data.kind != "auto":
        assert recipe.data.kind in kinds
    if entry["source"].startswith(("torchvision:", "sklearn:digits")):
        assert "image" in kinds


@pytest.mark.parametrize("entry", LISTED, ids=[r["name"] for r in LISTED])
def test_listed_recipe_header_has_commands_and_a_measured_result(entry):
    name = entry["name"]
    header = []
    for line in catalog.path_of(name).read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    text = "\n".join(header)
    assert header[0].startswith(f"# {name}: ")
    for command in (f"bigmodel prepare-data -r {name}", f"bigmodel train -r {name}", f"bigmodel eval runs/{name}",
                    f"bigmodel export runs/{name}"):
        assert command in text, f"{name}: header lacks `{command}`"
    measured = re.search(r"^# Measured: (.+)$", text, re.M)
    assert measured and not re.search(r"MEASURED|TODO|TBD", text), f"{name}: no measured result in the header"


def test_collecting_this_module_starts_no_process():
    """Issue 13: the catalogue used to run `bigmodel recipes list` while pytest collected it."""
    import subprocess
    import sys

    probe = ("import subprocess, sys\n"
             "start = subprocess.Popen.__init__\n"
             "def refuse(self, args, *a, **k):\n"
             "    if 'python' in str(args) or sys.executable in str(args):  # not a library's own helper (ldconfig)\n"
             "        raise AssertionError(f'a Python process was started at import: {args}')\n"
             "    return start(self, args, *a, **k)\n"
             "subprocess.Popen.__init__ = refuse\n"
             "import tests.cli.test_recipes_catalog as m\n"
             "print(len(m.LISTED))\n")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout) == len(catalog.names())
