"""The served model: an onnxruntime session, its tensors, the export's metadata, and batched runs.

    model = LoadedModel.load(Path("runs/digits-cnn/model.onnx"), device="cpu", threads=2)
    rows = model.run_batch({"input": x})        # every output, row-aligned with x

`run_batch` is what the dynamic batcher calls with the rows of several requests stacked; the model is
checked at load (a batch-2 warm-up) to really be row-wise, otherwise requests are never merged.

A text model (an export with the `text_preprocessing` metadata: the tokenizer fitted by prepare-data)
takes token ids or raw strings for its input; `signature.text` tokenises with that tokenizer. A generator
(task generation, input `z`) takes z or a `seed` request parameter, and a `label` (`generator.py`); a language
model takes prompts (BYTES) and answers their continuations (`prompts.py`); a model
with an `image` UINT8 output also answers PNG bytes (`image_png`).

The session comes from `inference.session.create_session` (no spinning: the pool's idle threads would take
the CPU the event loop needs) and the metadata is read with `export.metadata`, the owners of those contracts.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel_cli.errors import UsageError, first_line
from bigmodel_cli.export import metadata as export_metadata
from bigmodel_cli.serving import generator as generators
from bigmodel_cli.serving.prompts import PROMPT_INPUT, PromptInput
from bigmodel_cli.serving.protocol import (
    LABEL_OUTPUT,
    ORT_V2,
    PNG_OUTPUT,
    V2_NUMPY,
    InferRequest,
    ModelSignature,
    RequestError,
    TensorSpec,
    TextInput,
    labels,
)
from bigmodel_cli.serving.raw import raw_input

MODEL_VERSION = "1"
PLATFORM = "onnxruntime_onnx"


def _spec(node: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (node.shape or []))
    return TensorSpec(node.name, ORT_V2.get(node.type, node.type), shape)


class LoadedModel:
    """An onnxruntime session with its name, version "1", export metadata and tensor specs.

    `ready` turns true once warm-up inferences (zeros, batch 1 and 2) have run; `batchable` says whether
    rows of different requests may share one `session.run`.
    """

    def __init__(self, session: Any, *, name: str, path: Path | None = None, max_batch_size: int = 32) -> None:
        self.session = session
        self.name = name
        self.version = MODEL_VERSION
        self.path = path
        self.max_batch_size = max_batch_size
        self.meta = export_metadata.from_session(session, str(path or name))
        self.metadata: dict[str, str] = self.meta.raw
        self.prompt = _prompt_input(self.meta, session, path or name)
        if self.prompt is not None:  # a decoder: prompts in, text out (its ids and logits stay inside)
            self.inputs, self.outputs = self.prompt.tensors()
            self.input_dtypes = {PROMPT_INPUT: np.dtype(object)}
            self.text = self.generator = self.raw = None
        else:
            self.inputs = [_spec(node) for node in session.get_inputs()]
            self.outputs = [_spec(node) for node in session.get_outputs()]
            self.input_dtypes = {s.name: V2_NUMPY[s.datatype] for s in self.inputs if s.datatype in V2_NUMPY}
            self.text = _text_input(self.meta, self.inputs, path or name)
            self.generator = generators.generator_input(self.task, self.metadata, self.inputs, self.class_names,
                                                        max_batch_size, path or name)
            self.raw = raw_input(self.meta, self.inputs, self.input_dtypes, path, max_batch_size)
        self.providers: list[str] = list(session.get_providers())
        self.batchable = False
        self.ready = False
        self.signature = ModelSignature(
            inputs=self.inputs, outputs=self.outputs, input_dtypes=self.input_dtypes,
            max_batch_size=max_batch_size, class_names=self.class_names, has_label=self._score_output() is not None,
            text=self.text, generator=self.generator, has_png=generators.has_png_output(self.outputs), raw=self.raw,
            prompt=self.prompt,
        )

    @classmethod
    def load(cls, path: Path, *, name: str | None = None, device: str = "auto", max_batch_size: int = 32,
             threads: int = 0) -> LoadedModel:
        """Open `path` with onnxruntime and warm it up; UsageError when it cannot be loaded or run."""
        if max_batch_size < 1:
            raise UsageError(f"--max-batch-size {max_batch_size}: must be at least 1")
        from bigmodel_cli.inference.session import create_session

        session = create_session(Path(path), device, threads, spinning=False)
        recipe = session.get_modelmeta().custom_metadata_map.get(export_metadata.RECIPE)
        model = cls(session, name=name or recipe or Path(path).stem, path=Path(path), max_batch_size=max_batch_size)
        check_name(model.name)
        unsupported = [f"{s.name} ({s.datatype})" for s in model.inputs if s.name not in model.input_dtypes]
        if unsupported or not model.inputs:
            raise UsageError(f"{path}: serving needs numeric inputs, this model has {unsupported or 'none'}")
        model.warm_up()
        return model

    def warm_up(self) -> None:
        """Inference on zeros (dynamic dims as 1), so the first request does not pay for allocation; then a
        batch of 2 to learn whether every output is row-aligned with the input (needed to merge requests)."""
        try:
            if self.text is not None:  # builds the tokenizer now, not on the first request
                self.text.tokenize(["warm up"])
            if self.prompt is not None:  # one greedy token of a one-token prompt
                self.prompt.generate(self.session, np.array(["warm up"], dtype=object),
                                     self.prompt.sampling({"max_new_tokens": 1, "temperature": 0}))
                self.ready = True
                return
            self.session.run(None, self._zeros(1))
        except Exception as e:
            raise UsageError(f"{self.path or self.name}: warm-up inference failed: {first_line(e)}") from e
        self.batchable = self.max_batch_size > 1 and self._rows_are_independent()
        self.ready = True

    def _zeros(self, rows: int) -> dict[str, np.ndarray]:
        """Zeros as requests will come: dynamic dims as 1, text ids at their padded length."""
        zeros = {s.name: np.zeros([rows] + [1 if d < 0 else d for d in s.shape[1:]], self.input_dtypes[s.name])
                 for s in self.inputs}
        if self.text is not None:
            zeros[self.text.name] = np.full((rows, self.text.max_length), self.text.pad_id,
                                            self.input_dtypes[self.text.name])
        return zeros

    def _rows_are_independent(self) -> bool:
        if any(s.shape[:1] != (-1,) for s in self.inputs):
            return False
        try:
            values = self.session.run(None, self._zeros(2))
        except Exception:
            return False
        return all(np.ndim(v) >= 1 and np.shape(v)[0] == 2 for v in values)

    @property
    def task(self) -> str:
        if self.meta.task:
            return self.meta.task
        names = {s.name for s in self.outputs}
        return "classification" if "probabilities" in names else "regression" if "prediction" in names else "unknown"

    @property
    def class_names(self) -> list[str] | None:
        value = self.meta.class_names
        return [str(c) for c in value] if isinstance(value, list) else None

    def _score_output(self) -> str | None:
        """The output the `label` output is the argmax of: probabilities (or logits) of a classifier."""
        if self.task != "classification":
            return None
        names = [s.name for s in self.outputs]
        return next((n for n in ("probabilities", "logits") if n in names), None)

    def metadata_json(self) -> dict[str, Any]:
        """The V2 model metadata document (the `label` output listed for classifiers)."""
        parameters: dict[str, Any] = {"task": self.task, "class_names": self.class_names}
        for key in (export_metadata.RECIPE, export_metadata.BIGMODEL_VERSION):
            if key in self.metadata:
                parameters[key] = self.metadata[key]
        if self.text is not None:  # `inputs` stays the real tensor (ids); strings are accepted too
            parameters["text_input"] = self._text_metadata()
        if self.generator is not None:  # `inputs` stay z (and label); both may come from request parameters
            parameters["generator"] = self.generator.metadata()
        if self.raw is not None:  # what the input tensor means, and the raw forms (rows, columns, image files)
            parameters["raw_input"] = self.raw.metadata()
        if self.prompt is not None:  # prompts in, text out: the sampling parameters and their defaults
            parameters["text_generation"] = self.prompt.metadata()
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": PLATFORM,
            "inputs": [s.metadata() for s in self.inputs],
            "outputs": [s.metadata() for s in self._all_outputs()],
            "parameters": parameters,
        }

    def config_json(self) -> dict[str, Any]:
        """A Triton-style model configuration (dims without the batch dimension), as perf_analyzer reads it."""
        config: dict[str, Any] = {
            "name": self.name,
            "platform": PLATFORM,
            "backend": "onnxruntime",
            "max_batch_size": self.max_batch_size,
            "input": [s.config() for s in self.inputs],
            "output": [s.config() for s in self._all_outputs()],
        }
        if self.batchable:
            config["dynamic_batching"] = {}
        if self.text is not None:
            config["parameters"] = {"text_input": {"string_value": json.dumps(self._text_metadata())}}
        if self.generator is not None:  # Triton's `optional`: z may be drawn from a seed, label given as a parameter
            for entry in config["input"]:
                entry["optional"] = True
            config["parameters"] = {"generator": {"string_value": json.dumps(self.generator.metadata())}}
        if self.raw is not None:
            config["parameters"] = {"raw_input": {"string_value": json.dumps(self.raw.metadata())}}
        if self.prompt is not None:
            config["parameters"] = {"text_generation": {"string_value": json.dumps(self.prompt.metadata())}}
        return config

    def _text_metadata(self) -> dict[str, Any]:
        assert self.text is not None
        datatype = next(s.datatype for s in self.inputs if s.name == self.text.name)
        return self.text.metadata(datatype)

    def _all_outputs(self) -> list[TensorSpec]:
        label = [TensorSpec(LABEL_OUTPUT, "BYTES", (-1,))] if self.signature.has_label else []
        png = [TensorSpec(PNG_OUTPUT, "BYTES", (-1,))] if self.signature.has_png else []
        return self.outputs + label + png

    def run_batch(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One `session.run` returning every output (blocking: call it from a worker thread)."""
        try:
            values = self.session.run(None, inputs)
        except Exception as e:  # validated input: what is left is on our side (memory, device)
            raise RequestError(500, f"inference failed: {first_line(e)}") from e
        return {spec.name: value for spec, value in zip(self.outputs, values, strict=True)}

    def generate(self, request: InferRequest) -> dict[str, np.ndarray]:
        """A language model's answer: each prompt and its continuation (blocking: call it from a worker thread)."""
        assert self.prompt is not None and request.sampling is not None
        return self.prompt.generate(self.session, request.inputs[PROMPT_INPUT], request.sampling)

    def with_extras(self, results: dict[str, np.ndarray], wanted: list[str]) -> dict[str, np.ndarray]:
        """`results` plus the `label` (class names) and `image_png` (PNG bytes) outputs when `wanted` asks for them."""
        score = self._score_output()
        if LABEL_OUTPUT in wanted and score is not None:
            results = {**results, LABEL_OUTPUT: labels(results[score], self.class_names)}
        if PNG_OUTPUT in wanted and self.signature.has_png:
            results = {**results, PNG_OUTPUT: generators.png_tensor(results[generators.IMAGE_OUTPUT])}
        return results


