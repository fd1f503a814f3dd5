"""Fine-tuning tiny pre-trained folders on the one training loop: full and LoRA classification (BERT, Llama),
layer-wise learning rates, the checkpoint a run rebuilds without its folder, verified ONNX export (LoRA merged)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bigmodel_cli.config.recipe import resolve
from bigmodel_cli.data.prepare import prepare
from bigmodel_cli.errors import UsageError
from bigmodel_cli.training.loop import fit

FAST = ["data.text.max_length=24", "train.batch_size=8", "train.epochs=3", "train.optimizer.lr=0.005",
        "train.head_lr=null", "train.scheduler.name=constant", "train.scheduler.warmup_epochs=0",
        "train.early_stopping.patience=null"]


def train(name, root, source, model, *sets):
    r = resolve(name, {"data.prepared": str(root / "data"), "data.source": str(source), "model.path": str(model)},
                [*FAST, *sets])
    prepare(r)
    return r, fit(r, root / "run")


@pytest.fixture(scope="module")
def full(tmp_path_factory, bert_dir, labelled_csv):
    root = tmp_path_factory.mktemp("full")
    return root, *train("text-bert-finetune", root, labelled_csv, bert_dir)


@pytest.fixture(scope="module")
def pretrained_body(full, bert_dir, tmp_path_factory):
    """A body that has learnt something (LoRA presupposes one): the full run's encoder saved as an HF folder
    (BertModel weights and the tokenizer, no classification head)."""
    from bigmodel_cli.run import load_network, load_run

    root, _, _ = full
    net, _, _ = load_network(load_run(root / "run"), "best")
    folder = tmp_path_factory.mktemp("body") / "bert-body"
    net.net.model.bert.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(bert_dir / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def lora(tmp_path_factory, pretrained_body, labelled_csv):
    root = tmp_path_factory.mktemp("lora")
    return root, *train("text-bert-finetune-lora", root, labelled_csv, pretrained_body, "train.epochs=2",
                        "train.optimizer.lr=0.01")


@pytest.mark.slow
def test_full_fine_tuning_learns_the_labels(full):
    _, _, summary = full
    assert summary["best_metrics"]["val_accuracy"] >= 0.8, summary["best_metrics"]


@pytest.mark.slow
def test_a_moved_run_evaluates_without_its_model_folder(full, tmp_path, bert_dir):
    from bigmodel_cli.evaluation.evaluate import evaluate

    root, _, _ = full
    moved = tmp_path / "moved"
    shutil.copytree(root / "run", moved)
    shutil.copytree(root / "data", tmp_path / "data")
    recipe = (moved / "recipe.yaml").read_text().replace(str(root / "data"), str(tmp_path / "data"))
    (moved / "recipe.yaml").write_text(recipe.replace(str(bert_dir), str(tmp_path / "gone")))  # no model folder
    report = evaluate(moved)
    assert report["metrics"]["accuracy"] >= 0.75


@pytest.mark.slow
def test_lora_trains_adapters_and_the_head_only(lora, pretrained_body):
    root, _, summary = lora
    state = torch.load(root / "run/checkpoints/last.pt", weights_only=True)["networks"]["model"]
    trained = {k for k in state if "lora_" in k or "modules_to_save" in k}
    assert trained and any("classifier" in k for k in trained)
    base = load_file(str(pretrained_body / "model.safetensors"))
    key = next(k for k in state if k.endswith("layer.0.attention.self.query.base_layer.weight"))
    original = base["encoder.layer.0.attention.self.query.weight"]
    assert torch.equal(state[key], original)  # the body is frozen
    adapter = next(k for k in state if k.endswith("query.lora_B.default.weight"))
    assert state[adapter].abs().sum() > 0  # B starts at zero: it moved
    assert summary["best_metrics"]["val_accuracy"] >= 0.7, summary["best_metrics"]


@pytest.mark.slow
def test_lora_export_is_merged_and_verified(lora):
    import onnx

    from bigmodel_cli.export.onnx_export import export_run

    root, _, _ = lora
    report = export_run(root / "run")
    assert report["verification"]["passed"], report["verification"]
    names = [i.name for i in onnx.load(str(root / "run/model.onnx")).graph.initializer]
    assert not any("lora" in n for n in names)  # merged: plain weights only

    from bigmodel_cli.export.module import exportable
    from bigmodel_cli.run import load_run

    module, _ = exportable(load_run(root / "run"), "best")  # attention written out: onnxruntime runs it ~2x faster
    model = next(m for m in module.modules() if hasattr(m, "set_attn_implementation"))
    assert model.config._attn_implementation == "eager"


@pytest.mark.slow
def test_int8_export_of_a_fine_tuned_bert_is_judged_and_leaves_nothing_behind(full, tmp_path, monkeypatch):
    from bigmodel_cli.export.onnx_export import export_run

    monkeypatch.chdir(tmp_path)  # onnxruntime's pre-processing writes temporary models into the working directory
    root, _, _ = full
    report = export_run(root / "run", quantize="int8")
    assert (root / "run/model.int8.onnx").is_file()
    assert report["int8"]["metric"]["drop_points"] <= 1.0, report["int8"]
    assert report["verification"]["passed"], report["verification"]
    assert list(tmp_path.iterdir()) == []


def test_layer_decay_and_head_rate_make_parameter_groups(bert_dir, labelled_csv, tmp_path):
    from bigmodel_cli.models.build import build_network
    from bigmodel_cli.training.optim import create_optimizer

    r = resolve("text-bert-finetune", {"data.prepared": str(tmp_path / "data"), "data.source": str(labelled_csv),
                                       "model.path": str(bert_dir)},
                ["data.text.max_length=24", "train.layer_decay=0.5", "train.head_lr=0.01",
                 "train.optimizer.lr=0.001"])
    net = build_network(r, prepare(r))
    lrs = {}
    opt = create_optimizer(net, r.train.optimizer)
    by_param = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    for name, p in net.named_parameters():
        lrs[name] = by_param[id(p)]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001)  # the base rate comes first (the logged lr)
    assert not opt.param_groups[0]["params"]  # here no parameter learns at the base rate itself
    assert lrs["net.model.classifier.weight"] == pytest.approx(0.01)
    assert lrs["net.model.bert.encoder.layer.1.attention.self.query.weight"] == pytest.approx(0.001 * 0.5)
    assert lrs["net.model.bert.encoder.layer.0.attention.self.query.weight"] == pytest.approx(0.001 * 0.25)
    assert lrs["net.model.bert.embeddings.word_embeddings.weight"] == pytest.approx(0.001 * 0.125)


@pytest.mark.slow
def test_a_decoder_classifies_too(tmp_path, llama_dir, labelled_csv):
    from bigmodel_cli.export.onnx_export import export_run

    _, summary = train("text-bert-finetune", tmp_path, labelled_csv, llama_dir, "train.epochs=1")
    assert summary["epochs_run"] == 1
    report = export_run(tmp_path / "run")
    assert report["verification"]["passed"]
    meta = json.loads((tmp_path / "run/preprocessing.json").read_text())["preprocessing"]["hf"]
    assert meta["model_type"] == "llama"
    assert np.isfinite(summary["last_metrics"]["val_loss"])


@pytest.mark.slow
def test_prune_refuses_a_hugging_face_run(full, tmp_path):
    from bigmodel_cli.compression.prune import prune_run

    with pytest.raises(UsageError, match="a pre-trained Hugging Face model; bigmodel prune takes the registered"):
        prune_run(full[0] / "run", 0.5, out=tmp_path / "pruned")
    assert not (tmp_path / "pruned").exists()


def _padded_ids(run_dir, rows: int = 6) -> torch.Tensor:
    """Validation rows with padding at the end (the texts are shorter than max_length), plus an empty text."""
    from bigmodel_cli.run import load_run

    run = load_run(run_dir)
    x = np.load(f"{run.recipe.prepared_dir}/val/x.npy")[:rows].astype(np.int64)
    pad = run.manifest["preprocessing"]["text"]["pad_id"]
    x[-1, 1:] = pad
    assert (x == pad).any(axis=1).all()  # every row is padded
    return torch.from_numpy(x)


def test_an_optimised_encoder_takes_its_padding_mask_prepared_with_the_same_answers(full):
    from bigmodel_cli.export.hf import fusable
    from bigmodel_cli.export.module import exportable
    from bigmodel_cli.run import load_run

    root, _, _ = full
    module, _ = exportable(load_run(root / "run"), "best")
    ids = _padded_ids(root / "run")
    with torch.inference_mode():
        own = module(ids)  # transformers builds the [N, 1, L, L] mask from the [N, L] one
        assert fusable(module) == 1  # what --optimize exports: the mask prepared by us
        prepared = module(ids)
    torch.testing.assert_close(prepared, own, atol=1e-6, rtol=0)  # every output (tensors or tuples of them)


@pytest.mark.slow
def test_optimised_export_fuses_attention_and_quantises_on_top(full, tmp_path, monkeypatch):
    import onnx
    import onnxruntime as ort

    from bigmodel_cli.export.module import exportable
    from bigmodel_cli.export.onnx_export import export_run
    from bigmodel_cli.run import load_run

    monkeypatch.chdir(tmp_path)
    root, _, _ = full
    report = export_run(root / "run", out=tmp_path / "model.opt.onnx", optimize=True)
    assert report["verification"]["passed"], report["verification"]
    assert report["optimize"]["fused"]["Attention"] == 2, report["optimize"]  # one per layer of the tiny BERT
    ops = [n.op_type for n in onnx.load(str(tmp_path / "model.opt.onnx")).graph.node]
    assert ops.count("Attention") == 2 and ops.count("Softmax") <= 1  # left: the probabilities' own

    ids = _padded_ids(root / "run")  # padding as the fused op reads it (the raw mask, any pattern)
    module, _ = exportable(load_run(root / "run"), "best")
    with torch.inference_mode():
        expected = module(ids)
    expected = (expected[0] if isinstance(expected, tuple) else expected).numpy()
    session = ort.InferenceSession(str(tmp_path / "model.opt.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"input": ids.numpy()})[0], expected, atol=1e-5)

    report = export_run(root / "run", out=tmp_path / "model.opt.int8.onnx", quantize="int8", optimize=True)
    assert report["int8"]["metric"]["drop_points"] <= 1.0 and report["verification"]["passed"], report
    assert "QAttention" in [n.op_type for n in onnx.load(str(tmp_path / "model.opt.int8.onnx")).graph.node]
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # nothing else left behind
        "export.opt.int8.json", "export.opt.json", "model.opt.int8.onnx", "model.opt.onnx", "profile.opt.int8.json",
        "profile.opt.json"]
