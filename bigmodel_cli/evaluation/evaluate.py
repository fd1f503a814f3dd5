"""`bigmodel eval`: metrics, per-class report, confusion matrix, predictions CSV, plots and gates.

    bigmodel eval runs/digits-cnn --fail-under accuracy=0.95
    bigmodel eval runs/breast-cancer-mlp --threshold-search f1 --ci 0.95 --json | jq .ci
    bigmodel eval runs/digits-cnn --onnx --split val          # RUN_DIR/model.onnx, plus agreement with PyTorch

    report = evaluate("runs/digits-cnn", Options(split="val", ci=0.95))

An evaluation is planned first (run, data, schema, model and gates all checked: any bad
input is exit 2 before anything is computed), then executed: the split is streamed from its
memory-mapped arrays through the model (`inference.predictor`) in batches, scored with
scikit-learn, and the report, predictions CSV and plots are written to temporary names and
renamed together at the end.

Where the files go (`output_place`), so that no two evaluations of one run overwrite each other
(each stem gets .json, _predictions.csv and the plots' _roc.png, _pr.png...):

    evaluated                            folder                        file stem      e.g.
    --checkpoint best (the default)      RUN_DIR/eval/                 <split>        test.json
    --checkpoint last                    RUN_DIR/eval/                 <split>.last   test.last.json
    --checkpoint PATH                    RUN_DIR/eval/                 <split>.<stem> test.epoch_007.json
    --onnx (RUN_DIR/model.onnx)          RUN_DIR/eval/                 <split>.onnx   test.onnx.json
    --onnx RUN_DIR/model.int8.onnx       RUN_DIR/eval/                 ...int8.onnx   test.int8.onnx.json
    --onnx /tmp/digits.onnx              RUN_DIR/eval/                 ...digits.onnx test.digits.onnx.json
    --data data/2026-11 (prepared)       RUN_DIR/eval/data-2026-11/    as above       test.json, test.last.json
    --data new.csv (raw rows)            RUN_DIR/eval/data-new/        rows[.<tag>]   rows.json, rows.last.json

A raw file has no splits (every row is evaluated, `--split` is refused), so its files are named
`rows`, and the report's `split` is null.

`eval --onnx` also runs the checkpoint the model was exported from (recorded in the model's
metadata by `bigmodel export`, see `export.metadata`) and reports how closely the two agree; an
explicit `--checkpoint` overrides it, and a model without that record is compared with
`eval.checkpoint` (a warning says so).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel_cli import atomic, console
from bigmodel_cli.errors import JobFailed, UsageError
from bigmodel_cli.evaluation import gates as G
from bigmodel_cli.evaluation import metrics as M
from bigmodel_cli.evaluation.dataset import load_eval_split
from bigmodel_cli.inference.predictor import CheckpointPredictor, OnnxPredictor
from bigmodel_cli.run import Run, load_run


@dataclass
class Options:
    """What the command line can change; None keeps the recipe's `eval` section."""

    split: str | None = None
    checkpoint: str | None = None
    data: Path | None = None
    threshold: float | None = None
    threshold_search: str | None = None
    ci: float | None = None
    plots: bool | None = None
    fail_under: dict[str, float] = field(default_factory=dict)
    fail_over: dict[str, float] = field(default_factory=dict)
    features: Path | None = None  # generation: a classification run whose features FID/KID... use
    samples: int | None = None  # generation: images generated and scored (None: eval.generative.samples)
    inception_layer: int | None = None  # generation with an Inception weights file (None: eval.generative's)


GENERATIVE = ("generation", "restoration")


@dataclass
class GenerativePlan:
    """A generation/restoration run: `evaluation.generative` checks and scores it when executed."""

    run_dir: Path
    options: Options
    onnx: Path | None


