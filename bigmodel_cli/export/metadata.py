"""The ONNX `metadata_props` a `bigmodel export` writes, defined once: key names, one writer, one reader.

    props = for_run(run, exporter="dynamo", quantize="none", checkpoint=record)   # what export writes
    write(Path("model.onnx"), props)
    meta = read(Path("model.onnx"))            # or from_session(session): parsed values, not strings
    meta.class_names, meta.input_shape, meta.checkpoint["which"]

Every value is a string in the file; the JSON ones (class names, input shape, normalisation, text
preprocessing, model, checkpoint) are parsed by the reader, so eval, benchmark and serve never call
`json.loads` on metadata themselves. A key missing from an older export reads as None; a value that
is not valid JSON is an exit-2 error naming the file and key.

Keys (SPEC "Exported model"): bigmodel_version, task, class_names, input_shape, recipe, normalization,
input_kind, exporter, quantize, text_preprocessing (text models: the fitted tokenizer serve uses),
table_preprocessing (table models: the fitted columns, imputation, categories, bins and the encoded feature
order, so that predict and serve encode raw rows without the run directory),
model ({"name", "args", "parameters"}: what the benchmark names), checkpoint ({"which": best|last|path, "path":
relative to the run directory when inside it, "sha256"}: what `eval --onnx` compares against).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bigmodel_cli.errors import UsageError

BIGMODEL_VERSION = "bigmodel_version"
TASK = "task"
CLASS_NAMES = "class_names"
INPUT_SHAPE = "input_shape"
RECIPE = "recipe"
NORMALIZATION = "normalization"
INPUT_KIND = "input_kind"
EXPORTER = "exporter"
QUANTIZE = "quantize"
TEXT_PREPROCESSING = "text_preprocessing"
TABLE_PREPROCESSING = "table_preprocessing"
MODEL = "model"
CHECKPOINT = "checkpoint"

KEYS = (BIGMODEL_VERSION, TASK, CLASS_NAMES, INPUT_SHAPE, RECIPE, NORMALIZATION, INPUT_KIND, EXPORTER, QUANTIZE,
        TEXT_PREPROCESSING, TABLE_PREPROCESSING, MODEL, CHECKPOINT)
JSON_KEYS = frozenset({CLASS_NAMES, INPUT_SHAPE, NORMALIZATION, TEXT_PREPROCESSING, TABLE_PREPROCESSING, MODEL,
                       CHECKPOINT})


@dataclass(frozen=True)
class ExportMetadata:
    """The parsed metadata of one exported model; None where an (older) export did not write the key."""

    bigmodel_version: str | None = None
    task: str | None = None
    class_names: list[str] | None = None
    input_shape: list[int] | None = None
    recipe: str | None = None
    normalization: dict[str, Any] | None = None
    input_kind: str | None = None
    exporter: str | None = None
    quantize: str | None = None
    text_preprocessing: dict[str, Any] | None = None
    table_preprocessing: dict[str, Any] | None = None
    model: dict[str, Any] | None = None
    checkpoint: dict[str, Any] | None = None
    raw: dict[str, str] = field(default_factory=dict)  # every key as stored, ours and any others

    def describe_model(self) -> str:
        """'cnn_small (width 32)', 'resnet18', or the recipe name when the export predates the `model` key."""
        return describe_model(self.model) if self.model else (self.recipe or "unknown model")


def model_info(recipe, net) -> dict[str, Any]:
    """{"name", "args", "parameters"} of a run's network: the recipe's explicit args and the exact parameter
    count, which tells widths apart even where the args leave the width at the factory's default."""
    return {"name": recipe.model.name or recipe.model.component, "args": dict(recipe.model.args),
            "parameters": int(sum(p.numel() for p in net.parameters()))}


def describe_model(model: Mapping[str, Any]) -> str:
    """'cnn_small (width 32, dropout 0.1; 65,834 parameters)' from `model_info`; mappings among the args and
    long values are left out (the parameter count still tells the models apart)."""
    name = model.get("name") or "custom model"
    args = model.get("args") or {}
    shown = ", ".join(f"{k} {v}" for k, v in args.items() if not isinstance(v, dict) and len(str(v)) <= 24)
    shown = shown or "default args"
    count = model.get("parameters")
    return f"{name} ({shown}" + (f"; {count:,} parameters)" if count is not None else ")")


