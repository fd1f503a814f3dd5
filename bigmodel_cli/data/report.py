"""The data report of `prepare-data`: what was done to the user's data, as rich tables on stderr.

    bigmodel prepare-data -r digits-cnn          # tables on stderr
    bigmodel prepare-data -r digits-cnn --json | jq .manifest.report

The same facts are in `manifest.json["report"]`; warnings (a rare class, a split without a
class, a constant feature, skipped files) are printed even with `--json`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

RARE_CLASS_SHARE = 0.01


def class_warnings(class_counts: dict[str, dict[str, int]]) -> list[str]:
    """A class under 1 % of the rows, or missing from a non-empty split."""
    out: list[str] = []
    totals: dict[str, int] = {}
    for counts in class_counts.values():
        for name, n in counts.items():
            totals[name] = totals.get(name, 0) + n
    rows = sum(totals.values())
    for name, n in totals.items():
        if rows and n / rows < RARE_CLASS_SHARE:
            out.append(f"class '{name}' is rare: {n} of {rows} rows ({100 * n / rows:.2f} %)")
    for split, counts in class_counts.items():
        absent = [c for c, n in counts.items() if n == 0]
        if absent and sum(counts.values()):
            out.append(f"split '{split}' has no rows of class(es) {', '.join(absent[:10])}")
    return out


def print_report(manifest: dict[str, Any], out: Path) -> None:
    from rich.table import Table

    from bigmodel_cli.console import console, info, is_quiet, warn

    report = manifest["report"]
    for message in report["warnings"]:
        warn(message)
    if is_quiet():
        return
    shape = "x".join(str(d) for d in manifest["input_shape"])
    info(f"prepared {manifest['source']} -> {out}: {manifest['kind']}, input {shape} {manifest['input_dtype']}, "
         f"{len(manifest['classes']) if manifest['classes'] else 'regression'}"
         f"{' classes' if manifest['classes'] else ''}")
    console.print(_steps_table(manifest, Table))
    if report.get("missing_values"):
        table = Table(title="missing values", title_justify="left")
        for name in ("column", "missing", "what was done"):
            table.add_column(name, justify="right" if name == "missing" else "left")
        for column, entry in report["missing_values"].items():
            table.add_row(column, str(entry["missing"]), entry["action"])
        console.print(table)
    if report.get("class_counts"):
        console.print(_class_table(report["class_counts"], Table))


def _steps_table(manifest: dict[str, Any], table_class):
    report = manifest["report"]
    table = table_class(title="data report", title_justify="left", show_header=False)
    table.add_column("step")
    table.add_column("result", overflow="fold")
    table.add_row("rows read", str(report["rows_read"]))
    if report.get("bad_files"):
        table.add_row("unreadable files skipped", str(len(report["bad_files"])))
    table.add_row("missing target dropped", str(report.get("missing_target_dropped", 0)))
    table.add_row("duplicates dropped", str(report.get("duplicates_dropped", 0)))
    dropped = sum((report.get("rows_dropped_missing") or {}).values())
    if dropped:
        table.add_row("rows dropped for missing values", str(dropped))
    outliers = report.get("outliers")
    if outliers:
        table.add_row(f"outliers removed from train ({outliers['method']} {outliers['threshold']})",
                      str(outliers["removed_from_train"]))
    sizes = ", ".join(f"{s} {n}" for s, n in report["split_sizes"].items())
    table.add_row("split", f"{report['split_method']}: {sizes}")
    if report.get("features_after_encoding") is not None:
        table.add_row("features after encoding", str(report["features_after_encoding"]))
    if report.get("text"):
        text = report["text"]
        if text.get("blocks"):  # a language-modelling corpus packed into blocks
            packed = (f"{s} {text['tokens'][s]} -> {text['blocks'][s]} blocks" for s in text["blocks"])
            table.add_row(f"tokens in blocks of {text['max_length']}", ", ".join(packed))
        else:
            what = "the model's tokenizer" if text.get("model_tokenizer") else "fitted on train"
            table.add_row(f"vocabulary ({what})", f"{text['vocab_size']} tokens, {text['max_length']} per text, "
                                                  f"{text['truncated']} truncated")
    table.add_row("source SHA-256", report["source_sha256"])
    return table


def _class_table(class_counts: dict[str, dict[str, int]], table_class):
    table = table_class(title="class counts", title_justify="left")
    table.add_column("class")
    splits = list(class_counts)
    for split in splits:
        table.add_column(split, justify="right")
    names = list(next(iter(class_counts.values())))
    for name in names[:50]:
        table.add_row(name, *(str(class_counts[s][name]) for s in splits))
    if len(names) > 50:
        table.add_row(f"... {len(names) - 50} more", *("" for _ in splits))
    return table
