"""`bigmodel benchmark`: PyTorch eager vs ONNX Runtime fp32 / int8 (/ fp16 on GPU), or two models side by side
(bigmodel_cli.export.benchmark).

    bigmodel benchmark runs/digits-cnn
    bigmodel benchmark runs/digits-cnn --batch-sizes 1,64 --json | jq .speedups
    bigmodel benchmark runs/digits-cnn --fail-under accuracy=0.95     # exit 3 when a backend is below
    bigmodel benchmark runs/big runs/pruned --json | jq .comparison   # latency ratio B/A per batch size
    bigmodel benchmark runs/digits-cnn runs/digits-cnn/model.int8.onnx

The table goes to stderr; `--json` prints only the report on stdout.
"""

from __future__ import annotations

from pathlib import Path

import typer

from bigmodel_cli.cli.common import JSON, finish, start


def benchmark(
    targets: list[Path] = typer.Argument(..., metavar="RUN_DIR|MODEL.onnx [RUN_DIR|MODEL.onnx]",
                                         help="A run directory or an ONNX file; two of them (A B) are compared side "
                                         "by side with the latency ratio B/A."),
    batch_sizes: str = typer.Option("1,8,64", "--batch-sizes", help="Comma-separated batch sizes."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best | last | PATH (of each run)."),
    iterations: int = typer.Option(20, "--iterations", min=1, help="Timed calls per backend and batch size "
                                                                   "(at least; more within 0.3 s)."),
    fail_under: list[str] | None = typer.Option(None, "--fail-under", help="Gate METRIC=VALUE on every backend's "
                                                "validation metric: exit 3 when one is below. Repeatable."),
    as_json: bool = JSON,
) -> None:
    """Latency p50/p99, throughput, size and validation metric of each backend, or of two models side by side."""
    from bigmodel_cli import console
    from bigmodel_cli.evaluation import gates
    from bigmodel_cli.export import benchmark as bench

    start(as_json)
    report = bench.benchmark(targets, bench.parse_batch_sizes(batch_sizes), device=device, checkpoint=checkpoint,
                             iterations=iterations, fail_under=gates.parse(fail_under or [], "fail_under"))
    if not as_json:
        console.console.out(bench.table(report), highlight=False)
    finish(report, as_json)
    bench.check_gates(report)
