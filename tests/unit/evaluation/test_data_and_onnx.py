"""`--data DIR` (another prepared dataset, same schema) and `--onnx` (the exported model, same metrics)."""

import json
import shutil

import numpy as np
import pytest

from bigmodel_cli.errors import UsageError
from bigmodel_cli.evaluation.evaluate import Options, evaluate
from tests.unit.evaluation.conftest import blobs, write_prepared


def recipe_data(run):
    import yaml

    return yaml.safe_load((run / "recipe.yaml").read_text())["data"]["prepared"]


def fresh_month(run, dest, edit=None):
    """A copy of the run's prepared data with new test rows (and an optional manifest edit)."""
    shutil.copytree(recipe_data(run), dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    if edit:
        edit(manifest)
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def test_data_dir_with_the_same_schema_is_evaluated_into_its_own_folder(run_copy, tmp_path):
    run = run_copy("absent")
    own = evaluate(run, Options(plots=False))
    month = fresh_month(run, tmp_path / "2026-11")
    rng = np.random.default_rng(9)
    x, y = blobs(np.random.default_rng(1), [5, 5, 5])
    np.save(month / "test/x.npy", x[rng.permutation(len(x))])
    np.save(month / "test/y.npy", y)
    report = evaluate(run, Options(data=month, plots=False))
    assert report["data"] == str(month) and report["n"] == 15
    assert (run / "eval/data-2026-11/test.json").is_file()
    assert (run / "eval/data-2026-11/test_predictions.csv").is_file()
    assert json.loads((run / "eval/test.json").read_text())["metrics"] == own["metrics"]  # the run's own untouched
    assert report["per_class"]["c"]["support"] == 5


def test_data_dir_with_a_subset_of_classes_is_mapped_by_name(run_copy, tmp_path):
    run = run_copy("absent")
    x, y = blobs(np.random.default_rng(1), [0, 8, 8])
    keep = y > 0
    splits = {s: (x[keep], y[keep] - 1) for s in ("train", "val", "test")}  # classes b, c as indices 0, 1
    other = write_prepared(tmp_path / "bc-only", "classification", splits, ["b", "c"])
    report = evaluate(run, Options(data=other, plots=False))
    assert report["per_class"]["a"]["support"] == 0
    assert report["per_class"]["b"]["support"] == 8 and report["per_class"]["c"]["support"] == 8


@pytest.mark.parametrize("edit,message", [
    (lambda m: m["features"].__setitem__(2, "f2_renamed"), "feature column 'f2' the run was trained on is missing"),
    (lambda m: m["features"].append("f6"), "feature column 'f6' is not one the run was trained on"),
    (lambda m: m["features"].reverse(), "feature column 'f5' is at position 0, where the run expects 'f0'"),
    (lambda m: m.__setitem__("target", "species"), "target is 'species', the run was trained with 'label'"),
    (lambda m: m["classes"].append("d"), "class 'd' of column 'label' is not one the run knows (a, b, c)"),
    (lambda m: m.__setitem__("task", "regression"), "task is 'regression'"),
])
def test_data_dir_with_another_schema_is_exit_2_naming_the_column(run_copy, tmp_path, edit, message):
    run = run_copy("absent")
    month = fresh_month(run, tmp_path / "bad", edit)
    with pytest.raises(UsageError, match=f"--data {month}: .*") as err:
        evaluate(run, Options(data=month))
    assert message in str(err.value)
    assert not (run / "eval").exists()


def test_labels_outside_the_classes_name_the_row(run_copy, tmp_path):
    run = run_copy("absent")
    month = fresh_month(run, tmp_path / "m")
    y = np.load(month / "test/y.npy")
    y[7] = 3
    np.save(month / "test/y.npy", y)
    with pytest.raises(UsageError, match=r"test/y.npy: row 7 has class index 3, expected 0..2"):
        evaluate(run, Options(data=month))


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    from bigmodel_cli import console
    from bigmodel_cli.export.onnx_export import export_run

    run = tmp_path_factory.mktemp("onnx") / "binary"
    shutil.copytree(runs["binary"], run)
    console.quiet(True)
    try:
        export_run(run)
    finally:
        console.quiet(False)
    return run


def test_onnx_model_gives_the_checkpoint_metrics_and_agreement(exported):
    torch_report = evaluate(exported, Options(plots=False, threshold_search="f1"))
    onnx_report = evaluate(exported, Options(plots=False, threshold_search="f1"), onnx=exported / "model.onnx")
    assert onnx_report["model"] == str(exported / "model.onnx") and "checkpoint" not in onnx_report
    for name, value in torch_report["metrics"].items():
        assert onnx_report["metrics"][name] == pytest.approx(value, abs=1e-5), name
    agreement = onnx_report["onnx"]
    assert agreement["agreement"] == 1.0 and agreement["max_abs_difference"] < 1e-5
    assert agreement["checkpoint"].endswith("best.pt")
    assert agreement["checkpoint_chosen_by"] == "recorded by bigmodel export"
    # each evaluation keeps its own files: the checkpoint's test.json, the ONNX model's test.onnx.json
    assert json.loads((exported / "eval/test.json").read_text())["checkpoint"].endswith("best.pt")
    assert json.loads((exported / "eval/test.onnx.json").read_text())["model"] == str(exported / "model.onnx")


def perturbed_last(run):
    """Make checkpoints/last.pt a different model from best.pt (as after more epochs that did not improve)."""
    import torch

    state = torch.load(run / "checkpoints/last.pt", weights_only=True)
    first = next(k for k in state["networks"]["model"] if k.endswith("weight"))
    generator = torch.Generator().manual_seed(0)
    state["networks"]["model"][first] += torch.randn(state["networks"]["model"][first].shape, generator=generator) * 2.0
    torch.save(state, run / "checkpoints/last.pt")


def test_onnx_exported_from_last_is_compared_with_last_not_best(run_copy, capsys):
    from bigmodel_cli.export.onnx_export import export_run

    run = run_copy("binary")
    perturbed_last(run)
    exported = export_run(run, checkpoint="last")
    assert exported["checkpoint"]["which"] == "last" and exported["checkpoint"]["path"] == "checkpoints/last.pt"
    assert json.loads((run / "export.json").read_text())["checkpoint"]["which"] == "last"
    report = evaluate(run, Options(plots=False), onnx=run / "model.onnx")
    agreement = report["onnx"]
    assert agreement["checkpoint"].endswith("last.pt") and agreement["max_abs_difference"] < 1e-5
    assert agreement["agreement"] == 1.0
    # best.pt really is another model: an explicit --checkpoint best shows the difference the old code reported
    against_best = evaluate(run, Options(plots=False, checkpoint="best"), onnx=run / "model.onnx")["onnx"]
    assert against_best["checkpoint"].endswith("best.pt") and against_best["checkpoint_chosen_by"] == "--checkpoint"
    assert against_best["max_abs_difference"] > 0.05
    assert "has changed since the export" not in capsys.readouterr().err
    perturbed_last(run)  # trained on after the export: the recorded checkpoint no longer matches the model
    again = evaluate(run, Options(plots=False), onnx=run / "model.onnx")["onnx"]
    assert again["max_abs_difference"] > 0.05
    assert "the checkpoint this model was exported from, has changed since the export" in capsys.readouterr().err


def test_best_last_and_onnx_evaluations_of_one_split_keep_their_own_files(run_copy):
    run = run_copy("binary")
    perturbed_last(run)
    best = evaluate(run, Options(plots=True))
    last = evaluate(run, Options(plots=True, checkpoint="last"))
    assert best["files"]["report"] == str(run / "eval/test.json")
    assert last["files"]["report"] == str(run / "eval/test.last.json")
    assert last["files"]["predictions"] == str(run / "eval/test.last_predictions.csv")
    assert (run / "eval/test.last_roc.png").read_bytes()[:4] == b"\x89PNG"
    on_disk = {name: json.loads((run / f"eval/{name}.json").read_text()) for name in ("test", "test.last")}
    assert on_disk["test"]["checkpoint"].endswith("best.pt") and on_disk["test"]["metrics"] == best["metrics"]
    assert on_disk["test.last"]["checkpoint"].endswith("last.pt") and on_disk["test.last"]["metrics"] == last["metrics"]
    assert best["metrics"] != last["metrics"]
    by_path = evaluate(run, Options(plots=False, checkpoint=str(run / "checkpoints/last.pt")))
    assert by_path["files"]["report"] == str(run / "eval/test.last.json")  # the same checkpoint, the same name


def test_raw_file_is_evaluated_into_its_own_folder_without_a_split_name(run_copy, tmp_path):
    from sklearn.datasets import load_breast_cancer

    run = run_copy("binary")
    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.frame.sample(60, random_state=3)
    frame["target"] = [str(bunch.target_names[t]) for t in frame["target"]]
    frame.to_csv(tmp_path / "new.csv", index=False)
    report = evaluate(run, Options(data=tmp_path / "new.csv", plots=False))
    assert report["split"] is None and report["n"] == 60 and report["metrics"]["accuracy"] > 0.8
    assert report["files"]["report"] == str(run / "eval/data-new/rows.json")
    assert (run / "eval/data-new/rows_predictions.csv").is_file() and not (run / "eval/test.json").exists()
    with pytest.raises(UsageError, match=r"--split val: --data .*new.csv is a raw file whose every row is evaluated"):
        evaluate(run, Options(data=tmp_path / "new.csv", split="val"))


def test_onnx_model_of_another_run_or_missing_is_exit_2(exported, runs, tmp_path):
    with pytest.raises(UsageError, match="--onnx .*nope.onnx: file not found; create it with: bigmodel export"):
        evaluate(exported, onnx=tmp_path / "nope.onnx")
    other = tmp_path / "multiclass"
    shutil.copytree(runs["multiclass"], other)
    with pytest.raises(UsageError, match="model's (input_shape|class_names) .* differs from the run's"):
        evaluate(other, onnx=exported / "model.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(UsageError, match="onnxruntime cannot load it"):
        evaluate(exported, onnx=tmp_path / "junk.onnx")
