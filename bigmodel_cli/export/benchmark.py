"""`bigmodel benchmark`: what exporting gains, measured side by side on the same inputs.

    bigmodel benchmark runs/digits-cnn                          # batch sizes 1, 8, 64 on CPU
    bigmodel benchmark runs/digits-cnn --batch-sizes 1,64 --json --fail-under accuracy=0.95

Backends: PyTorch eager (the trained module), ONNX Runtime fp32, ONNX Runtime int8 (the same
quantisation as `export --quantize int8`) and ONNX Runtime fp16 (GPU only: on CPU fp16 runs
slower than fp32, so it is listed as skipped). The models are exported into a scratch folder;
the run directory is not touched. For every backend: latency p50/p99 per batch size,
throughput, model size, the validation metric, and speed-ups against PyTorch and fp32.

Fairness: PyTorch runs the same module as the ONNX graph (normalisation and softmax included)
in eval mode under `torch.inference_mode`; both runtimes get the same number of threads
(PyTorch's, by default one per core), onnxruntime with its default thread spinning (what an
`InferenceSession` gives users; `bigmodel serve` turns spinning off). The backends are timed
in turn, ROUNDS times over, so a burst of load from other jobs falls on all of them alike.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bigmodel_cli import console
from bigmodel_cli.errors import GateFailed, UsageError

MIN_SECONDS = 0.3  # per backend and batch size (all rounds together), after warm-up
MAX_SECONDS = 3.0
ROUNDS = 3  # every backend is timed in turn, this many times over, for each batch size
SETTLE_S = 0.1  # pause before each turn: the previous backend's threads stop spinning (onnxruntime: ~50 ms)


def parse_batch_sizes(text: str) -> list[int]:
    """'1,8,64' -> [1, 8, 64]; anything else is an exit-2 error quoting it."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise UsageError(f"--batch-sizes '{text}': expected positive integers separated by commas, e.g. 1,8,64")
    return sizes


def time_calls(call, batch, iterations: int, warmup: int = 3, least: int = 5, min_s: float = MIN_SECONDS,
               max_s: float = MAX_SECONDS) -> list[float]:
    """Wall times (ms) of `call(batch)` after `warmup` calls: at least `least` calls, then more until both
    `iterations` calls and `min_s` seconds are reached (but not past `max_s` seconds)."""
    for _ in range(warmup):
        call(batch)
    times: list[float] = []
    begin = time.perf_counter()
    while len(times) < least or (time.perf_counter() - begin < max_s
                                 and (len(times) < iterations or time.perf_counter() - begin < min_s)):
        start = time.perf_counter()
        call(batch)
        times.append((time.perf_counter() - start) * 1000)
    return times


class Backend:
    """One way of running the model: a name, a callable on a numpy batch, a file size and a device."""

    def __init__(self, name: str, call, size_bytes: int):
        self.name, self.call, self.size_bytes = name, call, size_bytes


def _torch_backend(module, device: str, size_bytes: int) -> Backend:
    module = module.to(device)

    def call(batch: np.ndarray):
        with torch.inference_mode():
            out = module(torch.from_numpy(batch).to(device))
            first = out[0] if isinstance(out, tuple) else out
            return first.float().cpu().numpy()

    return Backend("pytorch", call, size_bytes)


