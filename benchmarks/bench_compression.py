"""Compression figures (issue 16), each measured side by side in one process with `bigmodel benchmark`'s engine.

    .venv/bin/python benchmarks/bench_compression.py                      # both parts, scratch folder
    .venv/bin/python benchmarks/bench_compression.py --part prune --epochs 6 --finetune-epochs 3 --work /tmp/bc
    .venv/bin/python benchmarks/bench_compression.py --part distill --seeds 3 --teacher-epochs 5 --student-epochs 10

Part `prune`: ResNet-18 as cifar10-resnet18 builds it for 32x32 colour images (3x3 stride-1 stem, no
max-pool), trained on scikit-learn's digits resized to 3x32x32 (no CIFAR-10 here; the same network, the
same input size, real labels), then `bigmodel prune --ratio 0.5` with fine-tuning. Side by side:
- `benchmark A B` (runs): onnxruntime fp32 latency of the pruned run over the unpruned one, batch 1 and 32
  (goals: <= 0.7x at batch 1, <= 0.5x at batch 32), test accuracy drop after fine-tuning (goal <= 1 point);
- `benchmark A.onnx masked.onnx`: the negative control, 50 % of every convolution's and linear layer's
  weights zeroed (torch.nn.utils.prune.l1_unstructured, masks made permanent): the same dense tensors, so
  0.95-1.05x;
- `benchmark A.onnx B.int8.onnx`: pruned + int8 (`export --quantize int8`) against unpruned fp32 at batch
  32 (goal >= 3x faster, <= 1.5 points accuracy drop).
Part `distill`: digits-cnn's CNN as the teacher; a student `cnn_small` of width 2 trained alone and
distilled (same data, epochs and seeds; `--seeds` of them), mean test accuracy of each, and the gap to the
teacher (goal: distilled >= alone + 1 point).

Accuracies are on the prepared test split. Timings on a shared machine are noisy: the backends of the two
sides take turns, so load falls on both, and the ratios are what to read; the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load() -> str:
    return "load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def test_accuracy_onnx(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    from bigmodel_cli.inference.session import create_session

    session = create_session(path, "cpu")
    logits = np.concatenate([session.run(["logits"], {"input": np.asarray(x[i:i + 256], np.float32)})[0]
                             for i in range(0, len(x), 256)])
    return float((logits.argmax(1) == y).mean())


def test_accuracy_run(run_dir: Path) -> float:
    import torch

    from bigmodel_cli.run import load_network, load_run, prepared_split

    run = load_run(run_dir)
    net, norm, _ = load_network(run)
    x, y = prepared_split(run, "test")
    with torch.inference_mode():
        logits = net(norm(torch.from_numpy(np.array(x)))).numpy()
    return float((logits.argmax(1) == y).mean())


def masked_onnx(run_dir: Path, dest: Path, amount: float) -> None:
    """The unpruned run with `amount` of each conv/linear weight zeroed (unstructured masks), as ONNX."""
    import torch
    from torch.nn.utils import prune

    from bigmodel_cli.export.module import exportable, sample_input
    from bigmodel_cli.export.onnx_graph import to_onnx
    from bigmodel_cli.export.verify import validation_rows
    from bigmodel_cli.run import load_run

    run = load_run(run_dir)
    module, _ = exportable(run, "best")
    for layer in module.net.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            prune.l1_unstructured(layer, "weight", amount)
            prune.remove(layer, "weight")
    rows, _ = validation_rows(run)
    to_onnx(module, sample_input(run, rows[:2]), dest, run.recipe.export.opset, run.recipe.task)


def side_by_side(a: Path, b: Path, batch_sizes: list[int], iterations: int) -> dict:
    from bigmodel_cli.export.benchmark import benchmark, table

    report = benchmark([a, b], batch_sizes=batch_sizes, iterations=iterations)
    log(table(report))
    return report


def ratio(report: dict, backend: str = "onnxruntime-fp32") -> dict[str, float]:
    pairs = report["comparison"]  # two runs: a pair per backend; two ONNX files: one pair
    return next((c for c in pairs if c["a"] == backend), pairs[0])["latency_ratio_b_over_a"]


def prune_part(work: Path, epochs: int, finetune_epochs: int, iterations: int, train_rows: int | None) -> dict:
    from bigmodel_cli.compression.prune import prune_run
    from bigmodel_cli.config.recipe import resolve
    from bigmodel_cli.data.prepare import prepare
    from bigmodel_cli.export.onnx_export import export_run
    from bigmodel_cli.run import load_run, prepared_split
    from bigmodel_cli.training.loop import fit, load_data

    recipe = resolve("cifar10-resnet18", {"data.source": "sklearn:digits", "data.prepared": str(work / "data")},
                     ["data.split.val=0.15", "data.split.test=0.15", "data.augment.horizontal_flip=0",
                      "train.precision=32", f"train.epochs={epochs}", "train.batch_size=32",
                      "train.optimizer={name: adamw, lr: 0.002, weight_decay: 0.0005}", "train.label_smoothing=0",
                      "train.early_stopping.patience=null", "export.max_metric_drop=100"])
    a, b = work / "resnet18", work / "resnet18-pruned"
    if not (work / "data").is_dir():
        prepare(recipe)
    started = time.perf_counter()
    if not (a / "checkpoints/best.pt").is_file():
        fit(recipe, a, data=load_data(recipe).subset(train_rows=train_rows))
    log(f"trained {a} in {time.perf_counter() - started:.0f} s ({load()})")
    if not (b / "prune.json").is_file():
        prune_run(a, 0.5, finetune_epochs=finetune_epochs, out=b)
    pruning = json.loads((b / "prune.json").read_text())
    for run, quantize in ((a, "none"), (b, "none"), (b, "int8")):
        export_run(run, quantize=quantize)
    masked_onnx(a, work / "masked.onnx", 0.5)
    x, y = prepared_split(load_run(a), "test")
    accuracy = {"unpruned fp32": test_accuracy_onnx(a / "model.onnx", x, y),
                "masked 50% fp32": test_accuracy_onnx(work / "masked.onnx", x, y),
                "pruned fp32": test_accuracy_onnx(b / "model.onnx", x, y),
                "pruned int8": test_accuracy_onnx(b / "model.int8.onnx", x, y)}
    log(f"timing side by side ({load()})")
    runs = side_by_side(a, b, [1, 32], iterations)
    masks = side_by_side(a / "model.onnx", work / "masked.onnx", [1, 32], iterations)
    stack = side_by_side(a / "model.onnx", b / "model.int8.onnx", [1, 32], iterations)
    base = accuracy["unpruned fp32"]
    return {
        "model": "resnet18 (cifar10-resnet18's network, 3x32x32), scikit-learn digits resized",
        "train_epochs": epochs, "train_rows": train_rows or "all", "finetune_epochs": finetune_epochs,
        "test_rows": int(len(y)),
        "prune_report": {k: pruning[k] for k in ("ratios", "before", "after", "accuracy", "time_s")},
        "test_accuracy": accuracy,
        "pruned_fp32_over_unpruned_fp32": ratio(runs),
        "masked_fp32_over_unpruned_fp32": ratio(masks),
        "pruned_int8_over_unpruned_fp32": ratio(stack),
        "drop_points": {"pruned fp32": 100 * (base - accuracy["pruned fp32"]),
                        "pruned int8": 100 * (base - accuracy["pruned int8"]),
                        "masked 50% fp32": 100 * (base - accuracy["masked 50% fp32"])},
        "goals": {"pruned fp32 batch 32 <= 0.5x": ratio(runs)["32"] <= 0.5,
                  "pruned fp32 batch 1 <= 0.7x": ratio(runs)["1"] <= 0.7,
                  "pruned drop <= 1 point": 100 * (base - accuracy["pruned fp32"]) <= 1.0,
                  "masked 0.95-1.05x (batch 32)": 0.95 <= ratio(masks)["32"] <= 1.05,
                  "pruned+int8 batch 32 >= 3x (ratio <= 0.333)": ratio(stack)["32"] <= 1 / 3,
                  "pruned+int8 drop <= 1.5 points": 100 * (base - accuracy["pruned int8"]) <= 1.5},
    }


def distill_part(work: Path, seeds: int, epochs: int, teacher_epochs: int, width: int, weight: float,
                 temperature: float) -> dict:
    from bigmodel_cli.config.recipe import resolve
    from bigmodel_cli.data.prepare import prepare
    from bigmodel_cli.training.loop import fit

    data = {"data.prepared": str(work / "digits")}
    teacher = resolve("digits-cnn", data, ["train.early_stopping.patience=null", f"train.epochs={teacher_epochs}"])
    if not (work / "digits").is_dir():
        prepare(teacher)
    if not (work / "teacher/checkpoints/best.pt").is_file():
        fit(teacher, work / "teacher")
    student = [f"train.epochs={epochs}", f"model.args.width={width}", "model.args.dropout=0",
               "train.early_stopping.patience=null"]
    results: dict[str, list[float]] = {"alone": [], "distilled": []}
    for seed in range(seeds):
        for kind in results:
            tag = f"-w{weight:g}-T{temperature:g}" if kind == "distilled" and (weight, temperature) != (0.5, 4) else ""
            run = work / f"student-w{width}-{kind}{tag}-{seed}"
            flags = {**data, "train.distill.teacher": str(work / "teacher") if kind == "distilled" else None}
            if not (run / "checkpoints/best.pt").is_file():
                fit(resolve("digits-cnn", flags, [*student, f"seed={seed}", "train.distill.cache_logits=true",
                                                  f"train.distill.weight={weight}",
                                                  f"train.distill.temperature={temperature}"]), run)
            results[kind].append(test_accuracy_run(run))
    alone, distilled = float(np.mean(results["alone"])), float(np.mean(results["distilled"]))
    top = test_accuracy_run(work / "teacher")
    return {"teacher": "digits-cnn (cnn_small width 32)", "student": f"cnn_small width {width}", "epochs": epochs,
            "weight": weight, "temperature": temperature,
            "seeds": seeds, "test_accuracy": {**results, "teacher": top},
            "mean_alone": alone, "mean_distilled": distilled, "gain_points": 100 * (distilled - alone),
            "gap_to_teacher_points": 100 * (top - distilled),
            "goals": {"distilled >= alone + 1 point": 100 * (distilled - alone) >= 1.0}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["prune", "distill", "all"], default="all")
    parser.add_argument("--work", type=Path, default=None, help="keep runs here (reused when present)")
    parser.add_argument("--epochs", type=int, default=6, help="resnet18 training epochs")
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--train-rows", type=int, default=None, help="train resnet18 on the first N rows only")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--student-epochs", type=int, default=15)
    parser.add_argument("--teacher-epochs", type=int, default=15, help="digits-cnn's own: 15")
    parser.add_argument("--student-width", type=int, default=2, help="cnn_small width of the student")
    parser.add_argument("--weight", type=float, default=0.5, help="train.distill.weight")
    parser.add_argument("--temperature", type=float, default=4.0, help="train.distill.temperature")
    args = parser.parse_args()
    os.environ.setdefault("CI", "1")
    with tempfile.TemporaryDirectory(prefix="bench-compression-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        out: dict = {"load_start": load()}
        if args.part in ("distill", "all"):
            out["distill"] = distill_part(work / "distill", args.seeds, args.student_epochs, args.teacher_epochs,
                                          args.student_width, args.weight, args.temperature)
            log(json.dumps(out["distill"], indent=1))
        if args.part in ("prune", "all"):
            out["prune"] = prune_part(work / "prune", args.epochs, args.finetune_epochs, args.iterations,
                                      args.train_rows)
        out["load_end"] = load()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
