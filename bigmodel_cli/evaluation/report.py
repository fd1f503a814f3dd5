"""The evaluation report on the terminal (stderr): rich tables a person reads, never parsed.

    print_report(report)          # headline metrics (with CIs), per class, confusion matrix, gates
    print_side_by_side(reports)   # bigmodel eval RUN_A RUN_B: one column per run, best value in bold

Nothing is printed with `--json` (the console is quiet); the JSON document is the interface.
"""

from __future__ import annotations

from typing import Any

from bigmodel_cli import console
from bigmodel_cli.console import fmt
from bigmodel_cli.evaluation.metrics import lower_is_better

MAX_CONFUSION_CLASSES = 12  # larger matrices are in the JSON and the PNG only


def print_report(report: dict[str, Any]) -> None:
    if console.is_quiet():
        return
    from rich.table import Table

    source = report.get("model") or report.get("checkpoint")
    console.info(f"[bold]{report['run']}[/bold]: split '{report['split']}' of {report['data']} "
                 f"({report['n']} rows), {source}")
    if "threshold" in report:
        console.info(f"decision threshold on P({report['classes'][1]}): {report['threshold']['value']:.4g} "
                     f"({report['threshold']['source']})")
    ci = report.get("ci") or {}
    table = Table("metric", "value", *([f"{ci['level']:.0%} CI"] if ci else []), box=None)
    for name, value in report["metrics"].items():
        interval = ci.get("intervals", {}).get(name) if ci else None
        extra = [f"[{interval[0]:.4f}, {interval[1]:.4f}]" if interval else ""] if ci else []
        table.add_row(name, fmt(value), *extra)
    console.console.print(table)
    if report.get("per_class"):
        _per_class(report)
    if report.get("confusion_matrix") and len(report["classes"]) <= MAX_CONFUSION_CLASSES:
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
        console.info(f"gate {gate['metric']} {sign} {gate['limit']:g}: {mark} ({fmt(gate['value'])})")
    console.info(f"wrote {report['files']['report']}")


def _per_class(report: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table("class", "precision", "recall", "f1", "roc_auc", "avg precision", "support", box=None)
    for name, row in report["per_class"].items():
        table.add_row(name, fmt(row["precision"]), fmt(row["recall"]), fmt(row["f1"]), fmt(row["roc_auc"]),
                      fmt(row["average_precision"]), str(row["support"]))
    console.console.print(table)


def _confusion(report: dict[str, Any]) -> None:
    from rich.table import Table

    classes = report["classes"]
    table = Table("true \\ predicted", *classes, box=None, title="confusion matrix (count, row %)")
    for name, counts, rates in zip(classes, report["confusion_matrix"], report["confusion_matrix_normalized"],
                                   strict=True):
        cells = [f"{c} ({r:.0%})" if r is not None else str(c) for c, r in zip(counts, rates, strict=True)]
        table.add_row(name, *cells)
    console.console.print(table)


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
    console.console.print(table)
