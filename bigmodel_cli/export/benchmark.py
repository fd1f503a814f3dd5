"""`bigmodel benchmark`: what exporting (or pruning, or quantising) gains, measured side by side.

    bigmodel benchmark runs/digits-cnn                          # batch sizes 1, 8, 64 on CPU
    bigmodel benchmark runs/digits-cnn --batch-sizes 1,64 --json --fail-under accuracy=0.95
    bigmodel benchmark runs/big runs/pruned                     # A and B side by side, latency ratio B/A
    bigmodel benchmark runs/digits-cnn/model.onnx runs/digits-cnn/model.int8.onnx

One run: PyTorch eager (the trained module), ONNX Runtime fp32, ONNX Runtime int8 (the same
quantisation as `export --quantize int8`) and ONNX Runtime fp16 (GPU only: on CPU fp16 runs
slower than fp32, so it is listed as skipped). The models are exported into a scratch folder;
the run directory is not touched. For every backend: latency p50/p99 per batch size,
throughput, size, the validation metric, and speed-ups against PyTorch and fp32. "Size" is
what a deployment ships: the ONNX file, and for PyTorch the network's weights alone
(safetensors of its state_dict, normaliser buffers included), not the training checkpoint
with its optimiser state. Every report names the model it measured (name, args and exact
parameter count, so two widths of one architecture are told apart).

Two targets (run directories or ONNX files, A then B): both are measured in the same process,
their backends taking turns, and each pair gets the ratio of B's p50 latency to A's per batch
size (< 1: B is faster). Two runs pair backends of the same name (pytorch with pytorch, fp32
with fp32, int8 with int8); otherwise the pair is each side's ONNX model (a run's fp32 export,
or the file). An ONNX file is fed the other side's validation rows when its input shape
matches (and is scored on them), else zeros of its input shape (timed, not scored).

Fairness: PyTorch runs the same module as the ONNX graph (normalisation and softmax included)
in eval mode under `torch.inference_mode`; both runtimes get the same number of threads
(PyTorch's, by default one per core), onnxruntime with its default thread spinning (what an
`InferenceSession` gives users; `bigmodel serve` turns spinning off). The backends are timed
in turn, ROUNDS times over, so a burst of load from other jobs falls on all of them alike.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
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
MAIN = "onnxruntime-fp32"  # a run's backend compared with an ONNX file
WIDTH = 100  # the tables fit log files' 100 columns
SCORED_ROWS = 10_000  # validation rows each backend is scored on (the first ones)


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
    """One way of running a model: a name, a callable on a numpy batch, a size in bytes, and (optionally)
    its own input rows and a key unique among the backends timed together."""

    def __init__(self, name: str, call, size_bytes: int, rows: np.ndarray | None = None, key: str | None = None):
        self.name, self.call, self.size_bytes, self.rows, self.key = name, call, size_bytes, rows, key or name


@dataclass
class Subject:
    """One benchmarked target (a run directory or an ONNX file) and its backends."""

    label: str
    kind: str  # "run" | "onnx"
    task: str | None
    model: dict[str, Any] | None  # export.metadata.model_info; None for an ONNX file without our metadata
    input_shape: list[int]
    rows: np.ndarray
    labels: np.ndarray | None  # None: rows are zeros, not scored
    backends: list[Backend] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def description(self) -> str:
        from bigmodel_cli.export.metadata import describe_model

        return describe_model(self.model) if self.model else "a model without bigmodel metadata"


def _threads() -> int:
    return torch.get_num_threads()


def _torch_backend(module, device: str, size_bytes: int) -> Backend:
    module = module.to(device)

    def call(batch: np.ndarray):
        with torch.inference_mode():
            out = module(torch.from_numpy(batch).to(device))
            first = out[0] if isinstance(out, tuple) else out
            return first.float().cpu().numpy()

    return Backend("pytorch", call, size_bytes)


def _ort_backend(name: str, path: Path, device: str, session=None) -> Backend:
    from bigmodel_cli.inference.session import create_session

    session = session or create_session(path, device, _threads(), spinning=True)
    first, feed = session.get_outputs()[0].name, session.get_inputs()[0].name
    return Backend(name, lambda batch: session.run([first], {feed: batch})[0], path.stat().st_size)


def weights_size(module: torch.nn.Module, work: Path) -> int:
    """Bytes of the module's weights alone (its state_dict as safetensors): what a PyTorch deployment ships."""
    from safetensors.torch import save_model

    path = work / "pytorch-weights.safetensors"
    save_model(module, str(path))
    return path.stat().st_size


