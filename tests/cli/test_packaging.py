"""A plain (non-editable) install carries the recipes: `bigmodel recipes list` works without the repo."""

import json
import os
import subprocess
import sys
import zipfile

from tests.conftest import REPO


def test_wheel_ships_the_recipes_and_lists_them_outside_the_repo(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(REPO)], check=True, capture_output=True)
    (wheel,) = wheels.glob("bigmodel_cli-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(p.name for p in (REPO / "recipes").glob("*.yaml"))
    assert sorted(n.split("/")[-1] for n in names if n.startswith("bigmodel_cli/_recipes/") and
                  n.endswith(".yaml")) == shipped
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONSAFEPATH": "1"}
    proc = subprocess.run([sys.executable, "-m", "bigmodel_cli", "recipes", "list", "--json"], cwd=outside, env=env,
                          capture_output=True, text=True, check=True)
    listed = json.loads(proc.stdout)["recipes"]
    assert sorted(f"{r['name']}.yaml" for r in listed) == shipped
    assert all(r["path"].startswith(str(site)) for r in listed)
