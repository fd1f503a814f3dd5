"""Causal language modelling with a pre-trained decoder (GPT-2, Llama...): next-token loss on packed blocks.

    bigmodel prepare-data -r text-gpt-lm --source corpus.txt     # blocks of data.text.max_length tokens
    bigmodel train -r text-gpt-lm                                # val_loss, val_perplexity per epoch
    text = generate_text("runs/text-gpt-lm", "Once upon", max_new_tokens=40, temperature=0.8, top_p=0.95, seed=1)
    text = generate_text("runs/text-gpt-lm/model.onnx", "Once upon")      # the exported decoder, onnxruntime

The step is the mean cross-entropy of every next token of a block; validation averages it over every
validation token (each rank takes blocks r::world) and reports its exponential, the perplexity.
Generation samples one token at a time (temperature, then nucleus/top-p; temperature 0 is greedy) from
the checkpoint with the model's key/value cache, or from the exported ONNX decoder (which recomputes the
sequence each step), seeded: the same seed gives the same text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from bigmodel_cli.errors import UsageError
from bigmodel_cli.evaluation.language_model import next_token_loss, perplexity, split_loss
from bigmodel_cli.tasks.base import Batch, Context, Parts, Split, Step
from bigmodel_cli.training.optim import optimizer_and_schedule


class LanguageModeling:
    name = "language-modeling"
    inference_network = "model"

    def check(self, recipe, data: dict[str, Any]) -> None:
        if recipe.model.name != "hf":
            raise UsageError("task language-modeling fine-tunes a pre-trained decoder: set model.name: hf and "
                             "model.path: a local Hugging Face folder (GPT-2, Llama...)")
        if data.get("kind") != "text":
            raise UsageError(f"task language-modeling needs a text corpus, the prepared data is {data.get('kind')}")

    def metrics(self, recipe, data: dict[str, Any]) -> list[str]:
        return ["val_loss", "val_perplexity"]

    def terms(self, recipe) -> list[str]:
        return ["loss"]

    def build(self, ctx: Context) -> Parts:
        from bigmodel_cli.models.build import build_network
        from bigmodel_cli.models.hf import trainable_summary

        net = build_network(ctx.recipe, ctx.data)
        trainable, total = trainable_summary(net)
        notes = [f"LoRA: {trainable:,} of {total:,} parameters trained"] if ctx.recipe.model.lora else []
        return Parts(networks={"model": net}, inputs=torch.nn.Identity(), notes=notes)

    def optimizers(self, ctx: Context, parts: Parts) -> dict[str, tuple[torch.optim.Optimizer, Any]]:
        return {"model": optimizer_and_schedule(parts.networks["model"], ctx)}

    def training_step(self, parts: Parts, batch: Batch, step: Step) -> None:
        with step.autocast():
            loss = next_token_loss(parts.modules["model"](batch.x), batch.x)
        step.backward(loss, "model")
        step.log(loss=loss)
        step.step_optimizer("model")

    def validate(self, parts: Parts, val: Split, ctx: Context) -> dict[str, float | None]:
        loss, _ = split_loss(parts.networks["model"], val.x, ctx.recipe.train.batch_size, ctx.device, ctx.dist,
                             rows=val.rows(np.arange(len(val))))
        return {"val_loss": loss, "val_perplexity": perplexity(loss)}


# ---------------------------------------------------------------- generation


def sample_next(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """One token id from next-token logits: greedy at temperature 0, else softmax(logits / T) cut to the
    smallest set of tokens whose probability reaches top_p (nucleus sampling)."""
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        keep = order[: int(np.searchsorted(np.cumsum(p[order]), top_p) + 1)]
        q = np.zeros_like(p)
        q[keep] = p[keep]
        p = q / q.sum()
    return int(rng.choice(len(p), p=p))


def _check_options(max_new_tokens: int, temperature: float, top_p: float) -> None:
    if max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens {max_new_tokens}: must be at least 1")
    if temperature < 0:
        raise UsageError(f"--temperature {temperature}: must be 0 (greedy) or more")
    if not 0 < top_p <= 1:
        raise UsageError(f"--top-p {top_p}: must be in (0, 1]")


def _tokenizer(spec: dict[str, Any]):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(spec["tokenizer"])
    tok.no_truncation()
    tok.no_padding()
    return tok


def generate_text(source: str | Path, prompt: str, max_new_tokens: int = 50, temperature: float = 1.0,
                  top_p: float = 1.0, seed: int = 0, checkpoint: str = "best") -> str:
    """The prompt and its continuation, sampled from a language-modelling run (RUN_DIR) or its MODEL.onnx.

    Stops at the end-of-text token, after `max_new_tokens`, or at the model's longest sequence.
    """
    _check_options(max_new_tokens, temperature, top_p)
    source = Path(source)
    decoder = OnnxDecoder(source) if source.suffix.lower() == ".onnx" else CheckpointDecoder(source, checkpoint)
    tok = _tokenizer(decoder.spec)
    ids = list(tok.encode(prompt).ids)
    if not ids:
        raise UsageError("--prompt: the prompt has no tokens; give some text")
    longest = decoder.longest
    if longest is not None and len(ids) >= longest:
        raise UsageError(f"--prompt: {len(ids)} tokens, the model takes at most {longest}; shorten it")
    budget = max_new_tokens if longest is None else min(max_new_tokens, longest - len(ids))
    rng = np.random.default_rng(seed)
    eos = decoder.spec.get("eos_id")
    new: list[int] = []
    logits = decoder.start(ids)
    while True:
        token = sample_next(logits, temperature, top_p, rng)
        if token == eos:
            break
        new.append(token)
        if len(new) == budget:
            break
        logits = decoder.advance(token)
    return tok.decode(ids + new, skip_special_tokens=True)


class CheckpointDecoder:
    """A run's checkpoint (LoRA merged) stepping with the model's key/value cache."""

    def __init__(self, run_dir: Path, which: str):
        from bigmodel_cli.models.hf import merged
        from bigmodel_cli.run import load_network, load_run

        run = load_run(run_dir)
        if run.recipe.task != "language-modeling":
            raise UsageError(f"{run_dir}: a {run.recipe.task} run; text is generated by language-modeling runs")
        net, _, _ = load_network(run, which)
        self.model = merged(net).model.eval()
        self.spec = run.manifest["preprocessing"]["text"]
        self.longest = run.manifest["preprocessing"]["hf"].get("max_positions")
        self.past = None
        import inspect

        # transformers >= 5.20 names the key/value cache `cache` (`past_key_values` before)
        self.cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    @torch.inference_mode()
    def _run(self, ids: list[int]) -> np.ndarray:
        out = self.model(input_ids=torch.tensor([ids]), **{self.cache_arg: self.past}, use_cache=True)
        self.past = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        return out.logits[0, -1].float().numpy()

    def start(self, ids: list[int]) -> np.ndarray:
        self.past = None
        return self._run(ids)

    def advance(self, token: int) -> np.ndarray:
        return self._run([token])


class OnnxDecoder:
    """An exported decoder (`input` ids [1, L] -> `logits` [1, L, vocab]), run over the whole sequence each step."""

    def __init__(self, path: Path):
        from bigmodel_cli.export import metadata
        from bigmodel_cli.inference.session import create_session

        if not path.is_file():
            raise UsageError(f"{path}: no such model file")
        self.session = create_session(path, device="cpu")
        meta = metadata.from_session(self.session, str(path))
        if meta.task != "language-modeling" or not meta.text_preprocessing:
            raise UsageError(f"{path}: not an exported language model (task {meta.task!r}); export a "
                             f"language-modeling run")
        self.spec = meta.text_preprocessing
        self.longest = self.spec.get("max_positions")
        self.ids: list[int] = []

    def _run(self) -> np.ndarray:
        logits = self.session.run(["logits"], {"input": np.asarray([self.ids], dtype=np.int64)})[0]
        return np.asarray(logits[0, -1], dtype=np.float32)

    def start(self, ids: list[int]) -> np.ndarray:
        self.ids = list(ids)
        return self._run()

    def advance(self, token: int) -> np.ndarray:
        self.ids.append(token)
        return self._run()
