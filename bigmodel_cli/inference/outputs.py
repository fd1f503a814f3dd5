"""What `bigmodel predict` writes: model outputs as named columns, and files written a chunk at a time.

    columns = Columns("classification", ["no", "yes"], top_k=None, threshold=0.3)
    table = columns.table(outputs, keep=passed_through, bad=mask, on_bad="null")   # a pyarrow Table
    with OutputFile(Path("preds.parquet")) as out:      # .csv | .tsv | .parquet | .jsonl: by the suffix
        out.write(table)                                 # to a temporary name, renamed when the block succeeds

Classification: `prediction` (the class name), `probability` (of that class), then one `p_<class>`
column per class, or with top-k `top_1, p_top_1, ..., top_K, p_top_K`. Regression: `prediction`
(`prediction_<i>` for several outputs). A binary threshold decides `P(classes[1]) >= T`.
Bad rows: `skip` leaves them out, `null` writes them with empty outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from bigmodel_cli.errors import UsageError

FORMATS = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl",
           ".ndjson": "jsonl"}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class Columns:
    """The output columns of a task, and the table of one chunk of outputs."""

    def __init__(self, task: str, classes: list[str] | None, top_k: int | None = None,
                 threshold: float | None = None, outputs: int = 1):
        self.task, self.classes, self.top_k, self.threshold = task, classes, top_k, threshold
        if task == "classification":
            self.names = ["prediction", "probability"]
            if top_k:
                self.names += [n for k in range(1, top_k + 1) for n in (f"top_{k}", f"p_top_{k}")]
            else:
                self.names += [f"p_{c}" for c in classes or []]
            self._classes = pa.array(classes or [], pa.string())
            self.width = len(classes or [])
        else:
            self.names = ["prediction"] if outputs == 1 else [f"prediction_{i}" for i in range(outputs)]
            self.width = outputs

    def table(self, outputs: np.ndarray, keep: pa.Table | None = None, bad: np.ndarray | None = None,
              on_bad: str = "null") -> pa.Table:
        """Outputs of every row of the chunk (bad rows' outputs are ignored) as a table after the `keep` columns."""
        mask = bad if bad is not None and bad.any() else None
        arrays: list[pa.Array] = []
        if self.task == "classification":
            proba = softmax(outputs)
            if self.threshold is not None:
                pred = (proba[:, 1] >= self.threshold).astype(np.int64)
            else:
                pred = proba.argmax(axis=1)
            rows = np.arange(len(pred))
            arrays.append(self._classes.take(pa.array(pred, mask=mask)))
            arrays.append(pa.array(proba[rows, pred], mask=mask))
            if self.top_k:
                order = np.argsort(-proba, axis=1, kind="stable")[:, :self.top_k]
                for k in range(self.top_k):
                    arrays.append(self._classes.take(pa.array(order[:, k], mask=mask)))
                    arrays.append(pa.array(proba[rows, order[:, k]], mask=mask))
            else:
                arrays.extend(pa.array(column, mask=mask) for column in np.ascontiguousarray(proba.T))
        else:
            arrays.extend(pa.array(column, mask=mask) for column in np.ascontiguousarray(outputs.T, np.float32))
        table = pa.Table.from_arrays(arrays, names=self.names)
        if keep is not None:
            for i, name in enumerate(keep.column_names):
                table = table.add_column(i, name, keep[name])
        if mask is not None and on_bad == "skip":
            table = table.filter(pa.array(~mask))
        return table


class OutputFile:
    """Chunks of rows written to a temporary file beside `path`, renamed onto it only when every chunk is written.

    The first chunk fixes the columns' types; later chunks are cast to them (a pass-through
    column all empty in the first chunk is text).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.format = output_format(self.path)
        self.rows = 0
        self._writer: Any = None
        self._schema: pa.Schema | None = None

    def __enter__(self) -> OutputFile:
        from bigmodel_cli import atomic

        self._atomic = atomic.atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        return self

    def __exit__(self, kind, value, trace) -> bool:
        try:
            if self._writer is not None:
                self._writer.close()
        finally:
            self._atomic.__exit__(kind, value, trace)
        return False

    def write(self, table: pa.Table) -> None:
        table = self._conform(table)
        if self._writer is None:
            self._writer = self._open(table.schema)
        if self.format == "jsonl":
            self._writer.write(_jsonl(table))
        else:
            self._writer.write_table(table)
        self.rows += table.num_rows

    def _open(self, schema: pa.Schema):
        if self.format == "csv":
            import pyarrow.csv as pacsv

            delimiter = "\t" if self.path.suffix.lower() == ".tsv" else ","
            return pacsv.CSVWriter(str(self._tmp), schema,
                                   write_options=pacsv.WriteOptions(delimiter=delimiter, quoting_style="needed"))
        if self.format == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetWriter(str(self._tmp), schema)
        return open(self._tmp, "w", encoding="utf-8", newline="\n")

    def _conform(self, table: pa.Table) -> pa.Table:
        if self._schema is None:
            fields = [pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f for f in table.schema]
            self._schema = pa.schema(fields)
        if table.schema.equals(self._schema):
            return table
        columns = []
        for field in self._schema:
            column = table[field.name]
            if column.type != field.type:
                try:
                    column = column.cast(field.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    raise UsageError(f"column '{field.name}': its values are {column.type} here but were "
                                     f"{field.type} in the rows before (row {self.rows + 1} on); make the column "
                                     f"one type") from None
            columns.append(column)
        return pa.Table.from_arrays(columns, schema=self._schema)


def output_format(path: Path) -> str:
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise UsageError(f"--out {path}: unknown format '{Path(path).suffix}'; use .csv, .parquet or .jsonl")
    return fmt


def _jsonl(table: pa.Table) -> str:
    if not table.num_rows:
        return ""
    text = table.to_pandas().to_json(orient="records", lines=True, force_ascii=False, double_precision=15)
    return text if text.endswith("\n") else text + "\n"