@dataclass
class Plan:
    """One checked evaluation: everything needed to run it, nothing computed or written yet."""

    label: str
    run: Run
    cfg: Any  # schema.EvalSection with the command line's values applied
    split: str | None  # None: a raw file's rows (--data FILE)
    x: np.ndarray
    y: np.ndarray
    data_dir: Path
    other_data: Path | None  # --data DIR, or None for the run's own prepared data
    out_dir: Path
    stem: str  # file names: <stem>.json, <stem>_predictions.csv, <stem>_roc.png... (output_place)
    gates: list[G.Gate]
    outputs: Callable[[np.ndarray], np.ndarray]  # raw model outputs for raw inputs, batched
    source: dict[str, str]  # {"checkpoint": path} or {"model": path}
    reference: Callable[[np.ndarray], np.ndarray] | None = None  # the PyTorch model, when evaluating ONNX
    reference_path: str | None = None
    reference_source: str | None = None  # what chose the reference checkpoint
    threshold_source: str = "eval.threshold"


def plan(run_dir: str | Path, options: Options | None = None, onnx: Path | None = None) -> Plan | GenerativePlan:
    """Check everything an evaluation needs; exit-2 errors name the flag, file or column."""
    options = options or Options()
    run = load_run(run_dir)
    if run.recipe.task in GENERATIVE:
        return GenerativePlan(Path(run_dir), options, onnx)
    if options.features is not None:
        raise UsageError(f"--features {options.features}: for generation runs (FID/KID on a classifier's features); "
                         f"{run_dir} is a {run.recipe.task} run")
    if run.recipe.task == "language-modeling":  # loss and perplexity of a decoder (evaluation.language_model)
        from bigmodel_cli.evaluation import language_model

        return language_model.plan(run, str(run_dir), options, onnx)
    cfg = _effective_config(run, options)
    classes = run.manifest["classes"] if run.recipe.task == "classification" else None
    known = M.metric_names(run.recipe.task, len(classes or []), cfg.top_k)
    gates = G.resolve(cfg, options.fail_under, options.fail_over, known)
    raw_file = options.data is not None and options.data.is_file()
    if raw_file and options.split is not None:
        raise UsageError(f"--split {options.split}: --data {options.data} is a raw file whose every row is evaluated; "
                         f"drop --split")
    split = options.split or cfg.split
    x, y, _ = load_eval_split(run, split, options.data)
    data_dir = Path(options.data or run.recipe.prepared_dir)
    binary_only = options.threshold is not None or options.threshold_search not in (None, "none")
    if binary_only and len(classes or []) != 2:
        console.warn("--threshold and --threshold-search apply to binary classification only; ignored")
    checkpoint = options.checkpoint or cfg.checkpoint
    rows = batch_rows(cfg.batch_size, x)
    common = dict(label=str(run_dir), run=run, cfg=cfg, split=None if raw_file else split, x=x, y=y,
                  data_dir=data_dir, other_data=options.data, gates=gates,
                  threshold_source="--threshold" if options.threshold is not None else "eval.threshold")
    if onnx is None:
        model = CheckpointPredictor(run, checkpoint)
        out_dir, stem = output_place(run.path, split, options.data, _checkpoint_tag(run.path, checkpoint, model.path))
        return Plan(outputs=lambda inputs: model.predict(inputs, rows), source=model.source, out_dir=out_dir,
                    stem=stem, **common)
    model = OnnxPredictor(run, onnx)
    out_dir, stem = output_place(run.path, split, options.data, onnx_tag(onnx))
    spec, chosen_by = _reference_checkpoint(run, options.checkpoint, cfg.checkpoint, model.metadata)
    try:
        reference = CheckpointPredictor(run, spec)
    except UsageError as e:
        console.warn(f"no agreement with PyTorch reported: {e}")
        reference = None
    return Plan(outputs=lambda inputs: model.predict(inputs, rows), source=model.source, out_dir=out_dir, stem=stem,
                reference=(lambda inputs: reference.predict(inputs, rows)) if reference else None,
                reference_path=str(reference.path) if reference else None, reference_source=chosen_by, **common)


