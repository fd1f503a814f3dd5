"""`bigmodel predict`: a trained run or an exported model on new, unlabeled data (tables, images, texts).

    bigmodel predict runs/churn --data next_month.csv --keep customer_id --out scores.csv
    bigmodel predict runs/churn/model.onnx --data next_month.parquet --threshold 0.3 --out scores.parquet
    bigmodel predict runs/digits-cnn --data photos/ --top-k 3 --json | jq .rows_per_s
    bigmodel predict runs/text-transformer --data reviews.txt --on-bad-row skip --devices 2

The engine is `bigmodel_cli.inference.predict`; docs/predict.md has the output columns and every option.
"""

from __future__ import annotations

from pathlib import Path

import typer

from bigmodel_cli.cli.common import JSON, finish, start


def predict(
    model: Path = typer.Argument(..., metavar="RUN_DIR|MODEL.onnx",
                                 help="A run directory (its checkpoint, in PyTorch) or an exported ONNX model."),
    data: list[Path] = typer.Option(..., "--data", help="A CSV/Parquet/JSONL file of rows (tabular and text "
                                    "models), a .txt file with one text per line (text models), or image files, "
                                    "folders of images or a .txt list of image paths (image models; repeatable)."),
    out: Path | None = typer.Option(None, "--out", help="Output file: .csv, .parquet or .jsonl (default: "
                                    "RUN_DIR/predict/<data name>.csv, or beside the ONNX file)."),
    keep: str | None = typer.Option(None, "--keep", help="Input columns copied to the output before the "
                                    "predictions, e.g. customer_id,region (images: the path always is)."),
    top_k: int | None = typer.Option(None, "--top-k", help="Classification: the K most likely classes and their "
                                     "probabilities (top_1, p_top_1, ...) instead of one p_<class> column per class."),
    threshold: float | None = typer.Option(None, "--threshold", help="Binary classification: predict the second "
                                           "class when its probability is at least T (default: the likelier one)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Rows per model call (default 4096 rows or "
                                          "texts, 64 images)."),
    devices: int = typer.Option(1, "--devices", help="Worker processes the rows are split over (each its own GPU "
                                "when there are GPUs); one ordered output."),
    on_bad_row: str = typer.Option("error", "--on-bad-row", help="error: exit 2 naming the first bad row | skip: "
                                   "leave bad rows out | null: write them with an empty prediction."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="RUN_DIR only: best | last | PATH."),
    as_json: bool = JSON,
) -> None:
    """Predict new rows, images or texts with the run's own preprocessing; streams files of any size."""
    from bigmodel_cli.inference.predict import Options
    from bigmodel_cli.inference.predict import predict as run_predict

    start(as_json)
    columns = [k.strip() for k in keep.split(",") if k.strip()] if keep else []
    options = Options(data=list(data), out=out, keep=columns, top_k=top_k, threshold=threshold,
                      batch_size=batch_size, devices=devices, on_bad_row=on_bad_row, checkpoint=checkpoint)
    finish(run_predict(model, options), as_json)
