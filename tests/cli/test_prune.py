"""`bigmodel prune`: a trained run pruned into a new run directory that eval, export, benchmark, serve and resume
use unchanged; its report; and each bad input (exit 2, one line, nothing written)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from bigmodel_cli.cli.app import main
from bigmodel_cli.compression.prune import prune_run
from bigmodel_cli.config.recipe import resolve
from bigmodel_cli.data.prepare import prepare
from bigmodel_cli.run import load_network, load_run
from bigmodel_cli.training.loop import fit
from tests.conftest import run_in_process, tree


@pytest.fixture(scope="module")
def pruned(digits_run, tmp_path_factory):
    """The digits run pruned by half through the real command: one fine-tuning epoch distilled from itself."""
    out = tmp_path_factory.mktemp("prune") / "digits-pruned"
    result = run_in_process("prune", str(digits_run), "--ratio", "0.5", "--finetune-epochs", "1", "--teacher",
                            str(digits_run), "--round-to", "4", "--out", str(out), "--json", cwd=out.parent)
    assert result.code == 0, result.stderr
    return out, result.json()


@pytest.mark.slow
def test_prune_report_measures_what_was_removed_and_what_it_cost(digits_run, pruned):
    out, report = pruned
    assert json.loads((out / "prune.json").read_text()) == report
    assert report["method"] == "l2" and report["split"] == "test" and report["rows"] > 200
    assert report["ratios"]["parameters"] < 0.4 and report["ratios"]["macs"] < 0.4  # both sides of most layers halved
    assert report["ratios"]["onnx_bytes"] < 0.5 and report["after"]["onnx_bytes"] > 0
    accuracy = report["accuracy"]
    assert accuracy["before"] > 0.8 and accuracy["after_finetuning"] is not None
    assert accuracy["after_finetuning"] > accuracy["after_pruning"] - 0.05  # fine-tuning does not make it worse
    assert report["onnxruntime"]["passed"] and report["onnxruntime"]["agreement"] == 1.0
    spec = load_run(out).recipe.model.pruned
    assert all(v % 4 == 0 for changes in spec.values() for k, v in changes.items() if k.endswith("channels"))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["train_distill_loss"] > 0  # fine-tuned by the training loop, distilled
    assert json.loads((out / "preprocessing.json").read_text())["teacher"]["run"] == str(digits_run)


@pytest.mark.slow
def test_pruned_run_works_with_eval_export_benchmark_serve_and_resume(digits_run, pruned):
    from bigmodel_cli.evaluation.evaluate import Options, evaluate
    from bigmodel_cli.export.benchmark import benchmark
    from bigmodel_cli.export.onnx_export import export_run
    from bigmodel_cli.serving.model import LoadedModel

    out, report = pruned
    evaluated = evaluate(out, Options(plots=False))
    assert evaluated["metrics"]["accuracy"] == pytest.approx(report["accuracy"]["after_finetuning"])
    exported = export_run(out)
    assert exported["verification"]["passed"] and exported["size_bytes"] < 0.5 * report["before"]["onnx_bytes"]
    model = LoadedModel.load(out / "model.onnx", name="digits")
    probabilities = model.run_batch({"input": np.zeros((3, 1, 8, 8), np.float32)})["probabilities"]
    assert probabilities.shape == (3, 10) and np.allclose(probabilities.sum(1), 1, atol=1e-5)
    compared = benchmark([digits_run, out], batch_sizes=[8], iterations=3)
    pair = next(c for c in compared["comparison"] if c["a"] == "onnxruntime-fp32")
    assert pair["size_ratio_b_over_a"] < 0.5 and pair["latency_ratio_b_over_a"]["8"] > 0
    summary = fit(load_run(out).recipe, out, resume=True)  # rebuilt from recipe.yaml, last.pt loads into it
    assert summary["epochs_run"] == 1


def test_iterative_taylor_pruning_without_fine_tuning_writes_a_loadable_run(digits_run, tmp_path):
    report = prune_run(digits_run, 0.5, method="taylor", steps=2, out=tmp_path / "p")
    assert [round(h["ratio"], 2) for h in report["history"]] == [0.25, 0.5]
    assert report["accuracy"]["after_finetuning"] is None and report["ratios"]["macs"] < 0.4
    net, norm, _ = load_network(load_run(tmp_path / "p"))
    x = torch.zeros(2, 1, 8, 8)
    full, _, _ = load_network(load_run(digits_run))
    assert net(norm(x)).shape == (2, 10) and sum(p.numel() for p in net.parameters()) < 0.4 * sum(
        p.numel() for p in full.parameters())
    state = torch.load(tmp_path / "p/pruned.pt", weights_only=True)  # the weights right after the last step
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


def _fails(capsys, *args) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lstm")
    with (root / "texts.csv").open("w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["text", "label"])
        for i in range(60):
            rows.writerow([f"{'good fine' if i % 2 else 'bad poor'} film {i % 7}", "pos" if i % 2 else "neg"])
    recipe = resolve("text-transformer", {"data.source": str(root / "texts.csv"), "data.prepared": str(root / "data"),
                                          "model.name": "lstm"},
                     ["model.args={embed_dim: 8, hidden: 8}", "train.epochs=1", "train.batch_size=8",
                      "data.text.max_length=6"])
    prepare(recipe)
    fit(recipe, root / "run")
    return root / "run"


def test_bad_input_exits_2_and_writes_nothing(digits_run, lstm_run, tmp_path, capsys):
    before = tree(digits_run.parent)
    out = str(tmp_path / "p")
    for ratio in ("0", "1", "1.5", "-0.2"):
        assert "strictly between 0 and 1" in _fails(capsys, "prune", str(digits_run), "--ratio", ratio, "--out", out)
    assert "--method l1: expected one of l2, taylor, bn-scale" in _fails(
        capsys, "prune", str(digits_run), "--ratio", "0.5", "--method", "l1", "--out", out)
    assert "nowhere: no such run directory" in _fails(capsys, "prune", str(tmp_path / "nowhere"), "--ratio", "0.5")
    message = _fails(capsys, "prune", str(lstm_run), "--ratio", "0.5", "--out", out)
    assert "model 'lstm' cannot be pruned" in message and "recurrent layers (LSTM)" in message
    (tmp_path / "taken").mkdir()
    assert "already exists" in _fails(capsys, "prune", str(digits_run), "--ratio", "0.5", "--out",
                                      str(tmp_path / "taken"))
    assert not (tmp_path / "p").exists() and tree(digits_run.parent) == before


@pytest.mark.slow
def test_a_pruned_checkpoint_into_the_unpruned_architecture_is_refused(digits_run, pruned, capsys):
    out, _ = pruned
    message = _fails(capsys, "eval", str(digits_run), "--checkpoint", str(out / "checkpoints/best.pt"), "--no-plots")
    assert "holds a pruned network (bigmodel prune), but this run builds the unpruned architecture" in message
    assert "size mismatch" not in message