def output_place(run_path: Path, split: str, data: Path | None, tag: str) -> tuple[Path, str]:
    """(folder, file stem) of an evaluation's files: see the module docstring's table."""
    folder = Path(run_path) / "eval"
    base = split
    if data is not None:
        folder = folder / f"data-{data.stem if data.is_file() else data.resolve().name}"
        base = "rows" if data.is_file() else split
    return folder, f"{base}.{tag}" if tag else base


def _checkpoint_tag(run_path: Path, spec: str, path: Path) -> str:
    """'' for the run's best checkpoint, 'last' for its last, else the checkpoint file's (or folder's) stem."""
    if spec in ("best", "last"):
        return "" if spec == "best" else "last"
    resolved = Path(path).resolve()
    if resolved.parent == (Path(run_path) / "checkpoints").resolve() and resolved.stem in ("best", "last"):
        return "" if resolved.stem == "best" else "last"
    return resolved.stem


def onnx_tag(path: Path) -> str:
    """'onnx' for model.onnx, 'int8.onnx' for model.int8.onnx, 'digits.onnx' for digits.onnx."""
    name = Path(path).name
    base = name[: -len(".onnx")] if name.lower().endswith(".onnx") else name
    if base == "model":
        return "onnx"
    return f"{base[len('model.'):] if base.startswith('model.') else base}.onnx"


def _reference_checkpoint(run: Run, explicit: str | None, configured: str, meta) -> tuple[str, str]:
    """The checkpoint an ONNX model is compared with, and what chose it."""
    from bigmodel_cli.export.metadata import recorded_checkpoint

    if explicit is not None:
        return explicit, "--checkpoint"
    if meta.checkpoint:
        spec, same = recorded_checkpoint(run.path, meta.checkpoint)
        if not same:
            console.warn(f"{meta.checkpoint.get('path')}, the checkpoint this model was exported from, has changed "
                         f"since the export (or is gone); its agreement with the model is not the export's")
        return spec, "recorded by bigmodel export"
    console.warn(f"the model does not record the checkpoint it was exported from (an older export); comparing it "
                 f"with eval.checkpoint ({configured})")
    return configured, "eval.checkpoint (not recorded by the export)"


def _effective_config(run: Run, options: Options):
    """The recipe's eval section with the command line's values, validated like the recipe."""
    from pydantic import ValidationError

    flags = {"threshold": ("--threshold", options.threshold), "threshold_search": ("--threshold-search",
             options.threshold_search), "ci": ("--ci", options.ci), "plots": ("--plots", options.plots)}
    updates = {key: value for key, (_, value) in flags.items() if value is not None}
    section = type(run.recipe.eval)
    try:
        return section.model_validate({**run.recipe.eval.model_dump(), **updates})
    except ValidationError as e:
        error = e.errors()[0]
        key = str(error["loc"][0])
        raise UsageError(f"{flags.get(key, (f'eval.{key}',))[0]} {updates.get(key)}: {error['msg']}") from None


