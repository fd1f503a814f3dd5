"""`bigmodel predict` against hand-written scripts doing the same work: a 1,000,000-row CSV and 10,000 PNGs.

    make bench     # or: .venv/bin/python benchmarks/bench_predict.py [--rows 1000000] [--images 10000]
    .venv/bin/python benchmarks/bench_predict.py --images 0            # the table only
    .venv/bin/python benchmarks/bench_predict.py --repeat 1            # one run of each side (default: best of 3)

Tables: the 20-column CSV of benchmarks/bench_prepare.py (15 numeric columns, 4 categorical, a
3-class label, 1 % of values missing; 298 MiB at 1M rows). An MLP is trained on its first 20,000
rows and exported to ONNX; then `bigmodel predict model.onnx --data big.csv --out preds.csv` is
timed against a pandas + ONNX Runtime script that does the same preprocessing (the imputation
values, categories and feature order of the model's metadata: pandas.read_csv, fillna, one-hot
through pandas.Categorical codes, session.run in batches of 4,096, softmax, DataFrame.to_csv).
Goal (issue 19): at least 2x the baseline's rows/s with peak private memory (RssAnon) under 1 GiB.

Images: 10,000 64x64 RGB PNGs in 10 class folders (benchmarks/bench_memory_prepare.py's
generator). A cnn_small (width 16) is trained on 1,000 other such images and exported; then
`bigmodel predict model.onnx --data folder/` against a loop of PIL (open, convert RGB, resize
when needed) + ONNX Runtime in batches of 64 + DataFrame.to_csv, onnxruntime with its default
threads on both sides. Goal: at least 0.9x the baseline's images/s.

Both sides run as subprocesses, taking turns (--repeat times each; the best time of each is
kept), each timed from start to exit (imports included) with private memory polled from /proc;
their outputs are compared (the same predicted class on every row, and the largest difference
of probabilities). Sources are generated once into --cache. The machine's load average is
printed with the figures: on a shared machine the ratio is the figure to read.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TABLE_BASELINE = r'''
import json, sys
import numpy as np, onnxruntime as ort, pandas as pd

model, source, out = sys.argv[1:4]
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
meta = session.get_modelmeta().custom_metadata_map
spec, classes = json.loads(meta["table_preprocessing"]), json.loads(meta["class_names"])
frame = pd.read_csv(source)
parts = []
for c in spec["columns"]:
    column = frame[c["name"]]
    if c["type"] == "numeric":
        values = pd.to_numeric(column, errors="coerce").astype("float64").fillna(c["fill"]).to_numpy()
        if c["bins"] is not None:
            values = np.searchsorted(np.asarray(c["bins"]), values, side="right")
        parts.append(values.astype(np.float32)[:, None])
        continue
    if c["fill"] is not None:
        column = column.fillna(c["fill"])
    codes = pd.Categorical(column.astype(str).where(column.notna()), categories=c["categories"]).codes
    if c["encoding"] == "ordinal":
        parts.append(codes.astype(np.float32)[:, None])
    else:
        onehot = np.zeros((len(codes), len(c["categories"])), dtype=np.float32)
        rows = np.flatnonzero(codes >= 0)
        onehot[rows, codes[rows]] = 1.0
        parts.append(onehot)
x = np.hstack(parts)
logits = np.concatenate([session.run(["logits"], {"input": x[i:i + 4096]})[0] for i in range(0, len(x), 4096)])
z = np.exp(logits - logits.max(axis=1, keepdims=True))
proba = (z / z.sum(axis=1, keepdims=True)).astype(np.float32)
best = proba.argmax(axis=1)
result = pd.DataFrame({"prediction": np.asarray(classes)[best], "probability": proba[np.arange(len(best)), best]})
for j, name in enumerate(classes):
    result[f"p_{name}"] = proba[:, j]
result.to_csv(out, index=False)
'''

IMAGE_BASELINE = r'''
import json, sys
from pathlib import Path
import numpy as np, onnxruntime as ort, pandas as pd
from PIL import Image

model, folder, out = sys.argv[1:4]
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
meta = session.get_modelmeta().custom_metadata_map
classes = json.loads(meta["class_names"])
channels, height, width = json.loads(meta["input_shape"])
files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
rows = []
for start in range(0, len(files), 64):
    batch = []
    for path in files[start:start + 64]:
        with Image.open(path) as im:
            im = im.convert("RGB" if channels == 3 else "L")
            if im.size != (width, height):
                im = im.resize((width, height), Image.Resampling.BILINEAR)
            pixels = np.asarray(im, dtype=np.uint8)
        batch.append(pixels.transpose(2, 0, 1) if pixels.ndim == 3 else pixels[None])
    logits = session.run(["logits"], {"input": np.stack(batch).astype(np.float32)})[0]
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    rows.append(z / z.sum(axis=1, keepdims=True))
proba = np.concatenate(rows).astype(np.float32)
best = proba.argmax(axis=1)
result = pd.DataFrame({"path": [str(p) for p in files], "prediction": np.asarray(classes)[best],
                       "probability": proba[np.arange(len(best)), best]})
for j, name in enumerate(classes):
    result[f"p_{name}"] = proba[:, j]
result.to_csv(out, index=False)
'''


def run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env={**os.environ, "CI": "1"}, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")


def train_and_export(work: Path, source: Path, extra: str) -> Path:
    """prepare-data, train (1 epoch) and export a small model on `source`; the ONNX path."""
    recipe = work / "recipe.yaml"
    recipe.write_text(f"name: bench-predict\ndata: {{source: '{source}', prepared: '{work / 'data'}'{extra}}}\n"
                      f"train: {{epochs: 1, batch_size: 256, early_stopping: {{patience: null}}}}\n"
                      f"eval: {{fail_under: {{}}}}\n" + ("model: {name: mlp, args: {hidden: [64]}}\n"
                                                         if "target" in extra else
                                                         "model: {name: cnn_small, args: {width: 16}}\n"))
    python = [sys.executable, "-m", "bigmodel_cli"]
    run([*python, "prepare-data", "-r", str(recipe)], work)
    run([*python, "train", "-r", str(recipe), "--run-dir", str(work / "run")], work)
    run([*python, "export", str(work / "run"), "--no-verify"], work)
    return work / "run" / "model.onnx"


def measure(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, peak private memory MiB) of one subprocess."""
    from bench_memory_prepare import peak_memory

    wall, anon, _ = peak_memory(cmd, cwd, {**os.environ, "CI": "1"})
    return wall, anon