def _text_input(meta: export_metadata.ExportMetadata, inputs: list[TensorSpec], where: object) -> TextInput | None:
    """The tokenizer of a text export (None for other models); UsageError when the metadata is unusable."""
    key = export_metadata.TEXT_PREPROCESSING
    if key not in meta.raw:
        return None
    spec = meta.text_preprocessing
    keys = ("tokenizer", "max_length", "vocab_size", "pad_id")
    if not isinstance(spec, dict) or any(k not in spec for k in keys):
        raise UsageError(f"{where}: metadata '{key}' is not a text spec with {', '.join(keys)}; "
                         f"export the run again")
    if len(inputs) != 1 or len(inputs[0].shape) != 2 or V2_NUMPY.get(inputs[0].datatype, np.dtype("f4")).kind != "i":
        raise UsageError(f"{where}: metadata '{key}' needs one integer input [batch, sequence], the model "
                         f"has {[f'{s.name} {s.datatype} {list(s.shape)}' for s in inputs]}")
    from bigmodel_cli.data.preprocess import apply_text

    info = {"tokenizer": spec.get("tokenizer_kind"), "lowercase": spec.get("lowercase")}
    return TextInput(name=inputs[0].name, max_length=int(spec["max_length"]), vocab_size=int(spec["vocab_size"]),
                     pad_id=int(spec["pad_id"]), tokenize=partial(apply_text, spec), info=info)


def _prompt_input(meta: export_metadata.ExportMetadata, session: Any, where: object) -> PromptInput | None:
    """A language model's text interface (None for other models); UsageError when the export is not one."""
    if meta.task != "language-modeling":
        return None
    spec = meta.text_preprocessing
    inputs, outputs = session.get_inputs(), [o.name for o in session.get_outputs()]
    if not isinstance(spec, dict) or "tokenizer" not in spec or len(inputs) != 1 or inputs[0].name != "input" \
            or "logits" not in outputs:
        raise UsageError(f"{where}: a language model needs its export's tokenizer (metadata 'text_preprocessing'), "
                         f"one input 'input' (token ids) and a 'logits' output; export the run again")
    return PromptInput(spec)


def check_name(name: str) -> None:
    if not name or "/" in name or name.strip() != name:
        raise UsageError(f"model name {name!r}: must be non-empty, without '/' or surrounding spaces")