def for_run(run, *, exporter: str, quantize: str = "none", model: dict[str, Any] | None = None,
            checkpoint: dict[str, Any] | None = None) -> dict[str, str]:
    """The metadata of a model exported from `run` (a `run.Run`), every value a string; `model` is `model_info`."""
    from bigmodel_cli import __version__
    from bigmodel_cli.data import manifest as manifests

    manifest, recipe = run.manifest, run.recipe
    values: dict[str, Any] = {
        BIGMODEL_VERSION: __version__,
        TASK: recipe.task,
        CLASS_NAMES: manifest["classes"],
        INPUT_SHAPE: manifests.input_shape(manifest),
        RECIPE: recipe.name,
        NORMALIZATION: manifest["preprocessing"]["normalize"],
        INPUT_KIND: manifest["kind"],
        EXPORTER: exporter,
        QUANTIZE: quantize,
    }
    if model is not None:
        values[MODEL] = model
    if manifest["kind"] == "text":
        values[TEXT_PREPROCESSING] = manifest["preprocessing"]["text"]
    if manifest["kind"] == "tabular" and "table" in manifest["preprocessing"]:
        values[TABLE_PREPROCESSING] = manifest["preprocessing"]["table"]
    if checkpoint is not None:
        values[CHECKPOINT] = checkpoint
    return {key: json.dumps(value) if key in JSON_KEYS else str(value) for key, value in values.items()}


def write(path: Path, props: Mapping[str, str]) -> None:
    """Replace the model file's metadata_props with `props` (and name bigmodel-cli as its producer)."""
    import onnx

    from bigmodel_cli import __version__

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name, model.producer_version = "bigmodel-cli", __version__
    onnx.save(model, str(path))


def parse(raw: Mapping[str, str], where: str = "model") -> ExportMetadata:
    """Typed values of the metadata map `raw` (as onnxruntime's `custom_metadata_map` gives it)."""
    values: dict[str, Any] = {}
    for key in KEYS:
        if key not in raw:
            continue
        text = raw[key]
        if key not in JSON_KEYS:
            values[key] = text
            continue
        try:
            values[key] = json.loads(text)
        except json.JSONDecodeError:
            raise UsageError(f"{where}: metadata '{key}' is not valid JSON ({text[:60]!r}); export the model "
                             f"again") from None
    return ExportMetadata(**values, raw=dict(raw))


def from_session(session, where: str = "model") -> ExportMetadata:
    """The metadata of the model an onnxruntime session has loaded."""
    return parse(session.get_modelmeta().custom_metadata_map, where)


def read(path: Path) -> ExportMetadata:
    """The metadata of an ONNX file, without onnxruntime (the graph is parsed, external weights are not)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError and others for a file that is not a model
        raise UsageError(f"{path}: not a readable ONNX model ({str(e).strip()[:200] or type(e).__name__})") from e
    return parse({p.key: p.value for p in model.metadata_props}, str(path))


def checkpoint_record(run_path: Path, which: str, ckpt_path: Path) -> dict[str, Any]:
    """{"which": best|last|path, "path", "sha256"} of the checkpoint a model is exported from.

    The path is relative to the run directory when the checkpoint is inside it, so a moved run still
    finds it; the SHA-256 tells `eval --onnx` when that file has been replaced since (a later training).
    """
    ckpt_path = Path(ckpt_path)
    try:
        shown = str(ckpt_path.resolve().relative_to(Path(run_path).resolve()))
    except ValueError:
        shown = str(ckpt_path.resolve())
    return {"which": which if which in ("best", "last") else "path", "path": shown, "sha256": fingerprint(ckpt_path)}


def recorded_checkpoint(run_path: Path, record: Mapping[str, Any]) -> tuple[str, bool]:
    """The checkpoint a model records, as `load_network` takes it (best | last | a path), and whether the file
    there still has the recorded SHA-256 (False: replaced since the export, or gone)."""
    which = record.get("which")
    path = Path(record.get("path") or "")
    if not path.is_absolute():
        path = Path(run_path) / path
    spec = which if which in ("best", "last") else str(path)
    same = path.exists() and record.get("sha256") in (None, fingerprint(path))
    return spec, same


def fingerprint(path: Path) -> str:
    """SHA-256 of a checkpoint file, or of every file (name and bytes) of a sharded checkpoint folder."""
    import hashlib

    digest = hashlib.sha256()
    files = sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else [Path(path)]
    for file in files:
        if Path(path).is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
