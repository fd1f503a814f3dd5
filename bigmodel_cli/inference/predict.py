"""`bigmodel predict`: a trained model on new, unlabeled data, streamed from the input file to the output file.

    bigmodel predict runs/churn --data next_month.csv --keep customer_id --out scores.parquet
    bigmodel predict runs/churn/model.onnx --data next_month.jsonl --threshold 0.3 --on-bad-row null
    bigmodel predict runs/digits-cnn --data photos/ --top-k 3            # a folder of images (any size and mode)
    bigmodel predict runs/text-transformer --data reviews.txt             # one text per line

    summary = predict(Path("runs/churn"), Options(data=[Path("next_month.csv")], keep=["customer_id"]))

The model is a run directory (its checkpoint, in PyTorch, with the run's `preprocessing.json`) or an
exported ONNX file (onnxruntime, with the preprocessing its metadata carries): both encode raw rows
with `data.raw_inputs.InputSpec`, the functions prepare-data applied to the training data, so that
imputation, categories, bins, tokenizer and image conversion are the training's.

Streaming: the input is read a chunk at a time (`tables.RowSource`, `images.decode_chunks`,
`tables.text_lines`), encoded, run through the model in batches of `--batch-size` and written a
chunk at a time (`outputs.OutputFile`) to a temporary file renamed at the end, so memory stays
bounded by a few chunks whatever the size of the input, and a failure leaves no output. With one
process, reading and encoding run in a background thread and writing in another, beside the model.
`--devices N` starts N worker processes (each with its GPU when there are GPUs, else its share of
the CPU cores) that encode and run the chunks; the main process reads and writes them in input order.

Bad rows (a value that is not a number in a numeric column, a missing value whose imputation is
`drop`, a JSON line that is not an object, an unreadable image): `--on-bad-row error` (the default)
stops with exit 2 naming the row; `skip` leaves the row out; `null` writes it with empty outputs.
Either way they are counted in the summary. A column the model needs that the file lacks is always
exit 2, naming it and the nearest column the file has.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from bigmodel_cli import console
from bigmodel_cli.data.raw_inputs import InputSpec
from bigmodel_cli.errors import UsageError
from bigmodel_cli.inference.outputs import Columns, OutputFile, output_format

ON_BAD = ("error", "skip", "null")
TABLE_ROWS = 65536  # rows of a table or of text lines per chunk
IMAGE_CHUNK_BYTES = 1 << 25  # decoded pixels per chunk of images (32 MiB)
EXAMPLES = 20  # bad rows listed in the summary


@dataclass
class Options:
    data: list[Path]
    out: Path | None = None
    keep: list[str] = field(default_factory=list)
    top_k: int | None = None
    threshold: float | None = None
    batch_size: int | None = None  # rows per model call (default: 4096 for rows and texts, 64 for images)
    devices: int = 1
    on_bad_row: str = "error"
    checkpoint: str = "best"
    device: str = "auto"
    threads: int = 0  # per process; 0: all cores with one process, an equal share with several


@dataclass
class Chunk:
    first: int  # row number (0-based) of its first row in the input
    rows: int
    payload: Any  # a Table of the model's columns, a list of texts, or a list of image paths
    keep: pa.Table | None  # the columns passed through to the output


@dataclass
class Plan:
    model: Path
    spec: InputSpec
    task: str
    options: Options
    input_kind: str  # table | lines | images
    chunks: Callable[[], Iterator[Chunk]]
    total: int | None
    out: Path
    columns: Columns
    where: str


def predict(model: Path, options: Options) -> dict[str, Any]:
    """Predict every row of `options.data` with `model`; returns the summary (also printed for people)."""
    return execute(plan(model, options))


# ---------------------------------------------------------------- checking everything before any work


def plan(model: Path, options: Options) -> Plan:
    from bigmodel_cli.inference.predictor import input_spec

    model = Path(model)
    if options.on_bad_row not in ON_BAD:
        raise UsageError(f"--on-bad-row {options.on_bad_row}: expected one of {', '.join(ON_BAD)}")
    if options.devices < 1:
        raise UsageError(f"--devices {options.devices}: must be at least 1")
    if options.batch_size is not None and options.batch_size < 1:
        raise UsageError(f"--batch-size {options.batch_size}: must be at least 1")
    if not options.data:
        raise UsageError("--data: give the file or folder to predict")
    spec, task = input_spec(model)
    classes = spec.classes or []
    _check_outputs(task, classes, options)
    columns = Columns(task, classes, options.top_k, options.threshold)
    clash = [k for k in options.keep if k in columns.names]
    if clash:
        raise UsageError(f"--keep {clash[0]}: the output has a column of that name; rename it in the input")
    out = Path(options.out) if options.out else _default_out(model, options.data[0])
    output_format(out)
    for given in options.data:
        if given.exists() and out.resolve() == given.resolve():
            raise UsageError(f"--out {out}: is the input file; give another path (source data is never modified)")
    if spec.kind == "image":
        input_kind, chunks, total, where = _images(spec, options)
    elif spec.kind == "text" and len(options.data) == 1 and options.data[0].suffix.lower() == ".txt":
        input_kind, chunks, total, where = _lines(options)
    else:
        input_kind, chunks, total, where = _table(spec, options, model)
    return Plan(model, spec, task, options, input_kind, chunks, total, out, columns, where)


def _check_outputs(task: str, classes: list[str], options: Options) -> None:
    if task != "classification":
        for flag, value in (("--top-k", options.top_k), ("--threshold", options.threshold)):
            if value is not None:
                raise UsageError(f"{flag}: applies to classification; this model does {task}")
        return
    if options.top_k is not None and not 1 <= options.top_k <= len(classes):
        raise UsageError(f"--top-k {options.top_k}: must be between 1 and the number of classes ({len(classes)})")
    if options.threshold is not None:
        if len(classes) != 2:
            raise UsageError(f"--threshold: applies to binary classification; this model has {len(classes)} classes "
                             f"(use --top-k to see the runners-up)")
        if not 0.0 <= options.threshold <= 1.0:
            raise UsageError(f"--threshold {options.threshold}: must be between 0 and 1 (a probability of "
                             f"'{classes[1]}')")


def _default_out(model: Path, data: Path) -> Path:
    """RUN_DIR/predict/<data name>.csv, or beside an ONNX file: <its folder>/predict/<data name>.csv."""
    folder = model if model.is_dir() else model.parent
    return folder / "predict" / f"{data.stem or data.name or 'predictions'}.csv"


def _table(spec: InputSpec, options: Options, model: Path) -> tuple[str, Callable[[], Iterator[Chunk]], int | None,
                                                                     str]:
    from bigmodel_cli.data.tables import ROW_ERROR, RowSource

    if len(options.data) != 1 or options.data[0].is_dir():
        what = "a folder" if options.data[0].is_dir() else f"{len(options.data)} paths"
        raise UsageError(f"--data: a {spec.kind} model takes one CSV, Parquet or JSONL file"
                         f"{' or a .txt file of texts' if spec.kind == 'text' else ''}, not {what}")
    path = options.data[0]
    delimiter, encoding = _recipe_csv_options(model)
    source = RowSource(path, delimiter, encoding, newlines_in_values=spec.kind == "text")
    where = str(path)
    try:
        spec.check_columns(source.names)
    except UsageError as e:
        raise UsageError(f"{where}: {e}") from None
    for name in options.keep:
        if name not in source.names:
            import difflib

            near = difflib.get_close_matches(name, source.names, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f" (columns: {', '.join(source.names[:20])})"
            raise UsageError(f"--keep {name}: {where} has no such column{hint}")
    model_types = spec.read_types()
    types: dict[str, pa.DataType | None] = {**model_types, **{k: None for k in options.keep if k not in model_types}}
    model_columns = list(model_types)

    def chunks() -> Iterator[Chunk]:
        for first, table in source.chunks(types, TABLE_ROWS):
            payload = table.select(model_columns + ([ROW_ERROR] if ROW_ERROR in table.column_names else []))
            keep = table.select(options.keep) if options.keep else None
            yield Chunk(first, table.num_rows, payload, keep)

    return "table", chunks, source.total, where


def _recipe_csv_options(model: Path) -> tuple[str | None, str | None]:
    """A run's data.delimiter and data.encoding (new rows most likely come as the training rows did)."""
    if not model.is_dir():
        return None, None
    from bigmodel_cli.run import load_run

    data = load_run(model).recipe.data
    return data.delimiter, data.encoding


