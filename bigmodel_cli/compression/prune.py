"""`bigmodel prune`: a trained run made smaller and faster, as a new run directory, with what it cost measured.

    bigmodel prune runs/cifar10-resnet18 --ratio 0.5 --finetune-epochs 10         # -> runs/cifar10-resnet18-pruned
    bigmodel prune runs/digits-cnn --ratio 0.5 --steps 3 --finetune-epochs 2 --teacher runs/digits-cnn --json
    bigmodel benchmark runs/cifar10-resnet18 runs/cifar10-resnet18-pruned          # what it bought, side by side

The run's best network loses `ratio` of the channels of every prunable group (`structured`), in `steps`
equal steps, each followed by `finetune-epochs` of training by the ordinary training loop (optionally
distilled from a teacher such as the unpruned run itself). The new run directory is a run like any other:
its `recipe.yaml` records the pruned architecture (`model.pruned`, see `architecture`), so eval, export,
benchmark, serve and `train --resume` rebuild it; `pruned.pt` holds the weights right after the last
pruning step (the fine-tuning's `model.weights`). `prune.json` reports parameters, MACs per row, the ONNX
file's size and the main metric before pruning, right after it and after fine-tuning, on the test split of
the run's prepared data (its validation reference rows when the prepared data is not the run's any more),
and checks that onnxruntime agrees with PyTorch on the pruned network.

A failed or interrupted prune removes the new run directory: nothing half-written is left behind.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bigmodel_cli import atomic, console
from bigmodel_cli.errors import Interrupted, UsageError

EVAL_BATCH = 256
TAYLOR_BATCHES = 8  # training batches whose gradients rank channels for --method taylor


def check_request(ratio: float, method: str, steps: int, finetune_epochs: int, round_to: int | None) -> None:
    from bigmodel_cli.compression.structured import METHODS

    if not 0.0 < ratio < 1.0:
        raise UsageError(f"--ratio {ratio}: expected a fraction of channels to remove, strictly between 0 and 1")
    if method not in METHODS:
        raise UsageError(f"--method {method}: expected one of {', '.join(METHODS)}")
    if steps < 1:
        raise UsageError(f"--steps {steps}: expected 1 or more")
    if finetune_epochs < 0:
        raise UsageError(f"--finetune-epochs {finetune_epochs}: expected 0 or more")
    if round_to is not None and round_to < 1:
        raise UsageError(f"--round-to {round_to}: expected 1 or more channels")


def prune_run(run_dir: str | Path, ratio: float, method: str = "l2", steps: int = 1, finetune_epochs: int = 0,
              teacher: str | None = None, round_to: int | None = None, out: str | Path | None = None,
              sets: list[str] | None = None, max_eval_rows: int | None = None) -> dict[str, Any]:
    """Prune, fine-tune and measure; returns the report (also RUN_DIR2/prune.json)."""
    from bigmodel_cli.compression import structured
    from bigmodel_cli.run import load_network, load_run

    check_request(ratio, method, steps, finetune_epochs, round_to)
    if teacher and not finetune_epochs:
        raise UsageError("--teacher distils the fine-tuning after pruning; give --finetune-epochs N (N >= 1) too")
    run = load_run(run_dir)
    if run.recipe.task not in ("classification", "regression"):
        raise UsageError(f"{run_dir}: bigmodel prune takes classification and regression runs, not {run.recipe.task}")
    if run.recipe.model.name == "hf":
        raise UsageError(f"{run_dir}: a pre-trained Hugging Face model; bigmodel prune takes the registered model "
                         "families (shrink a transformer with LoRA, or distil it into a smaller student with "
                         "--teacher)")
    out = Path(out) if out else run.path.with_name(f"{run.path.name}-pruned")
    if out.exists():
        raise UsageError(f"--out {out}: already exists; choose another --out or remove it")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: folder {out.parent} does not exist")
    what = run.recipe.model.name or run.recipe.model.component
    net, norm, ckpt = load_network(run, "best")
    structured.refuse_unprunable(net, what)
    structured.check_method(net, method, what)
    tuning = _recipe(run, {}, finetune_epochs, teacher, sets, None)  # bad --set keys: exit 2 before any work
    if teacher and finetune_epochs:
        from bigmodel_cli.training import distill

        distill.check(tuning, run.manifest)  # a teacher that does not fit: exit 2 before any work
    needs_train = finetune_epochs > 0 or method == "taylor"
    data = _train_data(run) if needs_train else None
    x_eval, y_eval, split = _eval_rows(run, max_eval_rows)
    example = _example(run, norm, x_eval)
    started = time.perf_counter()
    console.info(f"pruning {what} of {run.path} ({ckpt.name}): {ratio:.0%} of the channels by {method} in {steps} "
                 f"step(s), {finetune_epochs} fine-tuning epoch(s) after each -> {out}")
    with tempfile.TemporaryDirectory(prefix="bigmodel-prune-") as work:
        before = _measure(run, net, norm, example, x_eval, y_eval, Path(work) / "before.onnx", verify=False)
        console.info(f"before: {_describe(before)}")
        original = _builder_network(run)
        pruner = structured.StructuredPruner(net, example, what, ratio, method, steps, round_to)
        out.mkdir()
        try:
            history = _steps(run, net, norm, pruner, original, data, (x_eval, y_eval), out, finetune_epochs,
                             teacher, sets)
            after = _measure(run, net, norm, example, x_eval, y_eval, Path(work) / "after.onnx", verify=True)
            request = {"model": what, "method": method, "ratio": ratio, "steps": steps, "round_to": round_to,
                       "finetune_epochs": finetune_epochs, "teacher": teacher, "split": split, "rows": len(y_eval)}
            report = _report(run, out, ckpt, request, before, after, history, started)
            atomic.write_json(out / "prune.json", report)
        except Interrupted as e:
            shutil.rmtree(out, ignore_errors=True)
            raise Interrupted(f"interrupted: {out} removed (a prune is not resumable); run bigmodel prune again") from e
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
    _summarise(report)
    return report


# ------------------------------------------------------------------ the steps


def _steps(run, net, norm, pruner, original, data, rows, out: Path, finetune_epochs: int, teacher,
           sets) -> list[dict[str, Any]]:
    from bigmodel_cli.compression.architecture import record
    from bigmodel_cli.compression.structured import taylor_gradients
    from bigmodel_cli.models.build import build_network

    history = []
    steps = pruner.pruner.iterative_steps
    for k in range(1, steps + 1):
        if pruner.method == "taylor":
            taylor_gradients(net, norm, _taylor_batches(run, data), run.recipe.task)
        groups = pruner.step()
        net.zero_grad(set_to_none=True)
        if groups == 0:
            raise UsageError(f"model '{pruner.what}' has no channel Torch-Pruning can remove (every group touches the "
                             "classifier's outputs, the input or an attention width)")
        spec = record(net, original)
        recipe = _recipe(run, spec, finetune_epochs, teacher, sets, out / "pruned.pt")
        rebuilt = build_network(recipe, run.manifest)  # the recorded spec rebuilds exactly this network
        rebuilt.load_state_dict(net.state_dict())  # strict: a spec that does not rebuild the network fails here
        _save(out / "pruned.pt", net.state_dict())
        metric, value = _metric(run, net, norm, *rows)
        entry: dict[str, Any] = {"step": k, "ratio": float(pruner.pruner.per_step_pruning_ratio[k]),
                                 "groups_pruned": groups, "after_pruning": value}
        console.info(f"step {k}/{steps}: {groups} groups lost {entry['ratio']:.0%} of their channels; "
                     f"{metric} {value:.4f} right after pruning")
        if finetune_epochs:
            _finetune(recipe, net, data, out if k == steps else None)
            entry["after_finetuning"] = _metric(run, net, norm, *rows)[1]
        history.append(entry)
    if not finetune_epochs:
        _write_untrained_run(run, recipe, net, out)
    return history


def _save(path: Path, state: dict[str, Any]) -> None:
    with atomic.atomic_path(path) as tmp:
        torch.save(state, tmp)


def _finetune(recipe, net, data, dest: Path | None) -> None:
    """The training loop on the pruned network (its weights from `model.weights`); the best weights come back.

    The last step trains into the new run directory; earlier steps into a scratch run that is then removed."""
    from bigmodel_cli import checkpoint
    from bigmodel_cli.training.loop import fit

    with tempfile.TemporaryDirectory(prefix="bigmodel-prune-step-") as scratch:
        run_dir = dest or Path(scratch) / "run"
        fit(recipe, run_dir, data=data)
        state = checkpoint.load(checkpoint.find(run_dir, "best"))
    net.load_state_dict(state["networks"]["model"])


def _write_untrained_run(run, recipe, net, out: Path) -> None:
    """No fine-tuning: the run directory holds the pruned weights as its best and last checkpoints."""
    from bigmodel_cli import __version__, checkpoint
    from bigmodel_cli.models.build import model_meta
    from bigmodel_cli.run import rows, write_run_files

    write_run_files(out, recipe, run.manifest, rows(run, "train"), rows(run, "val"))  # prepared, or the run's own
    state = {"format": checkpoint.FORMAT, "bigmodel_version": __version__, "meta": model_meta(recipe, run.manifest),
             "networks": {"model": net.state_dict()}, "optimizers": {}, "schedules": {}, "averaged": {},
             "pruned_from": str(run.path)}
    for which in ("best", "last"):
        checkpoint.save_atomic(out / "checkpoints" / f"{which}.pt", state)


# ------------------------------------------------------------------ recipes and data


def _recipe(run, spec: dict[str, Any], epochs: int, teacher: str | None, sets: list[str] | None,
            weights: Path | None):
    """The run's recipe for the pruned network: `model.pruned`, its weights, the fine-tuning's epochs and teacher."""
    from bigmodel_cli.config.recipe import parse_set, set_dotted, validate

    data = run.recipe.model_dump(mode="json")
    data["model"].update(pruned=spec or None, weights=str(weights) if weights else None, freeze=[])
    if epochs:
        data["train"]["epochs"] = epochs
    if teacher:
        data["train"]["distill"]["teacher"] = teacher
    for item in sets or []:
        key, value = parse_set(item)
        set_dotted(data, key, value, f"--set {item}")
    return validate(data, f"{run.path / 'recipe.yaml'} (pruned)")


def _builder_network(run):
    """The registered builder's own network for the run's data: what `model.pruned` is recorded against."""
    from bigmodel_cli.models.build import build_network

    unpruned = run.recipe.model_copy(update={"model": run.recipe.model.model_copy(update={"pruned": None})})
    return build_network(unpruned, run.manifest)


def _train_data(run):
    """The prepared splits the run trained on (exit 2 when they were prepared again since)."""
    from bigmodel_cli.data import manifest as manifests
    from bigmodel_cli.run import check_fingerprint
    from bigmodel_cli.training.loop import load_data

    folder = Path(run.recipe.prepared_dir)
    check_fingerprint(run, manifests.read(folder, run.recipe.name), folder)
    return load_data(run.recipe)


def _eval_rows(run, limit: int | None) -> tuple[np.ndarray, np.ndarray, str]:
    """The test split of the run's prepared data (else val), or the run's validation reference rows."""
    from bigmodel_cli.run import prepared_split, reference_rows

    for split in ("test", "val"):
        try:
            x, y = prepared_split(run, split)
        except UsageError:
            break
        if len(x):
            return np.asarray(x[:limit]), np.asarray(y[:limit]), split
    x, y = reference_rows(run, "val")
    return x[:limit], y[:limit], "val (reference rows)"


def _taylor_batches(run, data) -> list[tuple[torch.Tensor, torch.Tensor]]:
    rng = np.random.default_rng(run.recipe.seed)
    size = run.recipe.train.batch_size
    picks = rng.permutation(len(data.train))[: size * TAYLOR_BATCHES]
    return [tuple(torch.from_numpy(a) for a in data.train.take(np.sort(picks[i:i + size])))
            for i in range(0, len(picks), size)]


def _example(run, norm, rows: np.ndarray) -> torch.Tensor:
    """Two rows as the network takes them (after normalisation), to trace the graph with."""
    from bigmodel_cli.export.module import sample_input

    with torch.no_grad():
        return norm(sample_input(run, rows[:2]))


# ------------------------------------------------------------------ measuring


def _metric(run, net, norm, x: np.ndarray, y: np.ndarray) -> tuple[str, float]:
    from bigmodel_cli.export.verify import main_metric

    was_training = net.training
    net.eval()
    outputs = []
    try:
        with torch.inference_mode():
            for i in range(0, len(x), EVAL_BATCH):
                outputs.append(net(norm(torch.from_numpy(np.array(x[i:i + EVAL_BATCH])))).float().numpy())
    finally:
        net.train(was_training)
    return main_metric(run.recipe.task, np.concatenate(outputs) if outputs else np.zeros((0, 1)), y)


def _measure(run, net, norm, example, x, y, onnx_path: Path, verify: bool) -> dict[str, Any]:
    """Parameters, MACs per row, the ONNX file's size, the main metric; onnxruntime against PyTorch if asked."""
    from bigmodel_cli.compression.structured import count
    from bigmodel_cli.export import onnx_graph
    from bigmodel_cli.export import verify as V
    from bigmodel_cli.export.module import Exportable, sample_input
    from bigmodel_cli.export.portable import portable

    net.eval()
    module = Exportable(norm, portable(net), run.recipe.task).eval()
    onnx_graph.to_onnx(module, sample_input(run, x[:2]), onnx_path, run.recipe.export.opset, run.recipe.task)
    name, value = _metric(run, net, norm, x, y)
    result = {**count(net, example), "onnx_bytes": onnx_path.stat().st_size, name: value}
    if verify:
        check = V.verify_onnx(onnx_path, module, x[: run.recipe.export.verify.samples], run.recipe.task,
                              V.tolerance(run.recipe.export.verify, "none"))
        result["onnxruntime"] = {k: check[k] for k in ("passed", "max_abs_error", "agreement", "samples")
                                 if k in check}
    return result