def ort_options(threads: int):
    """The session options every onnxruntime backend gets: `threads` intra-op threads (PyTorch's count), one graph
    at a time, and onnxruntime's default thread spinning (the fastest at batch 1; see the module docstring)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    return options


def _ort_backend(name: str, path: Path, providers: list[str]) -> Backend:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), sess_options=ort_options(torch.get_num_threads()), providers=providers)
    first = session.get_outputs()[0].name
    return Backend(name, lambda batch: session.run([first], {"input": batch})[0], path.stat().st_size)


def _metric(backend: Backend, rows: np.ndarray, labels: np.ndarray, task: str) -> tuple[str, float]:
    from bigmodel_cli.export.quantize import main_metric

    outputs = [np.asarray(backend.call(rows[i : i + 256]), np.float32) for i in range(0, len(rows), 256)]
    return main_metric(task, np.concatenate(outputs), labels)


def _backends(run, module, ckpt_path: Path, work: Path, device: str, notes: list[str]) -> list[Backend]:
    """Export fp32 (and int8, fp16 where they apply) into `work`; one Backend per way of running the model."""
    from bigmodel_cli.devices import ort_providers
    from bigmodel_cli.export import onnx_export as oe
    from bigmodel_cli.export import quantize as q

    providers = ort_providers(device)
    rows, _ = oe.validation_rows(run, limit=2)
    sample = torch.from_numpy(np.resize(rows, (2, *rows.shape[1:])))
    fp32 = work / "fp32.onnx"
    oe._add_metadata(fp32, run, oe._export(module, sample, fp32, run.recipe.export.opset, run.recipe.task),
                     run.recipe.export.opset)
    backends = [_torch_backend(module, device, ckpt_path.stat().st_size), _ort_backend("onnxruntime-fp32", fp32,
                                                                                      providers)]
    if device == "cuda":
        q.to_fp16(fp32, work / "fp16.onnx")
        backends.append(_ort_backend("onnxruntime-fp16", work / "fp16.onnx", providers))
    else:
        notes.append("onnxruntime-fp16: skipped on CPU (fp16 is a GPU speed-up; use --device cuda)")
    try:
        calibration = oe._calibration(run, "int8")
    except UsageError as e:
        notes.append(f"onnxruntime-int8: skipped ({e})")
        return backends
    method = q.int8_method(run.recipe.model.name, run.manifest["kind"])
    q.to_int8(fp32, work / "int8.onnx", calibration, method)
    backends.append(_ort_backend("onnxruntime-int8", work / "int8.onnx", ["CPUExecutionProvider"]))
    return backends


def _measure(backends: list[Backend], rows: np.ndarray, batch_sizes: list[int],
             iterations: int) -> dict[str, dict[str, Any]]:
    """Latency per backend and batch size; the backends take turns (ROUNDS blocks each) on the same batch."""
    result: dict[str, dict[str, Any]] = {b.name: {} for b in backends}
    for size in batch_sizes:
        batch = np.ascontiguousarray(np.resize(rows, (size, *rows.shape[1:])))
        times: dict[str, list[float]] = {b.name: [] for b in backends}
        for turn in range(ROUNDS):
            for backend in backends:
                time.sleep(SETTLE_S)
                times[backend.name] += time_calls(backend.call, batch, -(-iterations // ROUNDS),
                                                  warmup=3 if turn == 0 else 1, least=2,
                                                  min_s=MIN_SECONDS / ROUNDS, max_s=MAX_SECONDS / ROUNDS)
        for name, got in times.items():
            p50 = float(np.percentile(got, 50))
            result[name][str(size)] = {"p50_ms": p50, "p99_ms": float(np.percentile(got, 99)), "calls": len(got),
                                       "throughput_per_s": size / (p50 / 1000)}
    return result


def _speedups(results: dict[str, Any], batch_sizes: list[int], notes: list[str]) -> dict[str, Any]:
    """p50 ratios: every backend against PyTorch eager, and int8 against fp32 (a note where int8 is slower)."""
    ratios: dict[str, Any] = {}
    for name, res in results.items():
        ratios[f"{name}_vs_pytorch"] = {str(b): results["pytorch"]["latency"][str(b)]["p50_ms"] /
                                        res["latency"][str(b)]["p50_ms"] for b in batch_sizes}
    if "onnxruntime-int8" in results:
        int8 = {str(b): results["onnxruntime-fp32"]["latency"][str(b)]["p50_ms"] /
                results["onnxruntime-int8"]["latency"][str(b)]["p50_ms"] for b in batch_sizes}
        ratios["onnxruntime-int8_vs_fp32"] = int8
        slower = [b for b, r in int8.items() if r < 1.0]
        if slower:
            notes.append(f"int8 is not faster than fp32 for this model at batch {', '.join(slower)}")
    return ratios


def benchmark_run(run_dir: str | Path, batch_sizes: list[int] | None = None, device: str = "cpu",
                  checkpoint: str = "best", iterations: int = 20,
                  fail_under: dict[str, float] | None = None) -> dict[str, Any]:
    """Measure every backend on the run's validation rows; GateFailed when a metric is below `fail_under`."""
    from bigmodel_cli.export import onnx_export as oe
    from bigmodel_cli.run import load_run

    batch_sizes = batch_sizes or [1, 8, 64]
    if device not in ("cpu", "cuda"):
        raise UsageError(f"--device {device}: expected cpu or cuda")
    run = load_run(run_dir)
    module, ckpt_path = oe.exportable(run, checkpoint)
    rows, labels = oe.validation_rows(run)
    if len(rows) == 0:
        raise UsageError(f"{run.recipe.prepared_dir}: no validation or train rows to benchmark on; rerun prepare-data")
    notes: list[str] = []
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bigmodel-bench-") as work:
        backends = _backends(run, module, ckpt_path, Path(work), device, notes)
        for backend in backends:
            console.info(f"validation metric: {backend.name}")
            name, value = _metric(backend, rows, labels, run.recipe.task)
            results[backend.name] = {"size_bytes": backend.size_bytes, "metric": {name: value}}
        console.info(f"timing {len(backends)} backends in turn ({ROUNDS} rounds per batch size)")
        for name, latency in _measure(backends, rows, batch_sizes, iterations).items():
            results[name]["latency"] = latency
    threads = torch.get_num_threads()
    notes.append(f"threads: {threads} for PyTorch and for each onnxruntime session (intra-op, spinning on)")
    report = {"run": str(run.path), "device": device, "batch_sizes": batch_sizes, "rows": int(len(rows)),
              "threads": threads, "ort_session": {"intra_op_threads": threads, "allow_spinning": True},
              "backends": results,
              "speedups": _speedups(results, batch_sizes, notes), "notes": notes}
    report["gates"] = _gates(results, fail_under or {})
    return report


