"""Serving an exported language model: prompts (BYTES) in, the prompts and their continuations (BYTES) out.

    POST /v2/models/text-gpt-lm/infer
    {"inputs": [{"name": "prompt", "shape": [1], "datatype": "BYTES", "data": ["Once upon"]}],
     "parameters": {"max_new_tokens": 20, "temperature": 0.8, "top_p": 0.95, "seed": 1}}
    -> {"outputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["Once upon a time ..."]}]}

The exported decoder (`input` ids and its key/value cache -> `logits` and the cache) stays the model file; the
server presents it with one input `prompt` BYTES [N] (or [N, 1]) and one output `text` BYTES [N], and samples
each prompt with `inference.text_generation` (the loop of `bigmodel generate --prompt`): the same prompt,
parameters and seed give the same text as `bigmodel generate MODEL.onnx --prompt ... --seed S`, on every call.
Each prompt of a request is sampled on its own (its own generator seeded with `seed`), one step of the export's
key/value cache per new token (an export without a cache runs the whole sequence each step); requests are not
merged into batches.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import numpy as np

from bigmodel_cli.errors import UsageError
from bigmodel_cli.inference.text_generation import OnnxDecoder, Sampling, continue_text, tokenizer
from bigmodel_cli.serving.protocol import RequestError, TensorSpec

PROMPT_INPUT = "prompt"
TEXT_OUTPUT = "text"
DEFAULTS = Sampling()  # as `bigmodel generate --prompt`: 50 new tokens, temperature 1, top_p 1, seed 0
_TYPES = {"max_new_tokens": int, "temperature": float, "top_p": float, "seed": int}


@dataclass(frozen=True)
class PromptInput:
    """A language model's text interface: the export's tokenizer and longest sequence."""

    spec: dict[str, Any]  # the export's `text_preprocessing` (tokenizer, eos_id, max_positions)

    @cached_property
    def tokenizer(self) -> Any:
        """The export's tokenizer, parsed once (not on every request)."""
        return tokenizer(self.spec)

    @property
    def longest(self) -> int | None:
        value = self.spec.get("max_positions")
        return int(value) if value is not None else None

    def tensors(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """The inputs and outputs clients see (the decoder's own `input`/`logits` stay inside)."""
        return [TensorSpec(PROMPT_INPUT, "BYTES", (-1,))], [TensorSpec(TEXT_OUTPUT, "BYTES", (-1,))]

    def sampling(self, parameters: dict[str, Any]) -> Sampling:
        """The request's sampling options (request parameters, defaults as the CLI's); RequestError(400)."""
        values: dict[str, Any] = {}
        for key, kind in _TYPES.items():
            if key not in parameters:
                continue
            value = parameters[key]
            ok = (isinstance(value, int) and not isinstance(value, bool)) if kind is int else \
                (isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value))
            if not ok:
                raise RequestError(400, f"parameter '{key}': expected {'an integer' if kind is int else 'a number'}, "
                                        f"got {value!r}")
            values[key] = kind(value)
        sampling = Sampling(**{**asdict(DEFAULTS), **values})
        try:
            sampling.check(flag=lambda name: f"parameter '{name}'")
        except UsageError as e:
            raise RequestError(400, str(e)) from None
        return sampling

    def metadata(self) -> dict[str, Any]:
        """The `text_generation` parameter of the model metadata: how to ask, and the defaults."""
        return {"input": PROMPT_INPUT, "output": TEXT_OUTPUT, "longest_sequence": self.longest,
                "parameters": asdict(DEFAULTS), "eos_id": self.spec.get("eos_id"),
                "sampling": "temperature, then nucleus (top_p); temperature 0 is greedy; "
                            "numpy.random.default_rng(seed) per prompt"}

    def generate(self, session: Any, prompts: np.ndarray, sampling: Sampling) -> dict[str, np.ndarray]:
        """Each prompt and its continuation (blocking: call it from a worker thread); RequestError(400) for a
        prompt without tokens or as long as the model's longest sequence."""
        tok, decoder = self.tokenizer, OnnxDecoder(session, self.spec)  # `start` begins each prompt afresh
        texts = np.empty(len(prompts), dtype=object)
        for i, prompt in enumerate(prompts):
            try:
                texts[i] = continue_text(decoder, tok, str(prompt), sampling,
                                         where=f"input '{PROMPT_INPUT}' string {i + 1}")
            except UsageError as e:
                raise RequestError(400, str(e)) from None
        return {TEXT_OUTPUT: texts}
