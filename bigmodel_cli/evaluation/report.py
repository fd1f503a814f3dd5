"""The evaluation report on the terminal (stderr): rich tables a person reads, never parsed.

    print_report(report)          # headline metrics (with CIs), per class, confusion matrix, gates
    print_side_by_side(reports)   # bigmodel eval RUN_A RUN_B: one column per run, best value in bold

Nothing is printed with `--json` (the console is quiet); the JSON document is the interface.
Tables are drawn at the terminal's width, or in logs (stderr not a terminal, or `CI` set) at
LOG_WIDTH = 100 columns. A confusion matrix wider than that is not wrapped: it is summarised as
the recall of each class and the largest confusions (the full matrix is in the JSON report and
the `_confusion.png` plot).
"""

from __future__ import annotations

import io
import textwrap
from typing import Any

from bigmodel_cli import console
from bigmodel_cli.console import fmt
from bigmodel_cli.evaluation.metrics import lower_is_better

LOG_WIDTH = 100  # columns of a table in logs
TOP_CONFUSIONS = 10  # off-diagonal cells listed when the matrix is summarised
NAME_CHARS = 24  # class names cut to this length in the summary


def width() -> int:
    """Columns tables may take: the terminal's, or LOG_WIDTH in logs."""
    return console.console.width if console.interactive() else LOG_WIDTH


def _emit(renderable) -> None:
    """Print a rich renderable on stderr within `width()` columns (in logs: rendered at LOG_WIDTH, then written
    as plain lines, so the log's own width never re-wraps them)."""
    if console.interactive():
        console.console.print(renderable)
        return
    from rich.console import Console

    buffer = Console(width=LOG_WIDTH, file=io.StringIO(), color_system=None, highlight=False)
    buffer.print(renderable)
    text = "\n".join(line.rstrip() for line in buffer.file.getvalue().splitlines())
    console.console.out(text, highlight=False)


def _natural_width(renderable) -> int:
    """Columns the renderable takes when nothing is wrapped."""
    from rich.console import Console
    from rich.measure import Measurement

    wide = Console(width=10_000, file=io.StringIO(), color_system=None)
    return Measurement.get(wide, wide.options, renderable).maximum


def print_report(report: dict[str, Any]) -> None:
    if console.is_quiet():
        return
    from rich.markup import escape
    from rich.table import Table

    source = report.get("model") or report.get("checkpoint")
    rows = f"split '{report['split']}' of" if report["split"] is not None else "every row of"
    head = f"{rows} {report['data']} ({report['n']} rows), {source}"
    console.console.print(f"[bold]{escape(str(report['run']))}[/bold]: {escape(head)}")  # styled, names escaped
    if "threshold" in report:
        console.info(f"decision threshold on P({report['classes'][1]}): {report['threshold']['value']:.4g} "
                     f"({report['threshold']['source']})")
    ci = report.get("ci") or {}
    table = Table("metric", "value", *([f"{ci['level']:.0%} CI"] if ci else []), box=None)
    for name, value in report["metrics"].items():
        interval = ci.get("intervals", {}).get(name) if ci else None
        extra = [f"[{interval[0]:.4f}, {interval[1]:.4f}]" if interval else ""] if ci else []
        table.add_row(name, fmt(value), *extra)
    _emit(table)
    if report.get("per_class"):
        _per_class(report)
    if report.get("confusion_matrix"):
        _confusion(report)
    if report.get("onnx"):
        agree = report["onnx"]
        line = f"ONNX vs PyTorch ({agree['checkpoint']}): max |difference| {agree['max_abs_difference']:.3g}"
        if "agreement" in agree:
            line += f", same predicted class on {agree['agreement']:.2%} of rows"
        console.info(line)
    for gate in report.get("gates", []):
        sign = ">=" if gate["kind"] == "fail_under" else "<="
        mark = "[green]pass[/green]" if gate["passed"] else "[red]FAIL[/red]"
        console.console.print(f"gate {escape(gate['metric'])} {sign} {gate['limit']:g}: {mark} ({fmt(gate['value'])})")
    console.info(f"wrote {report['files']['report']}")


def _per_class(report: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table("class", "precision", "recall", "f1", "roc_auc", "avg precision", "support", box=None)
    for name, row in report["per_class"].items():
        table.add_row(name, fmt(row["precision"]), fmt(row["recall"]), fmt(row["f1"]), fmt(row["roc_auc"]),
                      fmt(row["average_precision"]), str(row["support"]))
    _emit(table)


def _confusion(report: dict[str, Any]) -> None:
    """The matrix when it fits `width()` columns unwrapped; else recall per class and the largest confusions."""
    from rich.table import Table

    classes = report["classes"]
    table = Table("true \\ predicted", *classes, box=None, title="confusion matrix (count, row %)")
    for name, counts, rates in zip(classes, report["confusion_matrix"], report["confusion_matrix_normalized"],
                                   strict=True):
        cells = [f"{c} ({r:.0%})" if r is not None else str(c) for c, r in zip(counts, rates, strict=True)]
        table.add_row(name, *cells)
    needed, available = _natural_width(table), width()
    if needed <= available:
        _emit(table)
        return
    where = report.get("files", {}).get("report", "the JSON report")
    lines = [f"confusion matrix: {len(classes)} classes need {needed} columns, more than {available}; summarised "
             f"(the full matrix is in {where} and the _confusion.png plot)"]
    lines += confusion_summary(classes, report["confusion_matrix"])
    out: list[str] = []
    for line in lines:
        out += textwrap.wrap(line, available, subsequent_indent="    ", break_on_hyphens=False) or [""]
    console.console.out("\n".join(out), highlight=False)


def confusion_summary(classes: list[str], cm: list[list[int]], top: int = TOP_CONFUSIONS) -> list[str]:
    """'recall per class: a=0.95, b=0.80, ...' and one line per largest off-diagonal cell (true -> predicted)."""
    import numpy as np

    counts = np.asarray(cm, dtype=np.int64)
    support = counts.sum(axis=1)
    names = [n if len(n) <= NAME_CHARS else n[: NAME_CHARS - 1] + "~" for n in classes]
    recall = [f"{name}={counts[i, i] / support[i]:.2f}" if support[i] else f"{name}=-"
              for i, name in enumerate(names)]
    lines = ["recall per class (- where the class has no rows): " + ", ".join(recall)]
    off = counts.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:top]
    cells = [(int(k) // len(classes), int(k) % len(classes)) for k in order if off.flat[k] > 0]
    if not cells:
        return [*lines, "no confusions: every row is predicted as its own class"]
    lines.append(f"largest confusions (true -> predicted: rows, share of the true class's rows), top {len(cells)}:")
    lines += [f"  {names[t]} -> {names[p]}: {off[t, p]} row{'s' if off[t, p] > 1 else ''} "
              f"({off[t, p] / support[t]:.0%} of {names[t]})" for t, p in cells]
    return lines


def print_side_by_side(reports: list[dict[str, Any]]) -> None:
    """One row per metric, one column per run; the best value of each row in bold."""
    if console.is_quiet():
        return
    from rich.table import Table

    names: list[str] = []
    for report in reports:
        names += [m for m in report["metrics"] if m not in names]
    table = Table("metric", *[r["run"] for r in reports], box=None, title="side by side")
    for name in names:
        values = [r["metrics"].get(name) for r in reports]
        known = [v for v in values if v is not None]
        best = (min(known) if lower_is_better(name) else max(known)) if known else None
        table.add_row(name, *[f"[bold]{fmt(v)}[/bold]" if v is not None and v == best and len(known) > 1
                              else fmt(v) for v in values])
    _emit(table)
