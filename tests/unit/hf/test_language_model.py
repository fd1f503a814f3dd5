"""Causal language modelling on a tiny GPT-2 folder: a corpus packed into blocks, training that lowers the
perplexity, eval with gates, seeded generation from the checkpoint and from the exported decoder alike."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bigmodel_cli.config.recipe import resolve
from bigmodel_cli.data.prepare import prepare
from bigmodel_cli.errors import UsageError

SETS = ["data.text.max_length=32", "train.batch_size=8", "train.accumulate=1", "train.epochs=2",
        "train.optimizer.lr=0.005", "train.scheduler.name=constant", "train.scheduler.warmup_epochs=0",
        "data.split.val=0.15", "data.split.test=0.15"]


def lm_recipe(root, source, model, *sets):
    return resolve("text-gpt-lm", {"data.prepared": str(root / "data"), "data.source": str(source),
                                   "model.path": str(model)}, [*SETS, *sets])


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, gpt2_dir, corpus):
    from bigmodel_cli.training.loop import fit

    root = tmp_path_factory.mktemp("lm")
    r = lm_recipe(root, corpus, gpt2_dir)
    manifest = prepare(r)
    return root, manifest, fit(r, root / "run")


@pytest.mark.slow
def test_the_corpus_is_packed_into_blocks_of_its_tokens(lm_run, gpt2_dir, corpus):
    from transformers import AutoTokenizer

    root, manifest, _ = lm_run
    text = manifest["report"]["text"]
    x = np.load(root / "data" / "train" / "x.npy")
    assert x.shape == (text["blocks"]["train"], 32) and x.dtype == np.int32
    assert text["tokens"]["train"] - 32 * len(x) == text["tokens_dropped"]["train"] < 32
    assert sum(text["documents"].values()) == 80  # one document per paragraph
    tok = AutoTokenizer.from_pretrained(str(gpt2_dir), local_files_only=True)
    first = corpus.read_text().split("\n\n")
    stream = np.concatenate([np.load(root / "data" / s / "x.npy").ravel() for s in ("train", "val", "test")])
    paragraph = tok(first[0])["input_ids"]
    assert any(np.array_equal(stream[i:i + len(paragraph)], paragraph) for i in range(0, 200))
    assert int(tok.eos_token_id) in stream.tolist()  # documents are separated by end-of-text


@pytest.mark.slow
def test_training_lowers_the_perplexity(lm_run):
    _, _, summary = lm_run
    first, last = summary["best_metrics"], summary["last_metrics"]
    history = [first, last]
    assert {"val_loss", "val_perplexity"} <= set(last)
    assert last["val_perplexity"] == pytest.approx(np.exp(last["val_loss"]))
    assert min(r["val_perplexity"] for r in history) < 40  # a random 320-token model starts near 320


@pytest.mark.slow
def test_eval_reports_perplexity_and_gates_it(lm_run):
    from bigmodel_cli.evaluation.evaluate import Options, evaluate

    root, _, _ = lm_run
    report = evaluate(root / "run", Options(fail_over={"perplexity": 1.0}))
    assert report["metrics"]["perplexity"] == pytest.approx(np.exp(report["metrics"]["loss"]))
    assert report["gates"] == [{"metric": "perplexity", "kind": "fail_over", "limit": 1.0,
                                "value": report["metrics"]["perplexity"], "passed": False}]
    assert (root / "run/eval/test.json").is_file()
    with pytest.raises(UsageError, match="did you mean 'perplexity'"):
        evaluate(root / "run", Options(fail_over={"perplexty": 3.0}))


@pytest.mark.slow
def test_generation_is_seeded_and_the_onnx_decoder_agrees(lm_run):
    from bigmodel_cli.export.onnx_export import export_run
    from bigmodel_cli.tasks.language_modeling import generate_text

    root, _, _ = lm_run
    run = root / "run"
    a = generate_text(run, "one two", max_new_tokens=12, temperature=0.9, top_p=0.9, seed=3)
    assert a == generate_text(run, "one two", max_new_tokens=12, temperature=0.9, top_p=0.9, seed=3)
    assert a.startswith("one two") and len(a) > len("one two")
    greedy = generate_text(run, "one two", max_new_tokens=12, temperature=0)
    report = export_run(run)
    assert report["outputs"] == ["logits"] and report["verification"]["passed"]
    assert generate_text(run / "model.onnx", "one two", max_new_tokens=12, temperature=0) == greedy
    assert generate_text(run / "model.onnx", "one two", max_new_tokens=12, temperature=0.9, top_p=0.9,
                         seed=3) == a


@pytest.mark.slow
def test_generation_options_and_prompt_length_are_checked(lm_run):
    from bigmodel_cli.tasks.language_modeling import generate_text

    run = lm_run[0] / "run"
    with pytest.raises(UsageError, match="--top-p"):
        generate_text(run, "one", top_p=0)
    with pytest.raises(UsageError, match="the model takes at most 64"):
        generate_text(run, "one two " * 40)


def test_sampling_keeps_the_nucleus():
    from bigmodel_cli.inference.text_generation import sample_next

    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    rng = np.random.default_rng(0)
    drawn = {sample_next(logits, 1.0, 0.75, rng) for _ in range(200)}
    assert drawn == {0, 1}  # 0.5 + 0.3 reach 0.75: tokens 2 and 3 are never drawn
    assert sample_next(logits, 0.0, 1.0, rng) == 0


@pytest.mark.slow
def test_a_llama_folder_fine_tunes_with_lora_and_exports_fp16(tmp_path, llama_dir, corpus):
    from bigmodel_cli.training.loop import fit

    r = lm_recipe(tmp_path, corpus, llama_dir, "train.epochs=1", "model.lora.r=4",
                  "model.lora.target_modules=[q_proj, v_proj]")
    prepare(r)
    summary = fit(r, tmp_path / "run")
    assert np.isfinite(summary["last_metrics"]["val_loss"])

    from bigmodel_cli.export.onnx_export import export_run
    from bigmodel_cli.tasks.language_modeling import generate_text

    report = export_run(tmp_path / "run", quantize="fp16")  # LoRA merged, fp16, with the key/value cache
    assert report["verification"]["passed"], report["verification"]
    greedy = generate_text(tmp_path / "run", "one two", max_new_tokens=8, temperature=0)
    assert generate_text(tmp_path / "run" / "model.fp16.onnx", "one two", max_new_tokens=8, temperature=0) == greedy


@pytest.mark.slow
def test_bigmodel_generate_prompt_prints_the_continuation(lm_run, capsys):
    from bigmodel_cli.cli.app import main
    from bigmodel_cli.tasks.language_modeling import generate_text

    run = lm_run[0] / "run"

    def cli(*args: str) -> int:
        try:
            main(list(args))
        except SystemExit as e:
            return int(e.code or 0)
        return 0

    assert cli("generate", str(run), "--prompt", "one two", "--max-new-tokens", "8", "--temperature", "0",
               "--json") == 0
    document = json.loads(capsys.readouterr().out)
    assert document["text"] == generate_text(run, "one two", max_new_tokens=8, temperature=0)
    assert document["text"].startswith("one two")
    assert cli("generate", str(run), "--prompt", "one two", "--max-new-tokens", "8", "--temperature", "0") == 0
    assert capsys.readouterr().out == document["text"] + "\n"
    assert cli("generate", str(run), "--out", "x.png") == 2
    assert "give --prompt TEXT for text" in capsys.readouterr().err
    assert cli("generate", str(run), "--prompt", "one", "--label", "1") == 2
    assert "--prompt: text generation takes no --label or --z" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_answers_prompts_with_the_text_generate_prints(lm_run):
    from starlette.testclient import TestClient

    from bigmodel_cli.export.onnx_export import export_run
    from bigmodel_cli.serving.app import create_app
    from bigmodel_cli.serving.model import LoadedModel
    from bigmodel_cli.tasks.language_modeling import generate_text

    run = lm_run[0] / "run"
    if not (run / "model.onnx").exists():
        export_run(run)
    model = LoadedModel.load(run / "model.onnx", device="cpu", max_batch_size=4)
    url = f"/v2/models/{model.name}/infer"

    def ask(prompts, **parameters):
        return client.post(url, json={"inputs": [{"name": "prompt", "shape": [len(prompts)], "datatype": "BYTES",
                                                  "data": prompts}], "parameters": parameters})

    with TestClient(create_app(model)) as client:
        meta = client.get(f"/v2/models/{model.name}").json()
        assert meta["inputs"] == [{"name": "prompt", "datatype": "BYTES", "shape": [-1]}]
        assert meta["outputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
        assert meta["parameters"]["text_generation"]["longest_sequence"] == 64
        greedy = ask(["one two", "three"], max_new_tokens=8, temperature=0)
        assert greedy.status_code == 200, greedy.text
        (out,) = greedy.json()["outputs"]
        assert out["name"] == "text" and out["shape"] == [2]
        assert out["data"] == [generate_text(run / "model.onnx", p, max_new_tokens=8, temperature=0)
                               for p in ("one two", "three")]
        assert out["data"][0] == generate_text(run, "one two", max_new_tokens=8, temperature=0)  # the checkpoint
        sampled = ask(["one two"], max_new_tokens=10, temperature=0.9, top_p=0.9, seed=5).json()["outputs"][0]
        assert sampled["data"] == [generate_text(run / "model.onnx", "one two", max_new_tokens=10, temperature=0.9,
                                                 top_p=0.9, seed=5)]
        assert ask(["one two"], max_new_tokens=10, temperature=0.9, top_p=0.9, seed=5).json()["outputs"][0] == sampled

        for prompts, parameters, status, message in [
            (["one"], {"top_p": 0}, 400, "parameter 'top_p' 0.0: must be in (0, 1]"),
            (["one"], {"temperature": "hot"}, 400, "parameter 'temperature': expected a number"),
            (["one"], {"max_new_tokens": 2.5}, 400, "parameter 'max_new_tokens': expected an integer"),
            (["one two " * 40], {}, 400, "input 'prompt' string 1: 241 tokens, the model takes at most 64"),
            ([""], {}, 400, "input 'prompt' string 1: the prompt has no tokens"),
            (["a"] * 5, {}, 400, "batch of 5 is over max_batch_size 4"),
        ]:
            r = ask(prompts, **parameters)
            assert r.status_code == status and message in r.json()["error"], (parameters, r.text)
        r = client.post(url, json={"inputs": [{"name": "input", "shape": [1, 2], "datatype": "INT64",
                                               "data": [1, 2]}]})
        assert r.status_code == 400 and "a language model takes 'prompt'" in r.json()["error"]
        r = client.post(url, json={"inputs": [{"name": "prompt", "shape": [1], "datatype": "FP32", "data": [1]}]})
        assert r.status_code == 400 and "datatype must be BYTES" in r.json()["error"]


@pytest.mark.slow
def test_the_exported_decoder_steps_with_its_key_value_cache_as_the_full_sequence_does(lm_run):
    import onnx

    from bigmodel_cli.export.hf import cache_names
    from bigmodel_cli.export.onnx_export import export_run
    from bigmodel_cli.inference.session import create_session
    from bigmodel_cli.inference.text_generation import OnnxDecoder

    run = lm_run[0] / "run"
    if not (run / "model.onnx").exists():
        export_run(run)
    graph = onnx.load(str(run / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["input", *cache_names(2)]  # the tiny GPT-2 has 2 layers
    assert [o.name for o in graph.output][1:] == [n.replace("past", "present") for n in cache_names(2)]
    session = create_session(run / "model.onnx", device="cpu")
    assert [i.name for i in session.get_inputs()] == ["input"]  # the cache is optional: ids alone still run
    ids = np.load(lm_run[0] / "data" / "val" / "x.npy")[0, :12].astype(np.int64)
    full = session.run(["logits"], {"input": ids[None]})[0][0]
    spec = json.loads(session.get_modelmeta().custom_metadata_map["text_preprocessing"])
    decoder = OnnxDecoder(session, spec)
    assert len(decoder.cache) == 4
    steps = [decoder.start(list(ids[:4]))] + [decoder.advance(int(t)) for t in ids[4:]]
    np.testing.assert_allclose(np.stack(steps), full[3:], atol=1e-4)  # each step: the new token only
    assert decoder.past[0].shape[2] == 12  # the cache holds every position so far


@pytest.mark.slow
def test_benchmark_scores_a_language_model_by_its_perplexity(lm_run):
    from bigmodel_cli.evaluation.evaluate import Options, evaluate
    from bigmodel_cli.export.benchmark import benchmark_run

    run = lm_run[0] / "run"
    report = benchmark_run(run, batch_sizes=[1], iterations=3)
    assert set(report["backends"]) == {"pytorch", "onnxruntime-fp32"}  # no int8: a language model exports fp32/fp16
    assert any("int8: skipped" in note for note in report["notes"])
    val = evaluate(run, Options(split="val"))["metrics"]["perplexity"]
    for backend in report["backends"].values():
        assert backend["metric"]["perplexity"] == pytest.approx(val, rel=1e-4)  # the rows are the val split's
