"""Sampling text from a language model, one token at a time: the loop `bigmodel generate --prompt` and the
server's text generation share (torch-free: the server never imports torch).

    decoder = OnnxDecoder.open(Path("runs/text-gpt-lm/model.onnx"))
    text = continue_text(decoder, tokenizer(decoder.spec), "Once upon", Sampling(max_new_tokens=40, seed=1))

Each step draws the next token from the decoder's last logits: greedy at temperature 0, else softmax(logits / T)
cut to the smallest set of tokens whose probability reaches top_p (nucleus sampling), with
`numpy.random.default_rng(seed)`: the same seed gives the same text. Generation stops at the end-of-text token,
after `max_new_tokens`, or at the model's longest sequence. A decoder is anything with `spec` (the export's
`text_preprocessing`), `longest` (positions, or None), `start(ids) -> logits` and `advance(token) -> logits`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel_cli.errors import UsageError


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 50
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def check(self, flag=lambda name: f"--{name.replace('_', '-')}") -> None:
        """UsageError naming the option (`flag(name)`: a CLI flag by default) that is out of range."""
        if self.max_new_tokens < 1:
            raise UsageError(f"{flag('max_new_tokens')} {self.max_new_tokens}: must be at least 1")
        if self.temperature < 0:
            raise UsageError(f"{flag('temperature')} {self.temperature}: must be 0 (greedy) or more")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"{flag('top_p')} {self.top_p}: must be in (0, 1]")
        if self.seed < 0:
            raise UsageError(f"{flag('seed')} {self.seed}: must be 0 or more")


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


def tokenizer(spec: dict[str, Any]):
    """The export's tokenizer (`text_preprocessing.tokenizer`), without truncation or padding."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(spec["tokenizer"])
    tok.no_truncation()
    tok.no_padding()
    return tok


def continue_text(decoder, tok, prompt: str, sampling: Sampling, where: str = "--prompt") -> str:
    """The prompt and its continuation; UsageError naming `where` for a prompt without tokens or too long."""
    ids = list(tok.encode(prompt).ids)
    if not ids:
        raise UsageError(f"{where}: the prompt has no tokens; give some text")
    longest = decoder.longest
    if longest is not None and len(ids) >= longest:
        raise UsageError(f"{where}: {len(ids)} tokens, the model takes at most {longest}; shorten it")
    budget = sampling.max_new_tokens if longest is None else min(sampling.max_new_tokens, longest - len(ids))
    rng = np.random.default_rng(sampling.seed)
    eos = decoder.spec.get("eos_id")
    new: list[int] = []
    logits = decoder.start(ids)
    while True:
        token = sample_next(logits, sampling.temperature, sampling.top_p, rng)
        if token == eos:
            break
        new.append(token)
        if len(new) == budget:
            break
        logits = decoder.advance(token)
    return tok.decode(ids + new, skip_special_tokens=True)


class OnnxDecoder:
    """An exported decoder (`input` ids [1, L] -> `logits` [1, L, vocab]). With its key/value cache (the
    `past.{i}.key/value` inputs of `export.hf.CachedDecoder`) each step runs the new token only; an export without
    one runs the whole sequence each step. It holds the sequence so far: one per thread, `start` begins a new one
    (the session may be shared between threads)."""

    def __init__(self, session: Any, spec: dict[str, Any]):
        self.session = session
        self.spec = spec
        self.longest = spec.get("max_positions")
        self.cache = sorted((i.name for i in session.get_overridable_initializers() if i.name.startswith("past.")),
                            key=lambda n: (int(n.split(".")[1]), n.split(".")[2] != "key"))
        self.outputs = ["logits", *[n.replace("past", "present", 1) for n in self.cache]]
        self.ids: list[int] = []
        self.past: list[np.ndarray] = []

    @classmethod
    def open(cls, path: Path) -> OnnxDecoder:
        from bigmodel_cli.export import metadata
        from bigmodel_cli.inference.session import create_session

        if not path.is_file():
            raise UsageError(f"{path}: no such model file")
        session = create_session(path, device="cpu")
        meta = metadata.from_session(session, str(path))
        if meta.task != "language-modeling" or not meta.text_preprocessing:
            raise UsageError(f"{path}: not an exported language model (task {meta.task!r}); export a "
                             f"language-modeling run")
        return cls(session, meta.text_preprocessing)

    def _run(self, new: list[int]) -> np.ndarray:
        if not self.cache:  # no cache: the whole sequence again
            logits = self.session.run(["logits"], {"input": np.asarray([self.ids], dtype=np.int64)})[0]
            return np.asarray(logits[0, -1], dtype=np.float32)
        feeds = {"input": np.asarray([new], dtype=np.int64), **dict(zip(self.cache, self.past, strict=False))}
        logits, *self.past = self.session.run(self.outputs, feeds)
        return np.asarray(logits[0, -1], dtype=np.float32)

    def start(self, ids: list[int]) -> np.ndarray:
        self.ids, self.past = list(ids), []
        return self._run(self.ids)

    def advance(self, token: int) -> np.ndarray:
        self.ids.append(token)
        return self._run([token])
