"""`bigmodel benchmark`: PyTorch eager vs ONNX Runtime fp32 / int8 (/ fp16 on GPU), side by side
(bigmodel_cli.export.benchmark).

    bigmodel benchmark runs/digits-cnn
    bigmodel benchmark runs/digits-cnn --batch-sizes 1,64 --json | jq .speedups
    bigmodel benchmark runs/digits-cnn --fail-under accuracy=0.95     # exit 3 when a backend is below
"""

from __future__ import annotations

from pathlib import Path

import typer

from bigmodel_cli.cli.common import JSON, finish, start


def benchmark(
    run_dir: Path = typer.Argument(..., help="A run directory written by `bigmodel train`."),
    batch_sizes: str = typer.Option("1,8,64", "--batch-sizes", help="Comma-separated batch sizes."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best | last | PATH."),
    iterations: int = typer.Option(20, "--iterations", min=1, help="Timed calls per backend and batch size "
                                                                   "(at least; more within 0.3 s)."),
    fail_under: list[str] | None = typer.Option(None, "--fail-under", help="Gate METRIC=VALUE on every backend's "
                                                "validation metric: exit 3 when one is below. Repeatable."),
    as_json: bool = JSON,
) -> None:
    """Latency p50/p99, throughput, size and validation metric of PyTorch eager and each ONNX Runtime variant."""
    from bigmodel_cli.evaluation import gates
    from bigmodel_cli.export import benchmark as bench

    start(as_json)
    report = bench.benchmark_run(run_dir, bench.parse_batch_sizes(batch_sizes), device=device,
                                 checkpoint=checkpoint, iterations=iterations,
                                 fail_under=gates.parse(fail_under or [], "fail_under"))
    if as_json:
        finish(report, as_json)
    else:
        typer.echo(bench.table(report))
    bench.check_gates(report)
