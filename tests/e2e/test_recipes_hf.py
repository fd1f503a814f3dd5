"""The pre-trained transformer recipes through the real commands, on tiny models written in the HF layout:

    text-bert-finetune: prepare-data (the folder's tokenizer) -> train -> eval -> export (verified) -> serve raw
                        strings (the tokenizer travels in the model's metadata), checked against onnxruntime
    text-gpt-lm:        prepare-data (a corpus packed into blocks) -> train -> eval (perplexity gate) -> export
                        -> generate -> serve (a prompt in, the same text out, through tritonclient)

The LoRA variant, decoders as classifiers and generation are tested in-process in tests/unit/hf.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "hf"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))

from hf_tiny import write_bert, write_corpus, write_gpt2, write_labelled  # noqa: E402
from recipe_pipeline import run_recipe  # noqa: E402
from test_pipeline import http  # noqa: E402
from test_serve import Server  # noqa: E402

from bigmodel_cli.data.preprocess import apply_text  # noqa: E402

FAST = ["data.text.max_length=24", "train.batch_size=8", "train.epochs=3", "train.optimizer.lr=0.005",
        "train.head_lr=null", "train.scheduler.name=constant", "train.scheduler.warmup_epochs=0"]


@pytest.mark.slow
def test_text_bert_finetune_recipe_serves_raw_strings(cli, tmp_path: Path) -> None:
    model = write_bert(tmp_path / "models" / "bert")
    source = write_labelled(tmp_path / "reviews.csv", 160)
    result = run_recipe(cli, tmp_path, "text-bert-finetune", source=str(source),
                        sets=[*FAST, f"model.path={model}", "eval.fail_under={accuracy: 0.75}"])
    assert result.eval["metrics"]["accuracy"] >= 0.75 and result.eval["gates"][0]["passed"]
    spec = result.manifest["preprocessing"]["text"]
    texts = ["a great film with a superb cast", "dull plot and a weak ending", ""]
    ids = apply_text(spec, texts).astype(np.int64)
    session = ort.InferenceSession(str(result.run / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = session.run(["probabilities"], {"input": ids})[0]
    assert list(expected.argmax(axis=1)[:2]) == [1, 0]  # positive, negative

    server = Server(str(result.run), "--port", "0", "--device", "cpu")
    try:
        status, answer = http(f"http://{server.url}/v2/models/text-bert-finetune/infer", {"inputs": [
            {"name": "input", "shape": [len(texts), 1], "datatype": "BYTES", "data": [[t] for t in texts]}],
            "outputs": [{"name": "probabilities"}, {"name": "label"}]})
        assert status == 200, answer
        probabilities, label = answer["outputs"]
        np.testing.assert_allclose(np.array(probabilities["data"]).reshape(expected.shape), expected, atol=1e-5)
        assert label["data"][:2] == ["positive", "negative"]
    finally:
        assert server.stop() == 0


@pytest.mark.slow
def test_text_gpt_lm_recipe(cli, tmp_path: Path) -> None:
    model = write_gpt2(tmp_path / "models" / "gpt2")
    source = write_corpus(tmp_path / "corpus.txt", 80)
    sets = ["data.text.max_length=32", "train.batch_size=8", "train.accumulate=1", "train.epochs=1",
            "train.optimizer.lr=0.005", "data.split.val=0.15", "data.split.test=0.15", f"model.path={model}"]
    set_args = [a for s in sets for a in ("--set", s)]
    prepared = cli("prepare-data", "-r", "text-gpt-lm", "--source", str(source), *set_args, "--json")
    assert prepared.code == 0, prepared.stderr
    assert prepared.json()["manifest"]["task"] == "language-modeling"
    trained = cli("train", "-r", "text-gpt-lm", *set_args, "--json")
    assert trained.code == 0, trained.stderr
    assert {"val_loss", "val_perplexity"} <= set(trained.json()["last_metrics"])
    run = tmp_path / "runs" / "text-gpt-lm"
    gated = cli("eval", str(run), "--fail-over", "perplexity=1.5", "--json")
    assert gated.code == 3 and "perplexity" in gated.stderr  # a tiny model is far above 1.5
    exported = cli("export", str(run), "--json")
    assert exported.code == 0, exported.stderr
    assert exported.json()["verification"]["passed"] and exported.json()["outputs"] == ["logits"]

    generated = cli("generate", str(run / "model.onnx"), "--prompt", "one two", "--max-new-tokens", "6",
                    "--temperature", "0.8", "--seed", "3", "--json")
    assert generated.code == 0, generated.stderr
    import tritonclient.http as httpclient

    server = Server(str(run), "--port", "0", "--device", "cpu")
    try:  # the served decoder answers a BYTES prompt (tritonclient's binary tensor data) with the same text
        client = httpclient.InferenceServerClient(url=server.url)
        prompt = httpclient.InferInput("prompt", [1], "BYTES")
        prompt.set_data_from_numpy(np.array(["one two"], dtype=object))
        result = client.infer("text-gpt-lm", [prompt], parameters={"max_new_tokens": 6, "temperature": 0.8,
                                                                    "seed": 3})
        assert result.as_numpy("text")[0].decode() == generated.json()["text"]
    finally:
        assert server.stop() == 0