def _metric(backend: Backend, rows: np.ndarray, labels: np.ndarray, task: str) -> tuple[str, float]:
    from bigmodel_cli.export.verify import main_metric

    if task == "language-modeling":  # next-token logits of the rows themselves: perplexity, as `bigmodel eval`
        from bigmodel_cli.evaluation.language_model import next_token_nll

        ids = np.asarray(rows, dtype=np.int64)
        parts = [next_token_nll(backend.call(ids[i : i + 32]), ids[i : i + 32]) for i in range(0, len(ids), 32)]
        return "perplexity", float(np.exp(sum(p[0] for p in parts) / max(1, sum(p[1] for p in parts))))
    outputs = [np.asarray(backend.call(rows[i : i + 256]), np.float32) for i in range(0, len(rows), 256)]
    return main_metric(task, np.concatenate(outputs), labels)


def _run_subject(run_dir: str | Path, work: Path, device: str, checkpoint: str, only_main: bool = False) -> Subject:
    """A run's backends: PyTorch, fp32 (and int8, fp16 where they apply), exported into `work`."""
    from bigmodel_cli.data import manifest as manifests
    from bigmodel_cli.export import metadata, onnx_graph
    from bigmodel_cli.export import quantize as q
    from bigmodel_cli.export.module import exportable, sample_input
    from bigmodel_cli.export.onnx_export import calibration
    from bigmodel_cli.export.verify import validation_rows
    from bigmodel_cli.run import load_run

    run = load_run(run_dir)
    module, _ = exportable(run, checkpoint)
    rows, labels = validation_rows(run, SCORED_ROWS)  # a bounded copy, whatever the split's size
    if len(rows) == 0:
        raise UsageError(f"{run_dir}: no validation or train rows to benchmark on; train the run again")
    subject = Subject(str(run_dir), "run", run.recipe.task, metadata.model_info(run.recipe, module.net),
                      manifests.input_shape(run.manifest), rows, labels)
    fp32 = work / "fp32.onnx"
    exporter = onnx_graph.to_onnx(module, sample_input(run, rows[:2]), fp32, run.recipe.export.opset, run.recipe.task)
    metadata.write(fp32, metadata.for_run(run, exporter=exporter, model=subject.model))
    if only_main:
        subject.backends = [_ort_backend(MAIN, fp32, device)]
        return subject
    if run.recipe.model.name == "hf":  # PyTorch as its users run it: torch's own attention kernel (SDPA)
        from bigmodel_cli.export.hf import use_attention

        use_attention(module, "sdpa")
    subject.backends = [_torch_backend(module, device, weights_size(module, work)), _ort_backend(MAIN, fp32, device)]
    if device == "cuda":
        q.to_fp16(fp32, work / "fp16.onnx")
        subject.backends.append(_ort_backend("onnxruntime-fp16", work / "fp16.onnx", device))
    else:
        subject.notes.append("onnxruntime-fp16: skipped on CPU (fp16 is a GPU speed-up; use --device cuda)")
    if run.recipe.task == "language-modeling":  # as `bigmodel export`: fp32 or fp16 only
        subject.notes.append("onnxruntime-int8: skipped (a language model exports as fp32 or fp16)")
        return subject
    try:
        calibration_rows = calibration(run, "int8")
    except UsageError as e:
        subject.notes.append(f"onnxruntime-int8: skipped ({e})")
        return subject
    q.to_int8(fp32, work / "int8.onnx", calibration_rows, q.int8_method(run.recipe.model.name, run.manifest["kind"]))
    subject.backends.append(_ort_backend("onnxruntime-int8", work / "int8.onnx", "cpu"))
    return subject


