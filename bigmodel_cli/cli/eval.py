"""`bigmodel eval`: metrics, predictions and plots for trained runs, and CI quality gates.

    bigmodel eval runs/digits-cnn
    bigmodel eval runs/digits-cnn --split val --fail-under accuracy=0.95 --json | jq .metrics.f1
    bigmodel eval runs/breast-cancer-mlp --threshold-search f1 --ci 0.95 --fail-over log_loss=0.2
    bigmodel eval runs/digits-cnn --onnx                       # RUN_DIR/model.onnx
    bigmodel eval runs/digits-cnn --onnx /tmp/digits.onnx      # a model file named after its run
    bigmodel eval runs/a runs/b --data data/2026-11            # two runs side by side on fresh data
    bigmodel eval runs/tabular-csv --data new.csv              # raw labelled rows, preprocessed as in training
    bigmodel eval runs/digits-dcgan --features runs/digits-cnn --fail-over fid=20   # generators: FID/KID on our
                                                               # classifier's features (evaluation.generative)

`--onnx` is a flag, because Typer options cannot take an optional value: alone it means each
run's `model.onnx`; a `.onnx` path written after a RUN_DIR (`--onnx PATH` reads naturally) is
the model to use for that run. `--onnx=PATH` is not accepted. The ONNX model is compared with the
checkpoint it was exported from (recorded by `bigmodel export`).

Files: `RUN_DIR/eval/test.json` for the best checkpoint, `test.last.json` for `--checkpoint last`,
`test.onnx.json` for `--onnx`; `--data DIR|FILE` writes under `RUN_DIR/eval/data-<name>/` (a raw
file's files are `rows.json`, ...: it has no splits). The full table is in
`bigmodel_cli.evaluation.evaluate`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from bigmodel_cli.cli.common import JSON, finish, start


def eval_run(
    paths: list[Path] = typer.Argument(..., metavar="RUN_DIR",
                                       help="Run directories written by `bigmodel train` (several: side by side), each "
                                       "optionally followed by its MODEL.onnx for --onnx."),
    split: str = typer.Option(None, "--split", help="test | val | train (default: the recipe's eval.split)."),
    checkpoint: str = typer.Option(None, "--checkpoint", help="best | last | PATH (default: eval.checkpoint; with "
                                   "--onnx: the one it was exported from). Not best: eval/<split>.last.json..."),
    onnx: bool = typer.Option(False, "--onnx", help="Evaluate the exported ONNX model instead of the checkpoint: "
                              "RUN_DIR/model.onnx, or the .onnx path given after RUN_DIR. Adds agreement with "
                              "the checkpoint it was exported from; written to eval/<split>.onnx.json."),
    data: Path | None = typer.Option(None, "--data", help="Evaluate on another prepared dataset with the run's "
                                     "schema, or on a raw CSV/Parquet/JSONL file with the target column (tabular and "
                                     "text runs: the run's fitted preprocessing is applied, every row evaluated); "
                                     "written to RUN_DIR/eval/data-<name>/."),
    threshold: float | None = typer.Option(None, "--threshold", help="Binary: decision threshold on the positive "
                                           "class's probability (default: eval.threshold, 0.5)."),
    threshold_search: str | None = typer.Option(None, "--threshold-search", help="Binary: f1 | youden | none - "
                                                "use the threshold maximising it on the val split."),
    ci: float | None = typer.Option(None, "--ci", help="Bootstrap confidence intervals at this level (0.95), "
                                    "seeded by the recipe's seed."),
    plots: bool | None = typer.Option(None, "--plots/--no-plots", help="Write PNG plots (default: eval.plots)."),
    fail_under: list[str] | None = typer.Option(None, "--fail-under", help="Gate METRIC=VALUE: exit 3 when the "
                                                "metric is below. Repeatable; also eval.fail_under."),
    fail_over: list[str] | None = typer.Option(None, "--fail-over", help="Gate METRIC=VALUE for losses/errors: "
                                               "exit 3 when above. Repeatable; also eval.fail_over."),
    features: Path | None = typer.Option(None, "--features", help="Generation runs: a classification run of the "
                                         "same data whose penultimate features FID/KID/precision/recall use and whose "
                                         "predictions give the class shares, or a local Inception-v3 weights file "
                                         "(default: eval.generative.features)."),
    samples: int | None = typer.Option(None, "--samples", help="Generation runs: images generated and scored "
                                       "(default: eval.generative.samples, 1000)."),
    inception_layer: int | None = typer.Option(None, "--inception-layer", help="With an Inception weights file: "
                                               "the layer FID/KID use, 64, 192, 768 or 2048 (default: "
                                               "eval.generative.inception_layer, 2048)."),
    as_json: bool = JSON,
) -> None:
    """Evaluate runs on a split; exit 3 when a gate (--fail-under/--fail-over or the recipe's) fails."""
    from bigmodel_cli.errors import GateFailed
    from bigmodel_cli.evaluation import gates
    from bigmodel_cli.evaluation.evaluate import Options, execute, plan
    from bigmodel_cli.evaluation.report import print_side_by_side

    start(as_json)
    options = Options(split=split, checkpoint=checkpoint, data=data, threshold=threshold,
                      threshold_search=threshold_search, ci=ci, plots=plots,
                      fail_under=gates.parse(fail_under or [], "fail_under"),
                      fail_over=gates.parse(fail_over or [], "fail_over"), features=features,
                      samples=samples, inception_layer=inception_layer)
    plans = [plan(run_dir, options, model) for run_dir, model in runs_and_models(paths, onnx)]
    reports = [execute(p) for p in plans]
    from bigmodel_cli.tracking import log_artifacts

    for p, r in zip(plans, reports, strict=True):  # into the run's MLflow run, when it was trained with one
        files = [r["files"]["report"], *([r["files"]["predictions"]] if "predictions" in r["files"] else []),
                 *r["files"]["plots"]]
        run_path = p.run.path if hasattr(p, "run") else p.run_dir  # a generative plan holds its run directory
        log_artifacts(run_path, files, document=r, prefix=Path(r["files"]["report"]).stem.replace(".", "_"))
    if len(reports) > 1 and all("confusion_matrix" in r for r in reports):
        print_side_by_side(reports)
    finish(reports[0] if len(reports) == 1 else {"runs": reports}, as_json)
    failed = [f"{r['run']}: {gates.failure_message(g)}" if len(reports) > 1 else gates.failure_message(g)
              for r in reports for g in r["gates"] if not g["passed"]]
    if failed:
        raise GateFailed("; ".join(failed))


def runs_and_models(paths: list[Path], onnx: bool) -> list[tuple[Path, Path | None]]:
    """Pair each RUN_DIR with the ONNX model to evaluate (None: its checkpoint).

    `runs/a --onnx` -> runs/a/model.onnx; `runs/a --onnx /tmp/a.onnx runs/b` -> /tmp/a.onnx, runs/b/model.onnx.
    """
    from bigmodel_cli.errors import UsageError

    pairs: list[tuple[Path, Path | None]] = []
    named: set[int] = set()  # runs given an explicit model path
    for path in paths:
        if path.suffix.lower() != ".onnx":
            pairs.append((path, path / "model.onnx" if onnx else None))
            continue
        if not onnx:
            raise UsageError(f"{path}: an ONNX model, not a run directory; evaluate it with: "
                             f"bigmodel eval RUN_DIR --onnx {path}")
        if not pairs or len(pairs) - 1 in named:
            raise UsageError(f"--onnx {path}: give its run directory first: bigmodel eval RUN_DIR --onnx {path}")
        pairs[-1] = (pairs[-1][0], path)
        named.add(len(pairs) - 1)
    if not pairs:
        raise UsageError("give at least one RUN_DIR")
    return pairs