def compare(ours: Path, base: Path, on: str | None) -> str:
    import numpy as np
    import pandas as pd

    a, b = pd.read_csv(ours), pd.read_csv(base)
    if on:
        b = b.set_index(on).loc[a[on]].reset_index()
    same = float((a["prediction"].astype(str) == b["prediction"].astype(str)).mean())
    columns = [c for c in a.columns if c.startswith("p_")]
    diff = float(np.abs(a[columns].to_numpy() - b[columns].to_numpy()).max())
    return f"same prediction on {same:.4%} of rows, probabilities within {diff:.1e}"


def side_by_side(name: str, unit: str, n: int, cases: dict[str, list[str]], work: Path, repeat: int,
                 goal: float) -> None:
    results: dict[str, list[tuple[float, float]]] = {label: [] for label in cases}
    loads = []
    for _ in range(repeat):  # the two sides take turns, so that both see the machine's load of the moment
        for label, cmd in cases.items():
            loads.append(os.getloadavg()[0])
            results[label].append(measure(cmd, work))
    best = {label: (min(w for w, _ in runs), max(m for _, m in runs)) for label, runs in results.items()}
    print(f"{name}: {n:,} {unit}, best of {repeat} runs each, taking turns; load average {min(loads):.1f} to "
          f"{max(loads):.1f} on {os.cpu_count()} cores")
    for label, runs in results.items():
        print(f"  {label}: runs of {', '.join(f'{w:.1f}' for w, _ in runs)} s")
    print(f"  {'':<30} {'wall s':>8} {unit + '/s':>12} {'peak RssAnon MiB':>17}")
    for label, (wall, anon) in best.items():
        print(f"  {label:<30} {wall:>8.2f} {n / wall:>12,.0f} {anon:>17.0f}")
    (ours, ours_mem), (base, _) = best["bigmodel predict"], list(best.values())[1]
    ratio = base / ours
    verdict = "meets" if ratio >= goal and (unit != "rows" or ours_mem < 1024) else "misses"
    print(f"  bigmodel predict: {ratio:.2f}x the baseline's {unit}/s (goal >= {goal}x"
          f"{', peak private memory < 1024 MiB' if unit == 'rows' else ''}): {verdict}")


def main() -> None:
    from bench_memory_prepare import make_images
    from bench_prepare import generate

    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000, help="CSV rows to predict (0: skip the table)")
    parser.add_argument("--images", type=int, default=10_000, help="PNGs to predict (0: skip the images)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side, taking turns (the best is kept)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "bigmodel-bench-cache")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    python = [sys.executable, "-m", "bigmodel_cli"]
    try:
        if args.rows:
            big = args.cache / f"table-{args.rows}.csv"
            if not big.is_file():
                print(f"generating a {args.rows:,}-row CSV in {big} ...", flush=True)
                generate(big.with_suffix(".tmp"), args.rows)
                big.with_suffix(".tmp").rename(big)
            (work / "table").mkdir()
            small = work / "table" / "train.csv"
            generate(small, 20_000, seed=1)
            model = train_and_export(work / "table", small, ", target: label")
            (work / "baseline_table.py").write_text(TABLE_BASELINE)
            ours, base = work / "ours.csv", work / "base.csv"
            side_by_side("CSV rows", "rows", args.rows, {
                "bigmodel predict": [*python, "predict", str(model), "--data", str(big), "--out", str(ours)],
                "pandas + onnxruntime script": [sys.executable, str(work / "baseline_table.py"), str(model), str(big),
                                                str(base)],
            }, work, args.repeat, 2.0)
            print(f"  outputs: {compare(ours, base, None)}")
        if args.images:
            folder = args.cache / f"images-64px-{args.images}"
            if not folder.is_dir():
                print(f"generating {args.images:,} PNGs in {folder} ...", flush=True)
                make_images(folder, args.images)
            (work / "images").mkdir()
            make_images(work / "images" / "train", 1000, seed=1)
            model = train_and_export(work / "images", work / "images" / "train", "")
            (work / "baseline_images.py").write_text(IMAGE_BASELINE)
            ours, base = work / "ours_images.csv", work / "base_images.csv"
            side_by_side("PNG images 64x64", "images", args.images, {
                "bigmodel predict": [*python, "predict", str(model), "--data", str(folder), "--out", str(ours)],
                "PIL + onnxruntime loop": [sys.executable, str(work / "baseline_images.py"), str(model), str(folder),
                                           str(base)],
            }, work, args.repeat, 0.9)
            print(f"  outputs: {compare(ours, base, 'path')}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
