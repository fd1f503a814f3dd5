"""prepare-data for language modelling: a corpus tokenised with the model folder's tokenizer, packed into blocks.

    bigmodel prepare-data -r text-gpt-lm --source corpus.txt          # a text file (UTF-8)
    bigmodel prepare-data -r text-gpt-lm --source books/              # every .txt/.md file under a folder
    bigmodel prepare-data -r text-gpt-lm --source posts.jsonl --set data.text_column=body   # a table's column

A document is a paragraph of a text file (its lines up to a blank line) or one row of the table's text
column. Each document goes to train, val or test by a seeded draw (data.split.val/test are the expected
shares of documents); its tokens (with the tokenizer's own special tokens, then the end-of-text token
between documents) are appended to its split's token stream. The streams are cut into blocks of
`data.text.max_length` tokens, the remainder of each split dropped: x.npy is int32 [blocks, max_length],
y.npy zeros (the targets are the next tokens of x itself).

Streamed: documents are read and tokenised a batch at a time and the token streams written to scratch
files as they come, so a corpus larger than memory prepares with flat private memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel_cli.data import preprocess, split
from bigmodel_cli.data.arrays import Scratch, chunks, rows_per_chunk
from bigmodel_cli.data.prepared import Prepared
from bigmodel_cli.errors import UsageError

TEXT_SUFFIXES = (".txt", ".md", ".text")
DOCUMENTS_PER_BATCH = 512


def read_corpus(recipe, scratch: Scratch) -> tuple[Iterator[str], str]:
    """(the documents, one at a time, and the source's SHA-256): paragraphs of text files, or a table's rows."""
    from bigmodel_cli.data.sources import _sha256_files, file_sha256

    files, root = _text_files(recipe.data.source)
    if files is not None:
        return _paragraphs(files), (_sha256_files(root, files) if root.is_dir() else file_sha256(files[0]))
    return _rows(recipe, scratch)


def _text_files(source: str | None) -> tuple[list[Path] | None, Path]:
    if not source:
        raise UsageError("data.source is not set; give --source (a text file, a folder of them, or a table)")
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise UsageError(f"data.source '{source}': no {'/'.join(TEXT_SUFFIXES)} files in the folder")
        return files, path
    if path.suffix.lower() in TEXT_SUFFIXES:
        if not path.is_file():
            raise UsageError(f"data.source '{source}': no such file")
        return [path], path
    return None, path


def _paragraphs(files: list[Path]) -> Iterator[str]:
    for file in files:
        lines: list[str] = []
        try:
            with file.open(encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        lines.append(line.rstrip("\n"))
                    elif lines:
                        yield "\n".join(lines)
                        lines = []
        except UnicodeDecodeError as e:
            raise UsageError(f"{file}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        if lines:
            yield "\n".join(lines)


def _rows(recipe, scratch: Scratch) -> tuple[Iterator[str], str]:
    from bigmodel_cli.data.sources import RawTable, read_source

    raw = read_source(recipe.data.source, recipe.data, scratch)
    column = recipe.data.text_column
    if not isinstance(raw, RawTable):
        raise UsageError(f"data.source '{recipe.data.source}': language modelling reads text files or a table's "
                         f"text column, not images")
    if column not in raw.table.column_names:
        import difflib

        near = difflib.get_close_matches(column, raw.table.column_names, n=1)
        hint = f"; did you mean '{near[0]}'?" if near else f" (columns: {', '.join(raw.table.column_names[:20])})"
        raise UsageError(f"data.text_column: column '{column}' not found in {recipe.data.source}{hint}")

    def texts() -> Iterator[str]:
        for batch in raw.table.select([column]).to_batches():
            for text in batch.column(0).to_pylist():
                if text is not None and str(text).strip():
                    yield str(text)

    return texts(), raw.sha256


def _batches(items: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def prepare_corpus(documents: Iterator[str], recipe, report: dict[str, Any], scratch: Scratch) -> Prepared:
    """Tokenise and pack `documents` (from `read_corpus`) into blocks of data.text.max_length tokens."""
    from tokenizers import Tokenizer

    data = recipe.data
    if data.text.tokenizer != "model":
        raise UsageError("task language-modeling tokenises with the model's own tokenizer: set "
                         "data.text.tokenizer: model (and model.path)")
    spec, info = preprocess.fit_model_tokenizer(recipe.model.path, data.text, recipe.task)
    spec["column"] = data.text_column
    block = int(spec["max_length"])
    tok = Tokenizer.from_str(spec["tokenizer"])
    eos = spec.get("eos_id")
    rng = np.random.default_rng(recipe.seed)
    val, test = data.split.val, data.split.test
    paths = {name: scratch.path(f"tokens-{name}") for name in split.CODES}
    tokens = dict.fromkeys(split.CODES, 0)
    docs = dict.fromkeys(split.CODES, 0)
    outs = {name: open(path, "wb") for name, path in paths.items()}  # noqa: SIM115 - closed below
    try:
        for batch in _batches(documents, DOCUMENTS_PER_BATCH):
            draws = rng.random(len(batch))
            names = np.where(draws < test, "test", np.where(draws < test + val, "val", "train"))
            for name, encoded in zip(names, tok.encode_batch(batch), strict=True):
                ids = encoded.ids + ([eos] if eos is not None else [])
                outs[name].write(np.asarray(ids, dtype=np.uint32).tobytes())
                tokens[name] += len(ids)
                docs[name] += 1
    finally:
        for out in outs.values():
            out.close()
    sizes = {name: tokens[name] // block for name in split.CODES}
    report["rows_read"] = sum(docs.values())
    report["split_method"] = f"documents drawn at random, seed {recipe.seed}"
    for name, way in (("train", "lower data.split.val and test"), ("val", "raise data.split.val")):
        if sizes[name] == 0:
            raise UsageError(f"the {name} split has {tokens[name]} tokens ({docs[name]} documents), not one block of "
                             f"{block} (data.text.max_length): give more text, lower data.text.max_length or {way}")

    def x_chunks(name: str) -> Iterator[np.ndarray]:
        stream = np.memmap(paths[name], dtype=np.uint32, mode="r") if tokens[name] else np.zeros(0, np.uint32)
        blocks = stream[: sizes[name] * block].reshape(sizes[name], block)
        for start, stop in chunks(sizes[name], rows_per_chunk(block * 4)):
            yield blocks[start:stop].astype(np.int32)

    def y_chunks(name: str) -> Iterator[np.ndarray]:
        for start, stop in chunks(sizes[name], 1 << 20):
            yield np.zeros(stop - start, dtype=np.int64)

    def finish(out: dict[str, Any]) -> None:
        out["text"] = {"vocab_size": spec["vocab_size"], "max_length": block, "truncated": 0, "model_tokenizer": True,
                       "documents": docs, "tokens": tokens, "blocks": sizes,
                       "tokens_dropped": {n: tokens[n] - sizes[n] * block for n in split.CODES}}

    return Prepared("text", [data.text_column], None, data.text_column, {"text": spec, "hf": info}, (block,), np.int32,
                    np.int64, sizes, x_chunks, y_chunks, finish=finish)
