"""Peak private memory (RssAnon) of `bigmodel prepare-data` as the data grows 8x: images and a CSV.

    .venv/bin/python benchmarks/bench_memory_prepare.py                      # 2,000 / 16,000 PNGs, 200k / 1.6M rows
    .venv/bin/python benchmarks/bench_memory_prepare.py --images 5000 --rows 0
    .venv/bin/python benchmarks/bench_memory_prepare.py --code /tmp/old-checkout   # measure another checkout

Sizes measured (N and 8N of each):
- an image folder of N = 2,000 and 16,000 PNGs, 64x64 RGB, 10 class folders (smooth random
  images; 16,000 are 196 MB of pixels once decoded);
- a CSV of N = 200,000 and 1,600,000 rows x 20 columns (15 numeric, 4 categorical, a 3-class
  label, 1 % of feature values missing; benchmarks/bench_prepare.py's generator), 58 and 460 MB.
The sources are generated once into a cache folder (default /tmp/bigmodel-bench-cache) and
reused. Each prepare-data runs in its own subprocess; a poller reads /proc/PID/status every
10 ms for RssAnon (private memory: heap, arrays, Arrow's pool) and VmRSS (which also counts
file pages mapped from the page cache, shared and reclaimable). ru_maxrss would report VmRSS
only, hence the poller. Goal (issue 14): the peak RssAnon at 8N is less than 1.15x that at N.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GOAL = 1.15


def make_images(root: Path, images: int, seed: int = 0) -> None:
    """Smooth random 64x64 RGB PNGs (gradients plus noise), 10 class folders; written to root.tmp then renamed."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    grid = np.linspace(0, 1, 64)[None, :, None]
    for i in range(images):
        label = i % 10
        folder = tmp / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.random((1, 1, 3)) * 255 * grid + rng.normal(0, 12, (64, 64, 3)) + label * 8
        Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(folder / f"{i:06d}.png")
    tmp.rename(root)


def make_csv(path: Path, rows: int) -> None:
    sys.path.insert(0, str(HERE))
    from bench_prepare import generate

    tmp = path.with_name(path.name + ".tmp")
    generate(tmp, rows)
    tmp.rename(path)


def peak_memory(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, float]:
    """(wall seconds, peak RssAnon MiB, peak VmRSS MiB) of one subprocess, polled from /proc every 10 ms."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    status = Path(f"/proc/{proc.pid}/status")
    anon = rss = 0
    while proc.poll() is None:
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
            anon = max(anon, int(fields.get("RssAnon", "0 kB").split()[0]))
            rss = max(rss, int(fields.get("VmRSS", "0 kB").split()[0]))
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.read().decode()}")
    return wall, anon / 1024, rss / 1024


def measure(kind: str, source: Path, code: Path, work: Path) -> tuple[float, float, float]:
    recipe = work / "recipe.yaml"
    recipe.write_text(f"name: bench\ndata: {{source: '{source}', target: label}}\nmodel: {{name: mlp}}\n")
    env = {**os.environ, "CI": "1", "PYTHONPATH": str(code)}
    out = work / "prepared"
    try:
        return peak_memory([sys.executable, "-m", "bigmodel_cli", "prepare-data", "-r", str(recipe), "--out",
                            str(out)], work, env)
    finally:
        shutil.rmtree(out, ignore_errors=True)  # each run starts without a previous output folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000, help="N images (8N measured too); 0 to skip")
    parser.add_argument("--rows", type=int, default=200_000, help="N CSV rows (8N measured too); 0 to skip")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "bigmodel-bench-cache")
    parser.add_argument("--code", type=Path, default=HERE.parent, help="checkout whose bigmodel_cli is measured")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    cases: list[tuple[str, int, Path]] = []
    for n in ([args.images, 8 * args.images] if args.images else []):
        root = args.cache / f"images-64px-{n}"
        if not root.is_dir():
            print(f"generating {n:,} PNGs in {root} ...", flush=True)
            make_images(root, n)
        cases.append(("image folder", n, root))
    for n in ([args.rows, 8 * args.rows] if args.rows else []):
        path = args.cache / f"table-{n}.csv"
        if not path.is_file():
            print(f"generating a {n:,}-row CSV in {path} ...", flush=True)
            make_csv(path, n)
        cases.append(("CSV rows", n, path))
    print(f"code: {args.code}")
    print(f"{'source':<14} {'size':>10} {'wall s':>8} {'peak RssAnon MiB':>17} {'peak VmRSS MiB':>15}")
    peaks: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        for kind, n, source in cases:
            wall, anon, rss = measure(kind, source, args.code.resolve(), Path(tmp))
            peaks[(kind, n)] = anon
            print(f"{kind:<14} {n:>10,} {wall:>8.1f} {anon:>17.0f} {rss:>15.0f}", flush=True)
    for kind, n, _ in cases[::2]:
        ratio = peaks[(kind, 8 * n)] / peaks[(kind, n)]
        print(f"{kind}: peak RssAnon at 8x the data is {ratio:.2f}x ({'meets' if ratio < GOAL else 'misses'} "
              f"the goal of < {GOAL:.2f}x)")


if __name__ == "__main__":
    main()