def _report(run, out: Path, ckpt: Path, request: dict[str, Any], before, after, history, started):
    metric = next(k for k in before if k in ("accuracy", "r2"))
    finetuned = history[-1].get("after_finetuning")
    return {
        "run": str(run.path.resolve()), "out": str(out.resolve()), "checkpoint": str(Path(ckpt).resolve()), **request,
        "metric": metric,
        metric: {"before": before[metric], "after_pruning": history[-1]["after_pruning"],
                 "after_finetuning": finetuned,
                 "drop_points": 100 * (before[metric] - (finetuned if finetuned is not None
                                                         else history[-1]["after_pruning"]))},
        "before": {k: before[k] for k in ("parameters", "macs", "onnx_bytes")},
        "after": {k: after[k] for k in ("parameters", "macs", "onnx_bytes")},
        "ratios": {k: after[k] / before[k] if before[k] else None for k in ("parameters", "macs", "onnx_bytes")},
        "onnxruntime": after["onnxruntime"], "history": history, "time_s": time.perf_counter() - started,
    }


def _describe(m: dict[str, Any]) -> str:
    metric = next(k for k in m if k in ("accuracy", "r2"))
    return (f"{m['parameters']:,} parameters, {m['macs'] / 1e6:.2f} M MACs per row, ONNX {m['onnx_bytes'] / 1024:.0f} "
            f"KiB, {metric} {m[metric]:.4f}")