def _onnx_subject(path: Path, device: str, other: Subject | None) -> Subject:
    """An ONNX file: one backend, fed `other`'s rows when its input shape matches, else zeros."""
    from bigmodel_cli.export import metadata
    from bigmodel_cli.inference.onnx_model import ONNX_TYPES
    from bigmodel_cli.inference.session import create_session

    session = create_session(path, device, _threads(), spinning=True)
    meta = metadata.from_session(session, str(path))
    name = f"onnxruntime-{'fp32' if meta.quantize in (None, 'none') else meta.quantize}"
    shape = meta.input_shape or _static_shape(path, session)
    subject = Subject(str(path), "onnx", meta.task, meta.model, list(shape), np.zeros(0), None,
                      [_ort_backend(name, path, device, session)])
    if other is not None and list(other.input_shape) == list(shape) and other.task == meta.task:
        subject.rows, subject.labels = other.rows, other.labels
        return subject
    subject.rows = np.zeros((64, *shape), ONNX_TYPES.get(session.get_inputs()[0].type, np.float32))
    if meta.input_kind == "text":
        subject.rows[:, 0] = 1  # one real token per text: the padding id alone is not a text
    subject.notes.append(f"{path.name}: timed on zeros of its input shape {list(shape)}, not scored (no run with "
                         f"that input shape to take labelled rows from)")
    return subject


def _static_shape(path: Path, session) -> list[int]:
    dims = session.get_inputs()[0].shape[1:]
    if not all(isinstance(d, int) and d > 0 for d in dims):
        raise UsageError(f"{path}: its input shape {dims} has dynamic sizes and no bigmodel metadata says "
                         f"which to use; benchmark a model written by bigmodel export")
    return list(dims)


