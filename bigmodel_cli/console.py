"""Where output goes: human text to stderr, one JSON document to stdout with `--json`.

`--json` keeps stdout clean for `jq`; everything a person reads goes through `console`
(stderr), listings included. Only documents go to stdout: the `--json` document, the
recipe file `recipes show` prints (as `cat` would), and `--version`.
Progress bars only when stderr is a terminal and `CI` is not set.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console

# everything a person reads: logs, progress, reports, listings (`info`, `recipes list`)
console = Console(stderr=True, highlight=False, soft_wrap=True)


def debug_enabled() -> bool:
    return os.environ.get("BIGMODEL_DEBUG", "") not in ("", "0", "false", "False")


def interactive() -> bool:
    """True when a progress bar makes sense: stderr is a terminal and not in CI."""
    return sys.stderr.isatty() and not os.environ.get("CI")


_quiet = False


def quiet(enable: bool) -> None:
    """Silence progress and human reports (used by `--json`); warnings still reach stderr."""
    global _quiet
    _quiet = enable


def is_quiet() -> bool:
    return _quiet


def info(message: str) -> None:
    if not _quiet:
        console.print(message, markup=False)  # plain text: "pip install 'bigmodel-cli[hf]'" keeps its [hf]


def warn(message: str) -> None:
    from rich.markup import escape

    console.print(f"[yellow]warning:[/yellow] {escape(message)}")


def fmt(value: Any) -> str:
    """A metric for people: 4 decimals for floats, `null` for undefined (as in the JSON reports)."""
    if value is None:
        return "null"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def print_json(document: Any) -> None:
    """Print one JSON document on stdout, nothing else."""
    sys.stdout.write(json.dumps(document, indent=2, default=_default, allow_nan=False) + "\n")
    sys.stdout.flush()


def _default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