def batch_rows(batch_size: int | None, x: np.ndarray) -> int:
    """eval.batch_size, or as many rows as make about 8 MiB of float32 input (64 to 8192 rows).

    Large batches keep per-batch overhead (and thread synchronisation on a busy CPU) small;
    the cap keeps the memory of one batch's activations bounded.
    """
    if batch_size:
        return batch_size
    row_bytes = 4 * max(1, int(np.prod(x.shape[1:])))
    return int(np.clip(8 * 2**20 // row_bytes, 64, 8192))


def evaluate(run_dir: str | Path, options: Options | None = None, onnx: Path | None = None) -> dict[str, Any]:
    """Plan and execute one evaluation; the report's `gates` says whether each quality gate held."""
    return execute(plan(run_dir, options, onnx))


def execute(p: Plan | GenerativePlan) -> dict[str, Any]:
    from bigmodel_cli.evaluation.report import print_report

    if isinstance(p, GenerativePlan):
        from bigmodel_cli.evaluation.generative import evaluate_generative

        return evaluate_generative(p.run_dir, p.options, p.onnx, _effective_config,
                                   lambda path, split, which, ckpt: output_place(path, split, None,
                                                                                _checkpoint_tag(path, which, ckpt)))

    if not isinstance(p, Plan):  # a language-modelling plan
        return p.execute()
    started = time.perf_counter()
    task = p.run.recipe.task
    outputs = p.outputs(p.x)
    _check_finite(outputs, _rows_named(p.split, p.data_dir))
    y = np.asarray(p.y)
    report: dict[str, Any] = {"run": p.label, "split": p.split, "n": int(len(y)), **p.source, "task": task,
                              "data": str(p.data_dir), "warnings": []}
    if task == "classification":
        scores, pred = _classify(p, outputs, y, report)
    else:
        scores, pred = None, outputs[:, 0]
        report.update(metrics=M.regression(y, pred), per_class={}, confusion_matrix=None)
    _explain_undefined(report, y)
    if p.cfg.ci is not None:
        _confidence(p, report, y, scores, pred)
    if p.reference is not None:
        report["onnx"] = _agreement(p, outputs)
    report["gates"] = G.check(p.gates, report["metrics"])
    report["time_s"] = time.perf_counter() - started
    _write(p, report, y, pred, scores)
    print_report(report)
    return report


def _rows_named(split: str | None, data: Path) -> str:
    """"split 'test'", or "the rows of new.csv" for a raw file."""
    return f"split '{split}'" if split is not None else f"the rows of {data.name}"


def _check_finite(outputs: np.ndarray, rows: str) -> None:
    """A model that outputs NaN/inf has failed; metrics of it would be silently wrong."""
    bad = np.flatnonzero(~np.isfinite(outputs).all(axis=1))
    if len(bad):
        raise JobFailed(f"the model's outputs are NaN or infinite on {len(bad)} of {len(outputs)} rows of {rows} "
                        f"(first: row {bad[0]}); nothing written")


def _warn(report: dict[str, Any], message: str) -> None:
    console.warn(message)
    report["warnings"].append(message)


def _classify(p: Plan, outputs: np.ndarray, y: np.ndarray, report: dict[str, Any]):
    from bigmodel_cli.inference.batch import softmax

    classes = p.run.manifest["classes"]
    proba = softmax(outputs)
    threshold = None
    if len(classes) == 2:
        threshold = _threshold(p, report)
    values, per_class, cm = M.classification(y, proba, classes, threshold=threshold, top_k=p.cfg.top_k)
    report.update(classes=classes, metrics=values, per_class=per_class, confusion_matrix=cm,
                  confusion_matrix_normalized=M.normalized_confusion(cm))
    return proba, M.decide(proba, threshold)


def _threshold(p: Plan, report: dict[str, Any]) -> float:
    """eval.threshold, or the one maximising eval.threshold_search on the validation split."""
    value, source = p.cfg.threshold, p.threshold_source
    criterion = p.cfg.threshold_search
    if criterion != "none":
        found = _search_threshold(p, criterion, report)
        if found is not None:
            value, source = found["threshold"], f"best {criterion} on the val split"
            report["threshold_search"] = found
    report["threshold"] = {"value": value, "source": source, "positive_class": p.run.manifest["classes"][1]}
    return value


def _search_threshold(p: Plan, criterion: str, report: dict[str, Any]) -> dict[str, Any] | None:
    from bigmodel_cli.inference.batch import softmax

    if p.split == "val":
        _warn(report, "the threshold is searched on the split being evaluated (val): its metrics are optimistic")
    try:
        other = p.other_data if p.other_data is None or p.other_data.is_dir() else None  # raw file: the run's val
        x_val, y_val, _ = load_eval_split(p.run, "val", other)
    except UsageError as e:
        _warn(report, f"--threshold-search {criterion}: {e}; keeping {p.cfg.threshold}")
        return None
    found = M.best_threshold(np.asarray(y_val), softmax(p.outputs(x_val))[:, 1], criterion)
    if found is None:
        _warn(report, f"--threshold-search {criterion}: the val split has one class only; keeping {p.cfg.threshold}")
        return None
    return {"criterion": criterion, "threshold": found[0], "val_score": found[1], "val_rows": int(len(y_val))}


def _explain_undefined(report: dict[str, Any], y: np.ndarray) -> None:
    report["undefined_metrics"] = M.undefined(report["metrics"])
    for name in report["undefined_metrics"]:
        reason = M.why_undefined(name, y, report.get("classes"))
        _warn(report, f"{name} is undefined on {_rows_named(report['split'], Path(report['data']))} ({reason}); "
                      f"reported as null")


def _confidence(p: Plan, report: dict[str, Any], y: np.ndarray, scores, pred) -> None:
    from bigmodel_cli.evaluation.bootstrap import confidence_intervals

    task = p.run.recipe.task
    names = tuple(m for m in M.HEADLINE[task] if report["metrics"].get(m) is not None)
    intervals = confidence_intervals(task, y, scores, pred, p.cfg.ci, p.cfg.ci_resamples, p.run.recipe.seed, names)
    report["ci"] = {"level": p.cfg.ci, "resamples": p.cfg.ci_resamples, "seed": p.run.recipe.seed,
                    "method": "percentile bootstrap", "intervals": intervals}
    for name, interval in intervals.items():
        if interval is None:
            _warn(report, f"no confidence interval for {name}: undefined on most resamples")


def _agreement(p: Plan, outputs: np.ndarray) -> dict[str, Any]:
    """How closely the ONNX model matches the PyTorch checkpoint on the same rows."""
    from bigmodel_cli.inference.batch import softmax

    reference = p.reference(p.x)
    out: dict[str, Any] = {"checkpoint": p.reference_path, "checkpoint_chosen_by": p.reference_source}
    if p.run.recipe.task == "classification":
        got, want = softmax(outputs), softmax(reference)
        threshold = p.cfg.threshold if got.shape[1] == 2 else None
        out["agreement"] = float(np.mean(M.decide(got, threshold) == M.decide(want, threshold)))
        out["compared"] = "probabilities"
    else:
        got, want = outputs, reference
        out["compared"] = "prediction"
    out["max_abs_difference"] = float(np.max(np.abs(got - want))) if got.size else 0.0
    return out


def _write(p: Plan, report: dict[str, Any], y: np.ndarray, pred: np.ndarray, scores) -> None:
    """Predictions CSV, plots and the JSON report, renamed into place together only if all succeed."""
    from bigmodel_cli.evaluation import plots, predictions_csv

    out, split = p.out_dir, p.stem
    report["files"] = {"report": str(out / f"{split}.json"), "predictions": str(out / f"{split}_predictions.csv"),
                       "plots": []}
    with contextlib.ExitStack() as stack:

        @contextlib.contextmanager
        def deferred(dest: Path) -> Iterator[Path]:
            yield stack.enter_context(atomic.atomic_path(dest))

        with deferred(out / f"{split}_predictions.csv") as tmp:
            predictions_csv.write(tmp, y, pred, scores, report.get("classes"))
        if p.cfg.plots:
            if scores is not None:
                report["files"]["plots"] = plots.classification_plots(y, scores, report["classes"],
                                                                      report["confusion_matrix"], out, split, deferred)
            else:
                report["files"]["plots"] = plots.regression_plots(y, pred, out, split, deferred)
        with deferred(out / f"{split}.json") as tmp:
            atomic.write_json(tmp, report)
