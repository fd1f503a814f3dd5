"""Local Hugging Face folders: what prepare-data and the model builder accept, and every bad input as one exit-2
line (a folder without config.json or weights, a Hub id, a missing tokenizer, an architecture the task cannot use,
LoRA target modules that do not exist, sequences longer than the position embeddings, transformers missing)."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest

from bigmodel_cli.config.recipe import resolve
from bigmodel_cli.data.prepare import prepare
from bigmodel_cli.data.preprocess import apply_text
from bigmodel_cli.errors import UsageError


def recipe(name, tmp_path, source, model, *sets):
    return resolve(name, {"data.prepared": str(tmp_path / "data"), "data.source": str(source),
                          "model.path": str(model)}, ["data.text.max_length=24", *sets])


def test_the_model_tokenizer_prepares_ids_that_match_transformers(tmp_path, bert_dir, labelled_csv):
    from transformers import AutoTokenizer

    manifest = prepare(recipe("text-bert-finetune", tmp_path, labelled_csv, bert_dir))
    spec = manifest["preprocessing"]["text"]
    assert spec["tokenizer_kind"] == "model" and manifest["preprocessing"]["hf"]["model_type"] == "bert"
    x = np.load(tmp_path / "data" / "train" / "x.npy")
    assert x.shape[1] == 24 and x.dtype == np.int32
    reference = AutoTokenizer.from_pretrained(str(bert_dir), local_files_only=True)
    texts = ["a great film", "dull plot and weak ending"]
    want = reference(texts, padding="max_length", max_length=24, truncation=True)["input_ids"]
    assert apply_text(spec, texts).tolist() == want  # [CLS] ... [SEP] then [PAD]: as transformers tokenises
    assert manifest["report"]["text"]["model_tokenizer"]


def test_a_gpt2_tokenizer_without_padding_pads_with_end_of_text(tmp_path, gpt2_dir, labelled_csv):
    manifest = prepare(recipe("text-bert-finetune", tmp_path, labelled_csv, gpt2_dir))
    spec = manifest["preprocessing"]["text"]
    assert spec["pad_id"] == spec["eos_id"] == 0 and spec["pad_token"] == "<|endoftext|>"


def bad(tmp_path, bert_dir, remove):
    folder = tmp_path / "model"
    shutil.copytree(bert_dir, folder)
    for name in remove:
        (folder / name).unlink()
    return folder


@pytest.mark.parametrize(("remove", "message"), [
    (["config.json"], "no config.json"),
    (["model.safetensors"], "no weights in the folder"),
    (["tokenizer.json", "tokenizer_config.json"], "no tokenizer in the model folder"),
])
def test_an_incomplete_folder_is_named(tmp_path, bert_dir, labelled_csv, remove, message):
    with pytest.raises(UsageError, match=message):
        prepare(recipe("text-bert-finetune", tmp_path, labelled_csv, bad(tmp_path, bert_dir, remove)))
    assert not (tmp_path / "data").exists()


def test_a_hub_id_is_refused_and_never_downloaded(tmp_path, labelled_csv):
    r = resolve("text-bert-finetune", {"data.prepared": str(tmp_path / "data"), "data.source": str(labelled_csv),
                                       "model.path": "google-bert/bert-base-uncased"})
    with pytest.raises(UsageError, match="not downloaded from the Hugging Face Hub.*hf download google-bert"):
        prepare(r)


def test_sequences_longer_than_the_position_embeddings(tmp_path, bert_dir, labelled_csv):
    with pytest.raises(UsageError, match="longer than the model's position embeddings \\(64"):
        prepare(recipe("text-bert-finetune", tmp_path, labelled_csv, bert_dir, "data.text.max_length=65"))


def test_an_encoder_cannot_be_a_language_model(tmp_path, bert_dir, corpus):
    from bigmodel_cli.training.loop import fit

    r = recipe("text-gpt-lm", tmp_path, corpus, bert_dir, "data.text.max_length=16")
    prepare(r)
    with pytest.raises(UsageError, match="not a decoder"):
        fit(r, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_lora_target_modules_that_do_not_exist_name_the_nearest(tmp_path, bert_dir, labelled_csv):
    from bigmodel_cli.models.build import build_network

    r = recipe("text-bert-finetune-lora", tmp_path, labelled_csv, bert_dir, "model.lora.target_modules=[querry]")
    manifest = prepare(r)
    with pytest.raises(UsageError, match="'querry' is not a layer of this model; nearest: query"):
        build_network(r, manifest)


def test_without_transformers_a_recipe_that_needs_it_names_the_extra(tmp_path, bert_dir, labelled_csv, monkeypatch):
    from bigmodel_cli.models.build import build_network

    r = recipe("text-bert-finetune", tmp_path, labelled_csv, bert_dir)
    manifest = prepare(r)
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(UsageError, match=r"pip install 'bigmodel-cli\[hf\]'"):
        build_network(r, manifest)


def test_hf_needs_the_model_tokenizer(tmp_path, bert_dir, labelled_csv):
    from bigmodel_cli.models.build import build_network

    r = recipe("text-bert-finetune", tmp_path, labelled_csv, bert_dir, "data.text.tokenizer=word")
    manifest = prepare(r)
    with pytest.raises(UsageError, match="data.text.tokenizer: model"):
        build_network(r, manifest)


def test_a_hub_id_on_the_command_line_is_exit_2_in_one_line(cli, tmp_path, labelled_csv):
    result = cli("prepare-data", "-r", "text-bert-finetune", "--source", str(labelled_csv), "--set",
                 "model.path=bert-base-uncased")
    assert result.code == 2
    assert "Traceback" not in result.stderr and "bert-base-uncased" in result.stderr


def test_sharded_safetensors_load_every_tensor(tmp_path, bert_dir, labelled_csv):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel

    from bigmodel_cli.models.build import build_network

    sharded = tmp_path / "sharded"
    AutoModel.from_pretrained(str(bert_dir), local_files_only=True).save_pretrained(sharded, max_shard_size="40KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(bert_dir / name, sharded / name)
    assert (sharded / "model.safetensors.index.json").is_file() and len(list(sharded.glob("*.safetensors"))) > 1
    r = recipe("text-bert-finetune", tmp_path, labelled_csv, sharded)
    net = build_network(r, prepare(r))
    saved = load_file(str(bert_dir / "model.safetensors"))  # the masked-LM folder's tensors (no pooler)
    want = {k.removeprefix("bert."): v for k, v in saved.items() if k.startswith("bert.")}
    got = net.net.model.bert.state_dict()
    assert want and all(torch.equal(got[k], v) for k, v in want.items())