def _gates(results: dict[str, Any], fail_under: dict[str, float]) -> list[dict[str, Any]]:
    gates = []
    for metric, threshold in fail_under.items():
        for name, res in results.items():
            if metric not in res["metric"]:
                known = ", ".join(res["metric"])
                raise UsageError(f"--fail-under {metric}: not measured by benchmark (metrics: {known})")
            value = res["metric"][metric]
            gates.append({"backend": name, "metric": metric, "value": value, "threshold": threshold,
                          "passed": value >= threshold})
    return gates


def check_gates(report: dict[str, Any]) -> None:
    failed = [g for g in report["gates"] if not g["passed"]]
    if failed:
        worst = ", ".join(f"{g['backend']} {g['metric']} {g['value']:.4f} < {g['threshold']}" for g in failed)
        raise GateFailed(f"benchmark gate failed: {worst}")


def table(report: dict[str, Any]) -> str:
    """The report as a plain-text table (one line per backend and batch size)."""
    lines = [f"{'backend':<18} {'batch':>5} {'p50 ms':>9} {'p99 ms':>9} {'rows/s':>10} {'vs torch':>8} "
             f"{'size MiB':>8}  metric"]
    for name, res in report["backends"].items():
        metric = ", ".join(f"{k} {v:.4f}" for k, v in res["metric"].items())
        for size, lat in res["latency"].items():
            ratio = report["speedups"][f"{name}_vs_pytorch"][size]
            lines.append(f"{name:<18} {size:>5} {lat['p50_ms']:>9.3f} {lat['p99_ms']:>9.3f} "
                         f"{lat['throughput_per_s']:>10.0f} {ratio:>7.2f}x {res['size_bytes'] / 2**20:>8.2f}  {metric}")
    int8 = report["speedups"].get("onnxruntime-int8_vs_fp32")
    if int8:
        lines.append("int8 vs fp32: " + ", ".join(f"batch {b} {r:.2f}x" for b, r in int8.items()))
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)
