"""Private memory of `bigmodel train` as the data grows 8x: memory-mapped splits, not copies.

    .venv/bin/python benchmarks/bench_memory_train.py [--rows 5000] [--devices 1]

Data: random uint8 images of 64x64x3 (12 KiB each) in prepare-data's layout, N and 8N training
rows (5,000 and 40,000 by default: 61 MB and 492 MB of pixels). Model: cnn_small at width 8,
one epoch, batch 256, CPU. Peak RssAnon of the whole process tree (the launcher and its workers
with `--devices 2`) is sampled every 20 ms. Goal (issue 14): the 8x data grows peak private memory
by less than 15 %.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peak_memory import peak_private_mib  # noqa: E402

SHAPE = (3, 64, 64)


def write_images(root: Path, rows: int) -> Path:
    from bigmodel_cli.data.manifest import FORMAT_VERSION

    rng = np.random.default_rng(0)
    for split, n in (("train", rows), ("val", 512), ("test", 64)):
        (root / split).mkdir(parents=True)
        x = np.lib.format.open_memmap(root / split / "x.npy", "w+", np.uint8, (n, *SHAPE))
        for start in range(0, n, 4096):  # written in chunks: this script's memory stays small too
            x[start:start + 4096] = rng.integers(0, 256, (min(4096, n - start), *SHAPE), dtype=np.uint8)
        x.flush()
        del x
        np.save(root / split / "y.npy", rng.integers(0, 10, n).astype(np.int64))
    manifest = {"format_version": FORMAT_VERSION, "name": "mem", "task": "classification", "kind": "image",
                "source": "generated", "source_sha256": "0" * 64, "fingerprint": "0" * 64, "target": "label",
                "classes": [str(i) for i in range(10)], "features": ["pixels"], "input_shape": list(SHAPE),
                "input_dtype": "uint8", "splits": {"train": rows, "val": 512, "test": 64}, "seed": 0, "report": {},
                "preprocessing": {"normalize": {"scale": 1 / 255, "mean": [0.5] * 3, "std": [0.29] * 3,
                                                "per": "channel"}}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--devices", type=int, default=1)
    args = parser.parse_args()
    peaks = {}
    with tempfile.TemporaryDirectory(prefix="bench-mem-train-") as tmp:
        for rows in (args.rows, 8 * args.rows):
            work = Path(tmp) / str(rows)
            data = write_images(work / "data", rows)
            recipe = work / "mem.yaml"
            recipe.write_text(f"name: mem\ndata: {{prepared: {data}}}\nmodel: {{name: cnn_small, args: {{width: 8}}}}\n"
                              "train: {epochs: 1, batch_size: 256, early_stopping: {patience: null}}\n")
            cmd = [sys.executable, "-m", "bigmodel_cli", "train", "-r", str(recipe), "--run-dir", str(work / "run"),
                   "--devices", str(args.devices)]
            peak, code = peak_private_mib(cmd, cwd=work, env={"CI": "1"})
            if code:
                raise SystemExit(f"train failed on {rows} rows (exit {code})")
            peaks[rows] = peak
            print(f"{rows:>7} images 64x64x3 ({rows * np.prod(SHAPE) / 1e6:.0f} MB), {args.devices} process(es): "
                  f"peak private memory {peak:.0f} MiB", flush=True)
    small, large = peaks[args.rows], peaks[8 * args.rows]
    print(f"cnn_small width 8, 1 epoch: 8x the data -> {large / small:.3f}x the peak private memory (goal < 1.15)")


if __name__ == "__main__":
    main()