def _measure(backends: list[Backend], rows: np.ndarray | None, batch_sizes: list[int],
             iterations: int) -> dict[str, dict[str, Any]]:
    """Latency per backend (by key) and batch size; the backends take turns (ROUNDS blocks each) on batches of
    their own rows (or `rows`)."""
    result: dict[str, dict[str, Any]] = {b.key: {} for b in backends}
    for size in batch_sizes:
        batches = {}
        for b in backends:
            source = b.rows if b.rows is not None else rows
            batches[b.key] = np.ascontiguousarray(np.resize(source, (size, *source.shape[1:])))
        times: dict[str, list[float]] = {b.key: [] for b in backends}
        for turn in range(ROUNDS):
            for backend in backends:
                time.sleep(SETTLE_S)
                times[backend.key] += time_calls(backend.call, batches[backend.key], -(-iterations // ROUNDS),
                                                 warmup=3 if turn == 0 else 1, least=2,
                                                 min_s=MIN_SECONDS / ROUNDS, max_s=MAX_SECONDS / ROUNDS)
        for key, got in times.items():
            p50 = float(np.percentile(got, 50))
            result[key][str(size)] = {"p50_ms": p50, "p99_ms": float(np.percentile(got, 99)), "calls": len(got),
                                      "throughput_per_s": size / (p50 / 1000)}
    return result


def _speedups(results: dict[str, Any], batch_sizes: list[int], notes: list[str]) -> dict[str, Any]:
    """p50 ratios: every backend against PyTorch eager, and int8 against fp32 (a note where int8 is slower)."""
    ratios: dict[str, Any] = {}
    if "pytorch" in results:
        for name, res in results.items():
            ratios[f"{name}_vs_pytorch"] = {str(b): results["pytorch"]["latency"][str(b)]["p50_ms"] /
                                            res["latency"][str(b)]["p50_ms"] for b in batch_sizes}
    if "onnxruntime-int8" in results and MAIN in results:
        int8 = {str(b): results[MAIN]["latency"][str(b)]["p50_ms"] /
                results["onnxruntime-int8"]["latency"][str(b)]["p50_ms"] for b in batch_sizes}
        ratios["onnxruntime-int8_vs_fp32"] = int8
        slower = [b for b, r in int8.items() if r < 1.0]
        if slower:
            notes.append(f"int8 is not faster than fp32 for this model at batch {', '.join(slower)}")
    return ratios


def _scored(subject: Subject) -> dict[str, Any]:
    """{backend name: {"size_bytes", "metric"}} with each backend's validation metric (if the rows are labelled)."""
    results: dict[str, Any] = {}
    for backend in subject.backends:
        metric: dict[str, float] = {}
        if subject.labels is not None and subject.task is not None:
            console.info(f"validation metric: {subject.label} {backend.name}")
            name, value = _metric(backend, subject.rows, subject.labels, subject.task)
            metric[name] = value
        results[backend.name] = {"size_bytes": backend.size_bytes, "metric": metric}
    return results


def _subject_report(subject: Subject, results: dict[str, Any], batch_sizes: list[int]) -> dict[str, Any]:
    notes = list(subject.notes)
    report = {"run" if subject.kind == "run" else "onnx": subject.label, "kind": subject.kind,
              "model": subject.model, "model_description": subject.description(),
              "input_shape": subject.input_shape, "rows": int(len(subject.rows)),
              "scored": subject.labels is not None, "backends": results}
    report["speedups"] = _speedups(results, batch_sizes, notes)
    report["notes"] = notes
    return report


def _session_notes(device: str) -> dict[str, Any]:
    threads = _threads()
    return {"device": device, "threads": threads, "ort_session": {"intra_op_threads": threads, "allow_spinning": True}}


def _check_device(device: str) -> None:
    if device not in ("cpu", "cuda"):
        raise UsageError(f"--device {device}: expected cpu or cuda")


def benchmark_run(run_dir: str | Path, batch_sizes: list[int] | None = None, device: str = "cpu",
                  checkpoint: str = "best", iterations: int = 20,
                  fail_under: dict[str, float] | None = None) -> dict[str, Any]:
    """Measure every backend of one run on its validation rows; the report's gates hold the --fail-under checks."""
    batch_sizes = batch_sizes or [1, 8, 64]
    _check_device(device)
    with tempfile.TemporaryDirectory(prefix="bigmodel-bench-") as work:
        subject = _run_subject(run_dir, Path(work), device, checkpoint)
        return _single(subject, batch_sizes, device, iterations, fail_under)


def _single(subject: Subject, batch_sizes: list[int], device: str, iterations: int,
            fail_under: dict[str, float] | None) -> dict[str, Any]:
    results = _scored(subject)
    console.info(f"timing {len(subject.backends)} backends in turn ({ROUNDS} rounds per batch size)")
    for key, latency in _measure(subject.backends, subject.rows, batch_sizes, iterations).items():
        results[key]["latency"] = latency
    report = {**_subject_report(subject, results, batch_sizes), **_session_notes(device), "batch_sizes": batch_sizes}
    report["notes"].append(f"threads: {report['threads']} for PyTorch and for each onnxruntime session "
                           f"(intra-op, spinning on)")
    report["gates"] = _gates({name: res for name, res in results.items()}, fail_under or {})
    return report


def benchmark(targets: list[Path], batch_sizes: list[int] | None = None, device: str = "cpu",
              checkpoint: str = "best", iterations: int = 20,
              fail_under: dict[str, float] | None = None) -> dict[str, Any]:
    """`bigmodel benchmark A [B]`: one target measured alone, or two side by side with B/A latency ratios."""
    batch_sizes = batch_sizes or [1, 8, 64]
    _check_device(device)
    if not 1 <= len(targets) <= 2:
        raise UsageError(f"benchmark takes one or two RUN_DIR|MODEL.onnx, got {len(targets)}")
    for target in targets:
        if not Path(target).exists():
            raise UsageError(f"{target}: no such run directory or ONNX file")
    with tempfile.TemporaryDirectory(prefix="bigmodel-bench-") as work:
        subjects = _subjects([Path(t) for t in targets], Path(work), device, checkpoint)
        if len(subjects) == 1:
            return _single(subjects[0], batch_sizes, device, iterations, fail_under)
        return _compare(subjects[0], subjects[1], batch_sizes, device, iterations, fail_under)


def _is_onnx(path: Path) -> bool:
    return path.suffix.lower() == ".onnx"


def _subjects(targets: list[Path], work: Path, device: str, checkpoint: str) -> list[Subject]:
    """Runs first (an ONNX file takes its rows from a run), each exported into its own scratch folder."""
    pair = len(targets) == 2
    both_runs = pair and not any(_is_onnx(t) for t in targets)
    subjects: dict[int, Subject] = {}
    for i, target in enumerate(targets):
        if not _is_onnx(target):
            folder = work / f"target{i}"
            folder.mkdir()
            subjects[i] = _run_subject(target, folder, device, checkpoint, only_main=pair and not both_runs)
    for i, target in enumerate(targets):
        if _is_onnx(target):
            other = next(iter(subjects.values()), None)
            subjects[i] = _onnx_subject(target, device, other)
    return [subjects[i] for i in range(len(targets))]


def _pairs(a: Subject, b: Subject) -> list[tuple[Backend, Backend]]:
    if a.kind == b.kind == "run":
        names = {x.name: x for x in b.backends}
        return [(x, names[x.name]) for x in a.backends if x.name in names]
    main = [next(x for x in s.backends if s.kind == "onnx" or x.name == MAIN) for s in (a, b)]
    return [(main[0], main[1])]


def _compare(a: Subject, b: Subject, batch_sizes: list[int], device: str, iterations: int,
             fail_under: dict[str, float] | None) -> dict[str, Any]:
    sides = {"a": a, "b": b}
    results = {side: _scored(s) for side, s in sides.items()}
    backends = []
    for side, subject in sides.items():
        for backend in subject.backends:
            backend.key, backend.rows = f"{side}/{backend.name}", subject.rows
            backends.append(backend)
    console.info(f"timing {len(backends)} backends of A and B in turn ({ROUNDS} rounds per batch size)")
    for key, latency in _measure(backends, None, batch_sizes, iterations).items():
        side, name = key.split("/", 1)
        results[side][name]["latency"] = latency
    report: dict[str, Any] = {side: _subject_report(s, results[side], batch_sizes) for side, s in sides.items()}
    report.update(_session_notes(device), batch_sizes=batch_sizes)
    report["comparison"] = [_ratio(x, y, results, batch_sizes) for x, y in _pairs(a, b)]
    report["notes"] = [f"ratios are B/A: below 1 B is faster (or smaller); both timed in turn in this process, "
                       f"{report['threads']} threads each"]
    report["gates"] = _gates({f"{side.upper()} {name}": res for side in sides for name, res in results[side].items()},
                             fail_under or {})
    return report


def _ratio(x: Backend, y: Backend, results: dict[str, Any], batch_sizes: list[int]) -> dict[str, Any]:
    ra, rb = results["a"][x.name], results["b"][y.name]
    return {"a": x.name, "b": y.name,
            "latency_ratio_b_over_a": {str(s): rb["latency"][str(s)]["p50_ms"] / ra["latency"][str(s)]["p50_ms"]
                                       for s in batch_sizes},
            "size_ratio_b_over_a": rb["size_bytes"] / ra["size_bytes"] if ra["size_bytes"] else None,
            "metric_a": ra["metric"], "metric_b": rb["metric"]}


def _gates(results: dict[str, Any], fail_under: dict[str, float]) -> list[dict[str, Any]]:
    gates = []
    for metric, threshold in fail_under.items():
        for name, res in results.items():
            if metric not in res["metric"]:
                known = ", ".join(res["metric"]) or "none: its rows are not labelled"
                raise UsageError(f"--fail-under {metric}: not measured for {name} (metrics: {known})")
            value = res["metric"][metric]
            gates.append({"backend": name, "metric": metric, "value": value, "threshold": threshold,
                          "passed": value >= threshold})
    return gates


def check_gates(report: dict[str, Any]) -> None:
    failed = [g for g in report["gates"] if not g["passed"]]
    if failed:
        worst = ", ".join(f"{g['backend']} {g['metric']} {g['value']:.4f} < {g['threshold']}" for g in failed)
        raise GateFailed(f"benchmark gate failed: {worst}")


def _metric_text(metric: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metric.items()) or "not scored"


def _header(report: dict[str, Any]) -> str:
    target = report.get("run") or report.get("onnx")
    shape = "x".join(str(d) for d in report["input_shape"])
    return f"{target}: {report['model_description']}, input {shape}"


def table(report: dict[str, Any]) -> str:
    """A report as plain text for people (stderr), at most 100 columns wide; two targets side by side."""
    if "comparison" in report:
        return _comparison_table(report)
    lines = [_header(report),
             f"{'backend':<18} {'batch':>5} {'p50 ms':>9} {'p99 ms':>9} {'rows/s':>10} {'vs torch':>8} "
             f"{'size MiB':>8}  metric"]
    for name, res in report["backends"].items():
        for size, lat in res["latency"].items():
            ratio = report["speedups"].get(f"{name}_vs_pytorch", {}).get(size)
            shown = f"{ratio:>7.2f}x" if ratio is not None else f"{'-':>8}"
            lines.append(f"{name:<18} {size:>5} {lat['p50_ms']:>9.3f} {lat['p99_ms']:>9.3f} "
                         f"{lat['throughput_per_s']:>10.0f} {shown} {res['size_bytes'] / 2**20:>8.2f}  "
                         f"{_metric_text(res['metric'])}")
    int8 = report["speedups"].get("onnxruntime-int8_vs_fp32")
    if int8:
        lines.append("int8 vs fp32: " + ", ".join(f"batch {b} {r:.2f}x" for b, r in int8.items()))
    lines += [f"note: {n}" for n in report["notes"]]
    return _fit(lines)


def _comparison_table(report: dict[str, Any]) -> str:
    a, b = report["a"], report["b"]
    lines = [f"A  {_header(a)}", f"B  {_header(b)}",
             f"{'backend (A | B)':<36} {'batch':>5} {'A p50 ms':>9} {'B p50 ms':>9} {'B/A':>7} "
             f"{'A rows/s':>9} {'B rows/s':>9}"]
    for pair in report["comparison"]:
        la, lb = a["backends"][pair["a"]]["latency"], b["backends"][pair["b"]]["latency"]
        name = pair["a"] if pair["a"] == pair["b"] else f"{pair['a']} | {pair['b']}"
        for size, ratio in pair["latency_ratio_b_over_a"].items():
            lines.append(f"{name[:36]:<36} {size:>5} {la[size]['p50_ms']:>9.3f} {lb[size]['p50_ms']:>9.3f} "
                         f"{ratio:>6.2f}x {la[size]['throughput_per_s']:>9.0f} {lb[size]['throughput_per_s']:>9.0f}")
        size_a = a["backends"][pair["a"]]["size_bytes"] / 2**20
        size_b = b["backends"][pair["b"]]["size_bytes"] / 2**20
        size_ratio = pair["size_ratio_b_over_a"]
        lines.append(f"  size MiB A {size_a:.2f}, B {size_b:.2f}" + (f" ({size_ratio:.2f}x)" if size_ratio else "")
                     + f"; A {_metric_text(pair['metric_a'])}; B {_metric_text(pair['metric_b'])}")
    lines += [f"note: {n}" for n in dict.fromkeys(report["notes"] + a["notes"] + b["notes"])]
    return _fit(lines)


def _fit(lines: list[str]) -> str:
    """Lines longer than WIDTH (headers naming long paths, notes) wrapped onto indented continuation lines."""
    import textwrap

    out: list[str] = []
    for line in lines:
        out += textwrap.wrap(line, WIDTH, subsequent_indent="    ", break_on_hyphens=False) if len(line) > WIDTH \
            else [line]
    return "\n".join(out)
