"""Peak private memory (RssAnon) of a command and its child processes, sampled from /proc every 20 ms.

    from peak_memory import peak_private_mib
    peak, code = peak_private_mib([sys.executable, "-m", "bigmodel_cli", "train", ...], cwd=work)

RssAnon is memory a process owns (heap, anonymous mappings): what `prlimit --data` caps and what
grows when a process copies data. Memory-mapped files that are read count as page cache, not here.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path


def _rss_anon_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    out = [int(k) for k in kids]
    for k in list(out):
        out += _children(k)
    return out


def peak_private_mib(cmd: list[str], cwd: Path, env: dict[str, str] | None = None,
                     timeout: float = 1800) -> tuple[float, int]:
    """(peak of the summed RssAnon of the process tree in MiB, exit code)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    peak, start = 0, time.monotonic()
    while proc.poll() is None:
        total = sum(_rss_anon_kib(p) for p in [proc.pid, *_children(proc.pid)])
        peak = max(peak, total)
        if time.monotonic() - start > timeout:
            proc.kill()
        time.sleep(0.02)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode:
        print(err[-2000:])
    return peak / 1024, proc.returncode
