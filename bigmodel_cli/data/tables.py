"""Reading a table file (.csv, .parquet, .jsonl) into a pyarrow Table, naming the file and line of any problem.

    table = read_table("data/churn.csv")                      # delimiter and encoding sniffed
    table = read_table("data/export.csv", delimiter=";", encoding="latin-1")
    table = map_table("data/big.csv", scratch.path)           # streamed into an Arrow file, memory-mapped

pyarrow's readers are multi-threaded and keep numbers in columns (no Python objects), which
is what makes `prepare-data` on a million rows fast. `map_table` reads the file a block at
a time into an Arrow IPC file and maps it: the table's columns are then pages of the page
cache, not private memory, however large the file. It gives the same columns and types as
`read_table`: a CSV column whose type a later block changes (empty at first, text later)
gets the type that reading the whole column gives. Source files are only ever read.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa

from bigmodel_cli.errors import UsageError

CSV_SUFFIXES = (".csv", ".tsv", ".txt")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
TABLE_SUFFIXES = CSV_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
SNIFF_BYTES = 1 << 16
BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
BLOCK_BYTES = 1 << 20  # CSV/JSON bytes parsed at a time (larger blocks made the threaded reader hold more)
BATCH_ROWS = 65536  # rows per record batch of the mapped table: each pass over it works a batch at a time
CONVERSION_ERROR = re.compile(r"In CSV column #(\d+): CSV conversion error to ")


def read_table(path: str | Path, delimiter: str | None = None, encoding: str | None = None) -> pa.Table:
    """The whole file as a Table with at least one data row; exit-2 errors name the file and line."""
    path = Path(path)
    suffix = _check_file(path)
    if suffix in CSV_SUFFIXES:
        table = _read_csv(path, delimiter, encoding)
    elif suffix in JSONL_SUFFIXES:
        table = _read_jsonl(path, encoding)
    elif suffix in PARQUET_SUFFIXES:
        table = _read_parquet(path)
    else:
        raise UsageError(f"data.source '{path}': unsupported file type '{suffix}'; "
                         f"use one of {', '.join(TABLE_SUFFIXES)} or an image folder")
    if table.num_rows == 0:
        raise UsageError(f"{path}: header only, no data rows")
    _check_column_names(path, table.column_names)
    return table


def _check_file(path: Path) -> str:
    if not path.exists():
        raise UsageError(f"data.source '{path}': no such file")
    if not path.is_file():
        raise UsageError(f"data.source '{path}': not a file")
    if path.stat().st_size == 0:
        raise UsageError(f"{path}: empty file")
    return path.suffix.lower()


def map_table(path: str | Path, new_path: Callable[[str], Path], delimiter: str | None = None,
              encoding: str | None = None) -> pa.Table:
    """The file as `read_table` gives it, streamed into an Arrow file at `new_path(name)` and memory-mapped."""
    path = Path(path)
    suffix = _check_file(path)
    dest = new_path("table.arrow")
    if suffix in CSV_SUFFIXES:
        _csv_to_arrow(path, dest, delimiter, encoding)
    elif suffix in JSONL_SUFFIXES:
        _jsonl_to_arrow(path, dest, encoding, new_path)
    elif suffix in PARQUET_SUFFIXES:
        _parquet_to_arrow(path, dest)
    else:
        raise UsageError(f"data.source '{path}': unsupported file type '{suffix}'; "
                         f"use one of {', '.join(TABLE_SUFFIXES)} or an image folder")
    pa.default_memory_pool().release_unused()  # the parser's blocks, kept by the allocator otherwise
    table = pa.ipc.open_file(pa.memory_map(str(dest))).read_all()
    if table.num_rows == 0:
        raise UsageError(f"{path}: header only, no data rows")
    return table


def _write_arrow(dest: Path, schema: pa.Schema, batches: Iterator[pa.RecordBatch]) -> None:
    """Write the batches into an Arrow IPC file, small ones joined into batches of about BATCH_ROWS rows."""
    with pa.OSFile(str(dest), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        pending: list[pa.RecordBatch] = []
        rows = 0
        for batch in batches:
            pending.append(batch)
            rows += batch.num_rows
            if rows >= BATCH_ROWS:
                writer.write_batch(pa.concat_batches(pending))
                pending, rows = [], 0
        if pending:
            writer.write_batch(pa.concat_batches(pending))


def _csv_options(path: Path, delimiter: str | None, encoding: str | None):
    import pyarrow.csv as pacsv

    head = _head(path)
    enc = sniff_encoding(head, encoding)
    if b"\x00" in head and enc == "utf-8":
        raise UsageError(f"{path}: binary data (NUL bytes), not a text CSV file")
    if delimiter is not None and len(delimiter) != 1:
        raise UsageError(f"data.delimiter '{delimiter}': must be one character")
    sep = delimiter or sniff_delimiter(head.decode(enc, errors="replace"))
    return enc, sep, pacsv.ReadOptions(encoding=enc, block_size=BLOCK_BYTES)


def _csv_to_arrow(path: Path, dest: Path, delimiter: str | None, encoding: str | None) -> None:
    """Stream the CSV into an Arrow file; a type that a later block contradicts is read from the whole column.

    pyarrow's streaming reader infers each column's type from the first block, while
    `read_csv` loosens it until every value converts; when a later block fails to convert,
    that column's type is taken from `read_csv` on that one column and the stream restarts.
    """
    import pyarrow.csv as pacsv

    enc, sep, read_options = _csv_options(path, delimiter, encoding)
    types: dict[str, pa.DataType] = {}
    newlines = False
    while True:
        parse_options = pacsv.ParseOptions(delimiter=sep, newlines_in_values=newlines)
        convert_options = pacsv.ConvertOptions(strings_can_be_null=True, column_types=types)
        names: list[str] = []
        try:
            reader = pacsv.open_csv(path, read_options=read_options, parse_options=parse_options,
                                    convert_options=convert_options)
            names = reader.schema.names
            _check_column_names(path, names)
            _write_arrow(dest, reader.schema, reader)
            schema = reader.schema
            break
        except pa.ArrowInvalid as e:
            conversion = CONVERSION_ERROR.search(str(e))
            if conversion and names and names[int(conversion.group(1))] not in types:
                name = names[int(conversion.group(1))]
                types[name] = pacsv.read_csv(path, read_options=read_options, parse_options=parse_options,
                                             convert_options=pacsv.ConvertOptions(
                                                 strings_can_be_null=True, include_columns=[name])).schema[0].type
                continue
            if not newlines and not conversion:  # perhaps quoted values with line breaks (texts): slower
                newlines = True
                continue
            raise UsageError(_csv_problem(path, sep, enc) or f"{path}: not a readable CSV file ({_first_line(e)})") \
                from None
        except (UnicodeDecodeError, ValueError) as e:
            raise UsageError(_csv_problem(path, sep, enc) or f"{path}: not a readable CSV file ({_first_line(e)})") \
                from None
    if any(pa.types.is_binary(t) or pa.types.is_large_binary(t) for t in schema.types):
        raise UsageError(_csv_problem(path, sep, enc) or f"{path}: not valid {enc} text; set data.encoding")


def _jsonl_to_arrow(path: Path, dest: Path, encoding: str | None, new_path: Callable[[str], Path]) -> None:
    """Stream JSON lines into an Arrow file; if a later block changes the types, the whole file decides them."""
    import pyarrow.json as pajson

    head = _head(path)
    enc = sniff_encoding(head, encoding)
    if b"\x00" in head and enc == "utf-8":
        raise UsageError(f"{path}: binary data (NUL bytes), not a JSON-lines text file")
    source = path
    if enc not in ("utf-8",):
        source = new_path("source.jsonl")
        with open(path, encoding=enc, newline="") as src, open(source, "w", encoding="utf-8", newline="") as out:
            try:
                while text := src.read(1 << 20):
                    out.write(text)
            except UnicodeDecodeError:
                raise UsageError(_jsonl_problem(path, enc) or f"{path}: not valid {enc} text") from None
    read_options = pajson.ReadOptions(block_size=BLOCK_BYTES)
    parse_options = pajson.ParseOptions()
    for attempt in range(2):
        try:
            reader = pajson.open_json(source, read_options=read_options, parse_options=parse_options)
            _check_nested(path, reader.schema)
            _write_arrow(dest, reader.schema, reader)
            return
        except (pa.ArrowInvalid, UnicodeDecodeError, ValueError) as e:
            error = e
            if attempt == 0 and isinstance(e, pa.ArrowInvalid):
                try:  # a later block disagrees with the first one: the whole file decides the types, once
                    schema = pajson.read_json(source).schema
                except (pa.ArrowInvalid, UnicodeDecodeError, ValueError) as whole:
                    error = whole
                else:
                    _check_nested(path, schema)
                    parse_options = pajson.ParseOptions(explicit_schema=schema)
                    continue
            raise UsageError(_jsonl_problem(path, enc) or f"{path}: not readable JSON lines "
                                                           f"({_first_line(error)})") from None


def _check_nested(path: Path, schema: pa.Schema) -> None:
    for name, kind in zip(schema.names, schema.types, strict=True):
        if pa.types.is_struct(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind):
            raise UsageError(f"{path}: column '{name}' holds nested values ({kind}); flatten it or list it in "
                             f"data.drop")


def _parquet_to_arrow(path: Path, dest: Path) -> None:
    import pyarrow.parquet as pq

    try:
        source = pq.ParquetFile(path)
        _check_column_names(path, source.schema_arrow.names)
        _write_arrow(dest, source.schema_arrow, source.iter_batches(batch_size=BATCH_ROWS))
    except (pa.ArrowInvalid, OSError) as e:
        raise UsageError(f"{path}: not a readable Parquet file ({_first_line(e)})") from None


def sniff_encoding(head: bytes, encoding: str | None) -> str:
    if encoding:
        try:
            return codecs.lookup(encoding).name
        except LookupError:
            raise UsageError(f"data.encoding '{encoding}': unknown text encoding (try utf-8, latin-1)") from None
    for bom, name in BOMS:
        if head.startswith(bom):
            return name
    return "utf-8"


def sniff_delimiter(text: str) -> str:
    lines = [line for line in text.splitlines()[:50] if line.strip()]
    if len(lines) >= 1:
        try:
            return csv.Sniffer().sniff("\n".join(lines), delimiters=",;\t|").delimiter
        except csv.Error:
            pass
    return "\t" if lines and "\t" in lines[0] and "," not in lines[0] else ","


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(SNIFF_BYTES)


def _read_csv(path: Path, delimiter: str | None, encoding: str | None) -> pa.Table:
    import pyarrow.csv as pacsv

    head = _head(path)
    enc = sniff_encoding(head, encoding)
    if b"\x00" in head and enc == "utf-8":
        raise UsageError(f"{path}: binary data (NUL bytes), not a text CSV file")
    text = head.decode(enc, errors="replace")
    if delimiter is not None and len(delimiter) != 1:
        raise UsageError(f"data.delimiter '{delimiter}': must be one character")
    sep = delimiter or sniff_delimiter(text)
    read_options = pacsv.ReadOptions(encoding=enc)
    parse_options = pacsv.ParseOptions(delimiter=sep)
    convert_options = pacsv.ConvertOptions(strings_can_be_null=True)
    try:
        try:
            table = pacsv.read_csv(path, read_options=read_options, parse_options=parse_options,
                                   convert_options=convert_options)
        except pa.ArrowInvalid:  # perhaps quoted values with line breaks (texts): slower, so only when needed
            parse_options = pacsv.ParseOptions(delimiter=sep, newlines_in_values=True)
            table = pacsv.read_csv(path, read_options=read_options, parse_options=parse_options,
                                   convert_options=convert_options)
    except (pa.ArrowInvalid, UnicodeDecodeError, ValueError) as e:
        problem = _csv_problem(path, sep, enc) or f"{path}: not a readable CSV file ({_first_line(e)})"
        raise UsageError(problem) from None
    if any(pa.types.is_binary(t) or pa.types.is_large_binary(t) for t in table.schema.types):
        raise UsageError(_csv_problem(path, sep, enc) or f"{path}: not valid {enc} text; set data.encoding")
    return table


def _csv_problem(path: Path, sep: str, enc: str) -> str | None:
    """Find the first line a CSV reader cannot take (bad bytes, wrong field count); slow, only after a failure."""
    expected = None
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode(enc)
            except UnicodeDecodeError as e:
                return (f"{path} line {number}: not valid {enc} text (byte 0x{raw[e.start]:02x} at column "
                        f"{e.start + 1}); set data.encoding, e.g. --set data.encoding=latin-1")
            if not line.strip():
                continue
            fields = next(csv.reader([line], delimiter=sep), [])
            if expected is None:
                expected = len(fields)
            elif len(fields) != expected and '"' not in line:
                return (f"{path} line {number}: {len(fields)} fields, but the header has {expected} "
                        f"(delimiter '{sep}'; set data.delimiter if that is wrong)")
    return None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _read_jsonl(path: Path, encoding: str | None) -> pa.Table:
    import pyarrow.json as pajson

    head = _head(path)
    enc = sniff_encoding(head, encoding)
    if b"\x00" in head and enc == "utf-8":
        raise UsageError(f"{path}: binary data (NUL bytes), not a JSON-lines text file")
    source: str | io.BytesIO = str(path)
    if enc not in ("utf-8",):
        source = io.BytesIO(path.read_bytes().decode(enc).encode("utf-8"))
    try:
        table = pajson.read_json(source)
    except (pa.ArrowInvalid, UnicodeDecodeError, ValueError) as e:
        raise UsageError(_jsonl_problem(path, enc) or f"{path}: not readable JSON lines ({_first_line(e)})") from None
    _check_nested(path, table.schema)
    return table


def _jsonl_problem(path: Path, enc: str) -> str | None:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode(enc)
            except UnicodeDecodeError as e:
                return f"{path} line {number}: not valid {enc} text (byte 0x{raw[e.start]:02x}); set data.encoding"
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as e:
                return f"{path} line {number}: not valid JSON ({e.msg})"
            if not isinstance(value, dict):
                return f"{path} line {number}: expected one JSON object per line, got {type(value).__name__}"
    return None


def _read_parquet(path: Path) -> pa.Table:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise UsageError(f"{path}: not a readable Parquet file ({_first_line(e)})") from None


def _check_column_names(path: Path, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise UsageError(f"{path}: column name '{name}' appears twice in the header")
        seen.add(name)
