"""`eval/<split>_predictions.csv`: one row per evaluated row, for checking any metric by hand.

    y_true,y_pred,p_malignant,p_benign        (classification: class names, then probabilities)
    y_true,y_pred                             (regression)

Written in chunks with pyarrow's CSV writer (floats in their shortest exact form, so
`sklearn.metrics.*` on the file reproduces the report) without building the text in memory.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

CHUNK = 65_536


def header(classes: list[str] | None) -> list[str]:
    return ["y_true", "y_pred", *[f"p_{c}" for c in classes or []]]


def write(path: Path, y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray | None,
          classes: list[str] | None) -> None:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    names = header(classes)
    line = io.StringIO()
    csv.writer(line, lineterminator="\n").writerow(names)
    labels = np.asarray(classes, dtype=object) if classes else None
    plain = labels is None or not any(ch in str(c) for c in classes for ch in ',"\n\r')
    options = pcsv.WriteOptions(include_header=False, quoting_style="none" if plain else "needed")
    with open(path, "wb") as sink:
        sink.write(line.getvalue().encode("utf-8"))
        writer = None
        for start in range(0, len(y_true), CHUNK):
            part = slice(start, start + CHUNK)
            if labels is not None:
                columns = [labels[np.asarray(y_true[part])], labels[np.asarray(y_pred[part])],
                           *np.asarray(proba[part]).T]
            else:
                columns = [np.asarray(y_true[part], dtype=np.float32), np.asarray(y_pred[part], dtype=np.float32)]
            table = pa.table([pa.array(c) for c in columns], names=names)
            writer = writer or pcsv.CSVWriter(sink, table.schema, write_options=options)
            writer.write_table(table)
        if writer is not None:
            writer.close()
