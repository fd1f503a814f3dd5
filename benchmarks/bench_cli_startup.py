"""`bigmodel --help` must answer in under 300 ms: measured side by side with `python -c "import torch"`.

    make bench            # or: .venv/bin/python benchmarks/bench_cli_startup.py

Each command runs REPEAT times after one warm-up; the median wall time is reported.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

REPEAT = 7
BIN = Path(sys.executable).parent


def wall(cmd: list[str]) -> float:
    subprocess.run(cmd, capture_output=True, check=True)  # warm the page cache
    times = []
    for _ in range(REPEAT):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    cases = {
        "bigmodel --help": [str(BIN / "bigmodel"), "--help"],
        "bigmodel recipes list": [str(BIN / "bigmodel"), "recipes", "list"],
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    }
    results = {name: wall(cmd) for name, cmd in cases.items()}
    torch_s = results["python -c 'import torch'"]
    print(f"{'command':<28} {'median ms':>10} {'vs import torch':>16}")
    for name, seconds in results.items():
        print(f"{name:<28} {seconds * 1000:>10.0f} {seconds / torch_s:>15.2f}x")
    help_ms = results["bigmodel --help"] * 1000
    print(f"goal: bigmodel --help < 300 ms -> {'met' if help_ms < 300 else 'NOT met'} ({help_ms:.0f} ms, "
          f"{torch_s / results['bigmodel --help']:.1f}x faster than importing torch)")


if __name__ == "__main__":
    main()