def _summarise(report: dict[str, Any]) -> None:
    metric, r = report["metric"], report["ratios"]
    q = report[metric]
    tuned = f", {q['after_finetuning']:.4f} after fine-tuning" if q["after_finetuning"] is not None else ""
    console.info(f"{metric} {q['before']:.4f} before, {q['after_pruning']:.4f} right after pruning{tuned} "
                 f"(on {report['rows']} {report['split']} rows)")
    a, b, ort = report["before"], report["after"], report["onnxruntime"]
    console.info(f"parameters {a['parameters']:,} -> {b['parameters']:,} ({r['parameters']:.2f}x), MACs per row "
                 f"{a['macs'] / 1e6:.2f} M -> {b['macs'] / 1e6:.2f} M ({r['macs']:.2f}x), ONNX "
                 f"{a['onnx_bytes'] / 1024:.0f} KiB -> {b['onnx_bytes'] / 1024:.0f} KiB ({r['onnx_bytes']:.2f}x)")
    console.info(f"onnxruntime agrees with PyTorch on the pruned network: {ort.get('passed')} (max abs error "
                 f"{ort.get('max_abs_error', 0):.1e} on {ort.get('samples')} rows)")
    console.info(f"wrote {report['out']} and {Path(report['out']) / 'prune.json'}; compare: bigmodel benchmark "
                 f"{report['run']} {report['out']}")