def _lines(options: Options) -> tuple[str, Callable[[], Iterator[Chunk]], int | None, str]:
    from bigmodel_cli.data.tables import text_lines

    path = options.data[0]
    if [k for k in options.keep if k != "text"]:
        raise UsageError(f"--keep {','.join(options.keep)}: a .txt file of texts has one column to keep, 'text'")

    def chunks() -> Iterator[Chunk]:
        for first, texts in text_lines(path, TABLE_ROWS):
            keep = pa.Table.from_pydict({"text": pa.array(texts, pa.string())}) if options.keep else None
            yield Chunk(first, len(texts), texts, keep)

    next(text_lines(path, 1), None)  # an unreadable or empty file named now, before any work
    return "lines", chunks, None, str(path)


def _images(spec: InputSpec, options: Options) -> tuple[str, Callable[[], Iterator[Chunk]], int | None, str]:
    from bigmodel_cli.data.arrays import rows_per_chunk
    from bigmodel_cli.data.images import list_images

    if options.keep:
        raise UsageError(f"--keep {','.join(options.keep)}: image inputs have one column to keep, 'path', always "
                         f"written")
    files = list_images(options.data)
    row_bytes = int(np.prod(spec.input_shape))
    rows = max(batch_size(options, "images"), rows_per_chunk(row_bytes) * (IMAGE_CHUNK_BYTES // (1 << 23)))
    rows = min(rows, 4096)

    def chunks() -> Iterator[Chunk]:
        for first in range(0, len(files), rows):
            paths = [str(p) for p in files[first:first + rows]]
            yield Chunk(first, len(paths), paths, pa.Table.from_pydict({"path": pa.array(paths, pa.string())}))

    where = str(options.data[0]) if len(options.data) == 1 else f"{len(options.data)} paths"
    return "images", chunks, len(files), where


def batch_size(options: Options, input_kind: str) -> int:
    return options.batch_size or (64 if input_kind == "images" else 4096)


# ---------------------------------------------------------------- running it


def execute(p: Plan) -> dict[str, Any]:
    start = time.perf_counter()
    options = p.options
    counts = {"rows": 0, "bad": 0}
    examples: list[dict[str, Any]] = []
    source: dict[str, str] = {}
    with OutputFile(p.out) as out, _progress(p.total) as progress:
        writer = _Background(out.write)
        try:
            results = _in_process(p, source) if options.devices == 1 else _in_workers(p, source)
            for chunk, outputs, bad in results:
                mask = _bad_rows(p, chunk, bad, examples)
                counts["rows"] += chunk.rows
                counts["bad"] += int(mask.sum()) if mask is not None else 0
                writer(p.columns.table(outputs, chunk.keep, mask, options.on_bad_row))
                progress(chunk.rows)
        finally:
            writer.close()
        if counts["rows"] == 0:
            raise UsageError(f"{p.where}: no rows to predict")
    seconds = time.perf_counter() - start
    return _summary(p, counts, examples, source, seconds, out.rows)


def _bad_rows(p: Plan, chunk: Chunk, bad: dict[int, str], examples: list[dict[str, Any]]) -> np.ndarray | None:
    """The chunk's bad rows as a mask; the first one is the error with --on-bad-row error."""
    if not bad:
        return None
    first = min(bad)
    if p.options.on_bad_row == "error":
        raise UsageError(f"{_name_row(p, chunk, first)}: {bad[first]}; fix it, or pass --on-bad-row skip (leave it "
                         f"out) or null (an empty prediction)")
    for i in sorted(bad)[:max(0, EXAMPLES - len(examples))]:
        example: dict[str, Any] = {"row": chunk.first + i + 1, "error": bad[i]}
        if p.input_kind == "images":
            example["path"] = chunk.payload[i]
        examples.append(example)
    mask = np.zeros(chunk.rows, dtype=bool)
    mask[np.fromiter(bad, dtype=np.int64, count=len(bad))] = True
    return mask


def _name_row(p: Plan, chunk: Chunk, i: int) -> str:
    if p.input_kind == "images":
        return f"{chunk.payload[i]} (image {chunk.first + i + 1})"
    return f"{p.where} row {chunk.first + i + 1}"


def _summary(p: Plan, counts: dict[str, int], examples: list[dict[str, Any]], source: dict[str, str],
             seconds: float, written: int) -> dict[str, Any]:
    rows, bad = counts["rows"], counts["bad"]
    policy = p.options.on_bad_row
    summary = {
        "model": str(p.model), "source": source, "task": p.task, "kind": p.spec.kind,
        "data": [str(d) for d in p.options.data], "out": str(p.out), "format": output_format(p.out),
        "rows": rows, "predicted": rows - bad, "written": written, "bad_rows": bad,
        "skipped": bad if policy == "skip" else 0, "null": bad if policy == "null" else 0,
        "on_bad_row": policy, "bad_examples": examples, "columns": p.columns.names,
        "devices": p.options.devices, "seconds": round(seconds, 3), "rows_per_s": round(rows / max(seconds, 1e-9), 1),
    }
    line = (f"predicted {rows - bad:,} of {rows:,} rows in {seconds:.1f} s ({summary['rows_per_s']:,.0f} rows/s) "
            f"-> {p.out}")
    if bad:
        shown = examples[0]
        line += (f"; {bad:,} bad row(s) {'skipped' if policy == 'skip' else 'written with empty predictions'} "
                 f"(first: row {shown['row']}: {shown['error']})")
    console.info(line)
    return summary


# ---------------------------------------------------------------- one process: read | model | write, overlapped


def _in_process(p: Plan, source: dict[str, str]) -> Iterator[tuple[Chunk, np.ndarray, dict[int, str]]]:
    from bigmodel_cli.inference.predictor import open_model

    # onnxruntime threads that spin between batches would take the cores the reader and writer threads need
    model = open_model(p.model, p.options.checkpoint, p.options.device, p.options.threads, spinning=False)
    source.update(model.source)
    size = batch_size(p.options, p.input_kind)
    for chunk, x, bad in _prefetch(_encoded(p, p.chunks()), depth=1):
        yield chunk, _run(model, x, bad, chunk.rows, size, p.columns.width), bad


def _encoded(p: Plan, chunks: Iterator[Chunk]) -> Iterator[tuple[Chunk, np.ndarray, dict[int, str]]]:
    if p.input_kind != "images":
        for chunk in chunks:
            yield (chunk, *encode(p.spec, p.input_kind, chunk))
        return
    from bigmodel_cli.data.images import decode_chunks

    size, channels = (p.spec.spec["size"][1], p.spec.spec["size"][0]), p.spec.spec["channels"]
    listed = list(chunks)  # paths only: a few bytes per image
    files = [Path(path) for chunk in listed for path in chunk.payload]
    decoded = decode_chunks(files, size, channels, rows=listed[0].rows if listed else 1,
                            workers=p.options.threads or None)
    for chunk, (_, x, bad) in zip(listed, decoded, strict=True):
        yield chunk, x, bad


def encode(spec: InputSpec, input_kind: str, chunk: Chunk) -> tuple[np.ndarray, dict[int, str]]:
    """Model inputs of a chunk, and its bad rows {index in the chunk: why} (their inputs left as zeros)."""
    from bigmodel_cli.data.tables import ROW_ERROR

    bad: dict[int, str] = {}
    if input_kind == "lines":
        return spec.texts(chunk.payload), bad
    if input_kind == "images":
        from bigmodel_cli.data.images import decode_chunks

        size = (spec.spec["size"][1], spec.spec["size"][0])
        _, x, bad = next(decode_chunks([Path(f) for f in chunk.payload], size, spec.spec["channels"],
                                       rows=chunk.rows))
        return x, bad
    table = chunk.payload
    if ROW_ERROR in table.column_names:
        for i, error in enumerate(table[ROW_ERROR].to_pylist()):
            if error is not None:
                bad[i] = error
        table = table.drop_columns([ROW_ERROR])
    return spec.table(table, chunk.first, bad), bad


def _run(model, x: np.ndarray, bad: dict[int, str], rows: int, size: int, width: int) -> np.ndarray:
    """Model outputs of every row: the good rows run through the model, the bad ones zeros."""
    if not bad:
        return model.predict(x, size) if rows else np.zeros((0, width), np.float32)
    ok = np.ones(rows, dtype=bool)
    ok[np.fromiter(bad, dtype=np.int64, count=len(bad))] = False
    outputs = np.zeros((rows, width), dtype=np.float32)
    if ok.any():
        outputs[ok] = model.predict(x[ok], size)
    return outputs


def _prefetch(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """The items of `items`, produced by a background thread at most `depth` ahead; its errors re-raised here."""
    box: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        box.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            box.put((done, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            box.put((done, e))

    thread = threading.Thread(target=produce, name="predict-read", daemon=True)
    thread.start()
    try:
        while True:
            item, error = box.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                box.get_nowait()
            except queue.Empty:
                thread.join(0.05)


class _Background:
    """`write(item)` calls `fn(item)` in a thread of its own, at most `depth` items behind; its error is raised by
    the next call or by `close`."""

    def __init__(self, fn: Callable[[Any], None], depth: int = 1):
        self.fn, self.box, self.error = fn, queue.Queue(maxsize=depth), None
        self.thread = threading.Thread(target=self._drain, name="predict-write", daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        while (item := self.box.get()) is not None:
            if self.error is None:
                try:
                    self.fn(item)
                except BaseException as e:  # noqa: BLE001 - raised in the caller's thread
                    self.error = e

    def __call__(self, item: Any) -> None:
        if self.error is not None:
            raise self.error
        self.box.put(item)

    def close(self) -> None:
        """Wait for every item to be written; raise the writer's error, unless another one is on its way."""
        self.box.put(None)
        self.thread.join()
        if self.error is not None and sys.exc_info()[1] is None:
            raise self.error


# ---------------------------------------------------------------- N worker processes


_WORKER: dict[str, Any] = {}


def _in_workers(p: Plan, source: dict[str, str]) -> Iterator[tuple[Chunk, np.ndarray, dict[int, str]]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from bigmodel_cli.inference.predictor import gpu_ids

    n = p.options.devices
    threads = p.options.threads or max(1, (os.cpu_count() or 1) // n)
    context = multiprocessing.get_context("spawn")
    slots = context.Queue()
    for i in range(n):
        slots.put(i)
    size = batch_size(p.options, p.input_kind)
    args = (str(p.model), p.options.checkpoint, p.options.device, threads, slots, gpu_ids())
    with ProcessPoolExecutor(max_workers=n, mp_context=context, initializer=_start_worker, initargs=args) as pool:
        first = pool.submit(_worker_source)
        try:
            source.update(first.result())
        except Exception as e:
            raise _worker_error(e) from None
        pending: deque = deque()
        for chunk in _prefetch(p.chunks(), depth=2):
            pending.append((chunk, pool.submit(_work, p.input_kind, chunk.first, chunk.rows, chunk.payload, size,
                                               p.columns.width)))
            while len(pending) >= 2 * n:
                yield _finished(pending.popleft())
        while pending:
            yield _finished(pending.popleft())


def _finished(item) -> tuple[Chunk, np.ndarray, dict[int, str]]:
    chunk, future = item
    try:
        outputs, bad = future.result()
    except Exception as e:
        raise _worker_error(e) from None
    return chunk, outputs, bad


def _worker_error(e: BaseException) -> BaseException:
    from concurrent.futures.process import BrokenProcessPool

    if isinstance(e, BrokenProcessPool):
        from bigmodel_cli.errors import JobFailed

        return JobFailed(f"a --devices worker process died ({e}); try fewer --devices or a smaller --batch-size")
    return e


def _start_worker(model: str, checkpoint: str, device: str, threads: int, slots, gpus: list[str]) -> None:
    index = slots.get()
    if gpus:  # worker i sees one GPU, the i-th in turn
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    from bigmodel_cli.inference.predictor import open_model

    try:
        _WORKER["model"] = open_model(Path(model), checkpoint, device, threads, spinning=False)
    except Exception as e:  # noqa: BLE001 - raised again by the first task, in the parent
        _WORKER["error"] = e


def _worker_source() -> dict[str, str]:
    if "error" in _WORKER:
        raise _WORKER["error"]
    return _WORKER["model"].source


def _work(input_kind: str, first: int, rows: int, payload: Any, size: int,
          width: int) -> tuple[np.ndarray, dict[int, str]]:
    if "error" in _WORKER:
        raise _WORKER["error"]
    model = _WORKER["model"]
    chunk = Chunk(first, rows, payload, None)
    x, bad = encode(model.inputs, input_kind, chunk)
    return _run(model, x, bad, rows, size, width), bad


# ---------------------------------------------------------------- progress


class _NoProgress:
    def __call__(self, rows: int) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return False


class _Progress(_NoProgress):
    """A rich bar with rows done, rows/s and (when the total is known) the time left; stderr on a terminal only."""

    def __init__(self, total: int | None):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        columns = [TextColumn("predict"), BarColumn(), TextColumn("{task.completed:,.0f} rows"),
                   TextColumn("{task.fields[rate]:,.0f} rows/s"), TimeElapsedColumn()]
        if total:
            columns.append(TimeRemainingColumn())
        self.bar = Progress(*columns, console=console.console, transient=True)
        self.task = self.bar.add_task("predict", total=total, rate=0.0)
        self.start = time.perf_counter()
        self.done = 0

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> bool:
        return self.bar.__exit__(*exc) or False

    def __call__(self, rows: int) -> None:
        self.done += rows
        self.bar.update(self.task, advance=rows, rate=self.done / max(time.perf_counter() - self.start, 1e-9))


def _progress(total: int | None):
    if not console.interactive() or console.is_quiet():
        return _NoProgress()
    return _Progress(total)
