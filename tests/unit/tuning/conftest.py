"""Prepared breast-cancer data shared by the tuning tests (trials run `bigmodel train` on it)."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def cancer_data(tmp_path_factory) -> Path:
    from bigmodel_cli.config.recipe import resolve
    from bigmodel_cli.data.prepare import prepare

    root = tmp_path_factory.mktemp("cancer") / "data"
    prepare(resolve("breast-cancer-mlp", {"data.prepared": str(root)}))
    return root
