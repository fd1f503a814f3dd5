"""A trained and exported table run for the serving tests that need a real fitted preprocessing (raw rows, drift)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

CHURN_COLUMNS = ["tenure_months", "monthly_charges", "plan", "region", "support_calls", "paperless"]


def churn_csv(path: Path, rows: int = 400, seed: int = 0) -> Path:
    """A churn table as people have one: an id, numbers, strings, booleans, missing values, a yes/no label."""
    rng = np.random.default_rng(seed)
    plans, regions = np.array(["basic", "plus", "pro"]), np.array(["north", "south", "east", "west"])
    tenure, charges = rng.integers(1, 72, rows), rng.normal(60, 20, rows).clip(10, 150)
    plan, region = plans[rng.integers(0, 3, rows)], regions[rng.integers(0, 4, rows)]
    calls, paperless = rng.poisson(1.5, rows), rng.random(rows) < 0.6
    logit = -0.05 * tenure + 0.03 * (charges - 60) + 0.5 * calls - 0.8 * (plan == "pro") + rng.normal(0, 1, rows)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["customer_id", *CHURN_COLUMNS, "churned"])
        for i in range(rows):
            writer.writerow([f"C{i:06d}", "" if i % 17 == 0 else int(tenure[i]), round(float(charges[i]), 2),
                             "" if i % 23 == 0 else plan[i], region[i], int(calls[i]), str(bool(paperless[i])).lower(),
                             "yes" if logit[i] > 0 else "no"])
    return path


@pytest.fixture(scope="session")
def churn_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tabular-csv on a 400-row churn table, trained 2 epochs and exported (model.onnx with its table
    preprocessing in the metadata, profile.json); shared, read-only."""
    from bigmodel_cli import console
    from bigmodel_cli.config.recipe import resolve
    from bigmodel_cli.data.prepare import prepare
    from bigmodel_cli.export.onnx_export import export_run
    from bigmodel_cli.training.loop import fit

    root = tmp_path_factory.mktemp("churn")
    source = churn_csv(root / "churn.csv")
    recipe = resolve("tabular-csv", {"data.prepared": str(root / "data"), "data.source": str(source),
                                     "data.target": "churned", "data.drop": ["customer_id"],
                                     "model.args": {"hidden": [16]}}, ["train.epochs=2"])
    was_quiet = console.is_quiet()
    console.quiet(True)
    try:
        prepare(recipe)
        fit(recipe, root / "run")
        export_run(root / "run")
    finally:
        console.quiet(was_quiet)
    return root / "run"
