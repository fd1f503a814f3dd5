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

from bigmodel_cli.errors import UsageError, first_line

CSV_SUFFIXES = (".csv", ".tsv", ".txt")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
TABLE_SUFFIXES = CSV_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
SNIFF_BYTES = 1 << 16
BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
BLOCK_BYTES = 1 << 20  # CSV/JSON bytes parsed at a time (larger blocks made the threaded reader hold more)
BATCH_ROWS = 65536  # rows per record batch of the mapped table: each pass over it works a batch at a time
CHUNK_BYTES = 1 << 23  # RowSource: at most about this many bytes of columns per chunk of new rows
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
            raise UsageError(_csv_problem(path, sep, enc) or f"{path}: not a readable CSV file ({first_line(e)})") \
                from None
        except (UnicodeDecodeError, ValueError) as e:
            raise UsageError(_csv_problem(path, sep, enc) or f"{path}: not a readable CSV file ({first_line(e)})") \
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
                                                           f"({first_line(error)})") from None


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
        raise UsageError(f"{path}: not a readable Parquet file ({first_line(e)})") from None


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
        problem = _csv_problem(path, sep, enc) or f"{path}: not a readable CSV file ({first_line(e)})"
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
        raise UsageError(_jsonl_problem(path, enc) or f"{path}: not readable JSON lines ({first_line(e)})") from None
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
        raise UsageError(f"{path}: not a readable Parquet file ({first_line(e)})") from None


