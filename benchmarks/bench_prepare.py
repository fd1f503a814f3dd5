"""`bigmodel prepare-data` on a 1,000,000-row x 20-column CSV against pandas + scikit-learn doing the same steps.

    make bench            # or: .venv/bin/python benchmarks/bench_prepare.py [--rows 1000000]

The CSV (15 numeric columns, 4 categorical, a 3-class label, 1 % of values missing; about
290 MB) is generated in a temporary folder and deleted afterwards. Both sides run in their
own subprocess: read, drop duplicates, drop rows without a label, stratified 70/15/15 split,
impute (mean / most frequent, fitted on train), one-hot, scale (fitted on train), write
.npy. Wall time, peak resident memory (VmRSS, which counts pages of memory-mapped files too)
and peak private memory (RssAnon), polled from /proc, are printed side by side.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

BASELINE = r'''
import sys
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import LabelEncoder, OneHotEncoder, StandardScaler

src, out = sys.argv[1], sys.argv[2]
df = pd.read_csv(src)
df = df.drop_duplicates()
df = df.dropna(subset=["label"])
y = LabelEncoder().fit_transform(df["label"])
x = df.drop(columns=["label"])
numeric = [c for c in x.columns if c.startswith("num")]
categorical = [c for c in x.columns if c.startswith("cat")]
x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=0.15, stratify=y, random_state=0)
x_train, x_val, y_train, y_val = train_test_split(x_rest, y_rest, test_size=0.15 / 0.85, stratify=y_rest,
                                                  random_state=1)
pre = ColumnTransformer([
    ("num", make_pipeline(SimpleImputer(strategy="mean"), StandardScaler()), numeric),
    ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"),
                          OneHotEncoder(handle_unknown="ignore", sparse_output=False)), categorical),
])
pre.fit(x_train)
for name, xs, ys in (("train", x_train, y_train), ("val", x_val, y_val), ("test", x_test, y_test)):
    np.save(f"{out}/{name}_x.npy", pre.transform(xs).astype(np.float32))
    np.save(f"{out}/{name}_y.npy", ys.astype(np.int64))
'''

RECIPE = """name: bench
data: {source: SOURCE, target: label}
model: {name: mlp}
"""


def generate(path: Path, rows: int, seed: int = 0) -> None:
    """15 numeric, 4 categorical and a 3-class label column; 1 % of feature values missing."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    columns: dict[str, pa.Array] = {}
    for j in range(15):
        values = rng.normal(j, 1.0 + j, rows)
        columns[f"num{j}"] = pa.array(values, mask=rng.random(rows) < 0.01)
    levels = [["red", "green", "blue"], ["north", "south", "east", "west"], [f"k{i}" for i in range(8)],
              ["yes", "no"]]
    for j, names in enumerate(levels):
        codes = rng.integers(0, len(names), rows)
        columns[f"cat{j}"] = pa.DictionaryArray.from_arrays(pa.array(codes, mask=rng.random(rows) < 0.01),
                                                            pa.array(names)).cast(pa.string())
    label = (columns["num0"].fill_null(0).to_numpy() > 0).astype(int) + (codes == 0)
    columns["label"] = pa.array(np.array(["small", "medium", "large"])[label])
    options = pacsv.WriteOptions(quoting_style="needed")
    pacsv.write_csv(pa.table(columns), path, write_options=options)


def measure(cmd: list[str], cwd: Path) -> tuple[float, float, float]:
    """(wall seconds, peak RSS GiB, peak private memory (RssAnon) GiB) of one subprocess, polled from /proc."""
    from bench_memory_prepare import peak_memory

    wall, anon, rss = peak_memory(cmd, cwd, {**os.environ, "CI": "1"})
    return wall, rss / 1024, anon / 1024
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    try:
        source = tmp / "table.csv"
        generate(source, args.rows)
        print(f"{args.rows:,} rows x 20 columns, {source.stat().st_size / 2**20:.0f} MiB CSV")
        (tmp / "recipe.yaml").write_text(RECIPE.replace("SOURCE", str(source)))
        (tmp / "baseline").mkdir()
        (tmp / "baseline.py").write_text(BASELINE)
        cases = {
            "bigmodel prepare-data": [sys.executable, "-m", "bigmodel_cli", "prepare-data", "-r", "recipe.yaml",
                                      "--out", str(tmp / "prepared")],
            "pandas + scikit-learn": [sys.executable, "baseline.py", str(source), str(tmp / "baseline")],
        }
        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in cases}
        for _ in range(args.repeat):
            for name, cmd in cases.items():
                results[name].append(measure(cmd, tmp))
        best = {name: (min(w for w, _, _ in runs), max(m for _, m, _ in runs), max(a for _, _, a in runs))
                for name, runs in results.items()}
        ours, base = best["bigmodel prepare-data"], best["pandas + scikit-learn"]
        print(f"{'':<24} {'wall s':>8} {'peak RSS GiB':>13} {'peak RssAnon GiB':>17}")
        for name, (wall, peak, anon) in best.items():
            print(f"{name:<24} {wall:>8.2f} {peak:>13.2f} {anon:>17.2f}")
        print(f"prepare-data vs baseline: {base[0] / ours[0]:.2f}x faster, {ours[2] / base[2]:.2f}x the private memory "
              f"(goal: faster, and no more memory)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
