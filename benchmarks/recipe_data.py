"""Generated data in the real format for the recipes whose real dataset is not on this machine.

    .venv/bin/python benchmarks/recipe_data.py churn data/churn.csv --rows 5000
    bigmodel prepare-data -r tabular-csv --source data/churn.csv --set data.target=churned

`churn`: a customer table with numbers, strings, booleans, missing values and an id column; the
label depends on several columns through a noisy logistic rule, so no model reaches accuracy 1.0.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np


def churn(path: Path, rows: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    plans = np.array(["basic", "plus", "pro"])
    regions = np.array(["north", "south", "east", "west"])
    tenure = rng.integers(1, 72, rows)
    charges = rng.normal(60, 20, rows).clip(10, 150)
    plan = plans[rng.integers(0, 3, rows)]
    region = regions[rng.integers(0, 4, rows)]
    support_calls = rng.poisson(1.5, rows)
    paperless = rng.random(rows) < 0.6
    logit = (-0.05 * tenure + 0.03 * (charges - 60) + 0.5 * support_calls - 0.8 * (plan == "pro")
             + 0.4 * (region == "south") + 0.3 * paperless + rng.normal(0, 1.0, rows))
    churned = np.where(logit > 0, "yes", "no")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["customer_id", "tenure_months", "monthly_charges", "plan", "region", "support_calls",
                         "paperless", "churned"])
        for i in range(rows):
            writer.writerow([f"C{i:06d}", "" if i % 17 == 0 else int(tenure[i]), round(float(charges[i]), 2),
                             "" if i % 23 == 0 else plan[i], region[i], int(support_calls[i]),
                             str(bool(paperless[i])).lower(), churned[i]])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["churn"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", type=int, default=5000)
    args = parser.parse_args()
    print(churn(args.out, args.rows))


if __name__ == "__main__":
    main()