def _check_column_names(path: Path, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise UsageError(f"{path}: column name '{name}' appears twice in the header")
        seen.add(name)


# ---------------------------------------------------------------- new rows, a chunk at a time (predict, serve)

ARROW_TRUE = ("1", "True", "TRUE", "true")  # what Arrow's CSV reader reads as booleans (and training did)
ARROW_FALSE = ("0", "False", "FALSE", "false")


class RowSource:
    """An unlabeled table file read a chunk at a time, in order, with only the columns asked for.

        source = RowSource("new.csv")              # delimiter and encoding sniffed as read_table does
        source.names                              # every column of the file
        for first, chunk in source.chunks({"age": pa.float64(), "city": pa.string(), "id": None}, rows=65536):
            ...                      # chunk: a pyarrow Table of those columns; first: its first row (0-based)

    The types are what the rows should be read as (CSV: None reads text as it stands, JSONL
    and Parquet: None keeps the file's types). A value that does not convert (text in a
    column asked for as numbers, `maybe` in a boolean one) is not an error here: that column
    is then read as text, and `preprocess.apply_table` says which rows are bad. Boolean
    columns read as text have Arrow's spellings of true/false normalised to "true"/"false",
    as the training's reader would have typed them. Private memory is bounded by a chunk,
    whatever the size of the file.
    """

    def __init__(self, path: str | Path, delimiter: str | None = None, encoding: str | None = None,
                 newlines_in_values: bool = False):
        self.path = Path(path)
        suffix = _check_file(self.path)
        self.delimiter, self.encoding, self.newlines = delimiter, encoding, newlines_in_values
        self.total: int | None = None
        if suffix in CSV_SUFFIXES:
            self.format = "csv"
            self.names = self._csv_names()
        elif suffix in JSONL_SUFFIXES:
            self.format = "jsonl"
            self.names = self._jsonl_names()
        elif suffix in PARQUET_SUFFIXES:
            self.format = "parquet"
            self.names = self._parquet_names()
        else:
            raise UsageError(f"{self.path}: unsupported file type '{suffix}'; use one of {', '.join(TABLE_SUFFIXES)}")
        _check_column_names(self.path, self.names)

    def chunks(self, types: dict[str, pa.DataType | None], rows: int = BATCH_ROWS,
               max_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, pa.Table]]:
        """(first row, Table of the columns of `types`, in that order) of `rows` rows each (the last: the rest),
        in file order; fewer rows when that many would hold more than about `max_bytes` (wide rows, long texts),
        the same number in every chunk, judged from the first rows read."""
        missing = [name for name in types if name not in self.names]
        if missing:
            raise UsageError(f"{self.path}: no column '{missing[0]}'")
        batches = {"csv": self._csv_batches, "jsonl": self._jsonl_batches, "parquet": self._parquet_batches}
        first, pending, count = 0, [], 0
        sized = False
        for batch in batches[self.format](types, rows):
            if not batch.num_rows:
                continue
            if not sized:
                rows = max(1, min(rows, max_bytes * batch.num_rows // max(1, batch.nbytes)))
                sized = True
            pending.append(batch)
            count += batch.num_rows
            while count >= rows:
                table = _join(pending, types)
                yield first, table.slice(0, rows)
                first, count = first + rows, count - rows
                pending = [table.slice(rows)] if count else []
        if pending:
            yield first, _join(pending, types)

    # -------- CSV: pyarrow's streaming reader; a column that fails to convert is read again as text

    def _csv_setup(self):
        import pyarrow.csv as pacsv

        enc, sep, read_options = _csv_options(self.path, self.delimiter, self.encoding)
        return pacsv, read_options, sep, enc

    def _csv_names(self) -> list[str]:
        pacsv, read_options, sep, enc = self._csv_setup()
        try:
            reader = pacsv.open_csv(self.path, read_options=read_options,
                                    parse_options=pacsv.ParseOptions(delimiter=sep, newlines_in_values=self.newlines),
                                    convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
        except (pa.ArrowInvalid, UnicodeDecodeError, ValueError) as e:
            raise UsageError(_csv_problem(self.path, sep, enc) or f"{self.path}: not a readable CSV file "
                                                                  f"({first_line(e)})") from None
        return reader.schema.names

    def _csv_batches(self, types: dict[str, pa.DataType | None], rows: int) -> Iterator[pa.RecordBatch]:
        pacsv, read_options, sep, enc = self._csv_setup()
        wanted = {name: kind or pa.string() for name, kind in types.items()}
        newlines, done = self.newlines, 0
        while True:  # a restart skips the rows already given, reading them again with the looser types
            parse_options = pacsv.ParseOptions(delimiter=sep, newlines_in_values=newlines)
            convert_options = pacsv.ConvertOptions(strings_can_be_null=True, column_types=wanted,
                                                   include_columns=list(types))
            seen = 0
            try:
                for batch in pacsv.open_csv(self.path, read_options=read_options, parse_options=parse_options,
                                            convert_options=convert_options):
                    skip = min(batch.num_rows, max(0, done - seen))
                    seen += batch.num_rows
                    if skip < batch.num_rows:
                        batch = _booleans_as_text(batch.slice(skip), types)
                        done += batch.num_rows
                        yield batch
                return
            except pa.ArrowInvalid as e:
                conversion = CONVERSION_ERROR.search(str(e))
                name = self.names[int(conversion.group(1))] if conversion else None
                if name in wanted and wanted[name] != pa.string():
                    wanted[name] = pa.string()
                    continue
                if not newlines and not conversion:  # perhaps quoted values with line breaks
                    newlines = True
                    continue
                raise UsageError(_csv_problem(self.path, sep, enc) or f"{self.path}: not a readable CSV file "
                                                                      f"({first_line(e)})") from None
            except (UnicodeDecodeError, ValueError) as e:
                raise UsageError(_csv_problem(self.path, sep, enc) or f"{self.path}: not a readable CSV file "
                                                                      f"({first_line(e)})") from None

    # -------- JSON lines: blocks of whole lines, each parsed by pyarrow (or line by line when its types mix)

    def _lines(self) -> Iterator[bytes]:
        """Blocks of about BLOCK_BYTES of whole lines, as UTF-8."""
        enc = sniff_encoding(_head(self.path), self.encoding)
        if enc == "utf-8":
            with open(self.path, "rb") as f:
                if f.read(3) != codecs.BOM_UTF8:
                    f.seek(0)
                rest = b""
                while block := f.read(BLOCK_BYTES):
                    block = rest + block
                    cut = block.rfind(b"\n") + 1
                    rest = block[cut:]
                    if cut:
                        yield block[:cut]
                if rest:
                    yield rest
            return
        with open(self.path, encoding=enc, newline="") as f:
            try:
                while lines := f.readlines(BLOCK_BYTES):
                    yield "".join(lines).encode("utf-8")
            except UnicodeDecodeError:
                raise UsageError(_jsonl_problem(self.path, enc) or f"{self.path}: not valid {enc} text") from None

    def _jsonl_names(self) -> list[str]:
        block = next(self._lines(), b"")
        names: dict[str, None] = {}
        for line in block.splitlines():
            try:
                value = json.loads(line) if line.strip() else {}
            except ValueError:
                continue
            if isinstance(value, dict):
                names.update(dict.fromkeys(value))
        if not names and block.strip():
            raise UsageError(_jsonl_problem(self.path, "utf-8") or f"{self.path}: not readable JSON lines")
        return list(names)

    def _jsonl_batches(self, types: dict[str, pa.DataType | None], rows: int) -> Iterator[pa.Table]:
        import pyarrow.json as pajson

        for block in self._lines():
            try:
                table = pajson.read_json(io.BytesIO(block))
            except pa.ArrowInvalid:  # types that change within the block, or a line that is not JSON
                yield _json_by_line(block, types)
                continue
            columns = []
            for name, kind in types.items():
                if name not in table.column_names:
                    columns.append(pa.nulls(table.num_rows, kind or pa.string()))
                    continue
                column = table[name]
                if pa.types.is_struct(column.type) or pa.types.is_list(column.type):
                    yield _json_by_line(block, types)
                    break
                if kind is not None and column.type != kind:
                    try:
                        column = column.cast(kind)
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                        column = column.cast(pa.string())
                columns.append(column)
            else:
                yield pa.Table.from_arrays(columns, names=list(types))

    # -------- Parquet: row groups read a batch at a time

    def _parquet_names(self) -> list[str]:
        import pyarrow.parquet as pq

        try:
            file = pq.ParquetFile(self.path)
        except (pa.ArrowInvalid, OSError) as e:
            raise UsageError(f"{self.path}: not a readable Parquet file ({first_line(e)})") from None
        self.total = file.metadata.num_rows
        return file.schema_arrow.names

    def _parquet_batches(self, types: dict[str, pa.DataType | None], rows: int) -> Iterator[pa.RecordBatch]:
        import pyarrow.parquet as pq

        try:
            yield from pq.ParquetFile(self.path).iter_batches(batch_size=rows, columns=list(types))
        except (pa.ArrowInvalid, OSError) as e:
            raise UsageError(f"{self.path}: not a readable Parquet file ({first_line(e)})") from None


def _join(batches: list, types: dict[str, pa.DataType | None]) -> pa.Table:
    """One table of the batches; a column read with different types in different batches (text after numbers) is
    made text throughout."""
    tables = [b if isinstance(b, pa.Table) else pa.Table.from_batches([b]) for b in batches]
    if any(ROW_ERROR in t.column_names for t in tables):
        tables = [t if ROW_ERROR in t.column_names else t.append_column(ROW_ERROR, pa.nulls(t.num_rows, pa.string()))
                  for t in tables]
    if len(tables) == 1:
        return tables[0]
    for name in types:
        kinds = {t.schema.field(name).type for t in tables}
        if len(kinds) > 1:
            kinds.discard(pa.null())
            target = kinds.pop() if len(kinds) == 1 else pa.string()
            tables = [t.set_column(t.schema.get_field_index(name), name, t[name].cast(target)) for t in tables]
    return pa.concat_tables(tables)


def _booleans_as_text(batch: pa.RecordBatch, types: dict[str, pa.DataType | None]) -> pa.RecordBatch:
    """Columns asked for as booleans but read as text (a value was neither): Arrow's spellings made true/false."""
    import pyarrow.compute as pc

    for i, (name, kind) in enumerate(types.items()):
        column = batch.column(i)
        if kind == pa.bool_() and column.type == pa.string():
            column = pc.if_else(pc.is_in(column, value_set=pa.array(ARROW_TRUE)), "true",
                                pc.if_else(pc.is_in(column, value_set=pa.array(ARROW_FALSE)), "false", column))
            batch = batch.set_column(i, name, column)
    return batch


def _json_by_line(block: bytes, types: dict[str, pa.DataType | None]) -> pa.Table:
    """Lines parsed one by one: every column as text (numbers as written, booleans true/false), None for missing;
    a line that is not a JSON object becomes a row whose `__error__` says so."""
    columns: dict[str, list] = {name: [] for name in types}
    errors: list[str | None] = []
    for line in block.splitlines():
        if not line.strip():
            continue
        try:
            value = json.loads(line)
            problem = None if isinstance(value, dict) else f"expected a JSON object, got {type(value).__name__}"
        except ValueError as e:
            value, problem = {}, f"not valid JSON ({e.msg})"
        if problem:
            value = {}
        errors.append(problem)
        for name in types:
            item = value.get(name)
            if item is None or isinstance(item, str):
                columns[name].append(item)
            elif isinstance(item, bool):
                columns[name].append("true" if item else "false")
            elif isinstance(item, (int, float)):
                columns[name].append(repr(item))
            else:
                columns[name].append(json.dumps(item))
    arrays = {name: pa.array(values, pa.string()) for name, values in columns.items()}
    if any(errors):
        arrays[ROW_ERROR] = pa.array(errors, pa.string())
    return pa.Table.from_pydict(arrays)


ROW_ERROR = "__error__"  # a column some chunks carry: why that row could not be read (None when it could)


def text_lines(path: str | Path, rows: int = BATCH_ROWS,
               encoding: str | None = None) -> Iterator[tuple[int, list[str]]]:
    """(first row, texts) of a text file, one text per line (line breaks removed), `rows` lines at a time."""
    path = Path(path)
    _check_file(path)
    enc = sniff_encoding(_head(path), encoding)
    first, texts = 0, []
    with open(path, encoding="utf-8-sig" if enc == "utf-8" else enc, newline="") as f:
        try:
            for line in f:
                texts.append(line.rstrip("\r\n"))
                if len(texts) >= rows:
                    yield first, texts
                    first, texts = first + len(texts), []
        except UnicodeDecodeError as e:
            raise UsageError(f"{path} line {first + len(texts) + 1}: not valid {enc} text ({e.reason})") from None
    if texts:
        yield first, texts
