"""Serving an exported generator: `z` sent by the client or drawn on the server from a `seed`, a `label`, PNG out.

    POST /v2/models/digits-dcgan/infer
    {"inputs": [], "parameters": {"seed": 7, "n": 4}, "outputs": [{"name": "image_png"}]}          # 4 PNGs
    {"inputs": [{"name": "z", "shape": [1, 8], "datatype": "FP32", "data": [...]}]}                  # image UINT8
    {"inputs": [], "parameters": {"seed": 7, "label": 3}}                                             # conditional

The contract is the generative export's (docs/generative.md): inputs `z` FP32 [B, latent_dim] and, when the
generator is conditional, `label` INT64 [B]; output `image` UINT8 [B, C, H, W]; metadata `latent_dim`,
`conditional`, `class_names`, and the seed -> z rule, which this module follows exactly:

    z = numpy.random.default_rng(seed).standard_normal((n, latent_dim), dtype=numpy.float32)

so the same seed gives the same z, and the same image bytes, on every call and every server (that runs the same
onnxruntime build on the same kind of CPU: floating-point kernels differ between instruction sets), and the
same images as `bigmodel generate MODEL.onnx --seed S`. Row i of a seed is the same for every n > i.

`image_png` is an extra BYTES output (as `label` is for classifiers) of any model whose `image` output is
UINT8 [B, C, H, W] with 1 or 3 channels: one PNG per image (Pillow, default settings: the same bytes every
call), raw bytes as binary tensor data, base64 text in JSON. Restoration models (`input` UINT8, or FP32
unclipped pixels, -> `image` UINT8) are plain tensors and get `image_png` too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bigmodel_cli.export.generator_spec import LATENT_RULE, encode_png, latents  # the export's rules, numpy only
from bigmodel_cli.serving.protocol import RequestError, TensorSpec

Z_INPUT = "z"
LABEL_INPUT = "label"
IMAGE_OUTPUT = "image"
PNG_OUTPUT = "image_png"
_MAX_SEED = 2**64 - 1


def png_tensor(images: np.ndarray) -> np.ndarray:
    """uint8 [B, C, H, W] -> BYTES [B]: one PNG per image."""
    out = np.empty(len(images), dtype=object)
    for i, image in enumerate(images):
        out[i] = encode_png(image)
    return out


def has_png_output(outputs: list[TensorSpec]) -> bool:
    """Whether `image_png` can be offered: an `image` output UINT8 [B, C, H, W] with C of 1 or 3 (or dynamic)."""
    image = next((s for s in outputs if s.name == IMAGE_OUTPUT), None)
    return (image is not None and image.datatype == "UINT8" and len(image.shape) == 4
            and image.shape[1] in (-1, 1, 3))


@dataclass(frozen=True)
class GeneratorInput:
    """A generator's inputs: `z` [B, latent_dim] sent or drawn from a seed, and `label` [B] when conditional."""

    latent_dim: int
    conditional: bool
    class_names: list[str]
    max_batch_size: int

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def metadata(self) -> dict[str, Any]:
        """How to call it (the `generator` parameter of the model metadata)."""
        out: dict[str, Any] = {
            "latent_dim": self.latent_dim, "conditional": self.conditional,
            "z": f"input '{Z_INPUT}' FP32 [N, {self.latent_dim}], or the request parameter 'seed' (an integer 0 to "
                 f"2^64-1) with 'n' images (default 1, or the length of 'label'); z drawn as {LATENT_RULE}",
            "outputs": f"'{IMAGE_OUTPUT}' UINT8 [N, C, H, W], '{PNG_OUTPUT}' BYTES [N] (one PNG per image)",
        }
        if self.conditional:
            out["label"] = (f"input '{LABEL_INPUT}' INT64 [N], or the request parameter 'label' (one class index for "
                            f"every image, or a list of N); required; classes 0..{self.n_classes - 1}")
        return out

    def complete(self, inputs: dict[str, np.ndarray], parameters: dict[str, Any]) -> dict[str, np.ndarray]:
        """The model's inputs from what a request sent: `z` drawn from `seed` when asked, `label` from the request
        parameter; RequestError(400) naming what is wrong."""
        seed = parameters.get("seed")
        if seed is not None:
            if Z_INPUT in inputs:
                raise RequestError(400, f"send either the input '{Z_INPUT}' or the parameter 'seed', not both")
            if not _is_int(seed) or not 0 <= seed <= _MAX_SEED:
                raise RequestError(400, f"parameter 'seed' must be an integer from 0 to 2^64-1, got {seed!r}")
            n = parameters.get("n")
            if n is None:
                n = len(inputs[LABEL_INPUT]) if LABEL_INPUT in inputs else _label_rows(parameters.get("label"))
            if not _is_int(n) or not 1 <= n <= self.max_batch_size:
                raise RequestError(400, f"parameter 'n' must be an integer from 1 to max_batch_size "
                                        f"{self.max_batch_size}, got {n!r}")
            inputs[Z_INPUT] = latents(seed, n, self.latent_dim)
        elif Z_INPUT not in inputs:
            raise RequestError(400, f"missing input '{Z_INPUT}' (FP32 [N, {self.latent_dim}]): send z, or the request "
                                    f"parameter 'seed' for the server to draw it")
        elif "n" in parameters:
            raise RequestError(400, "parameter 'n' goes with 'seed' (z sent as an input has its own rows)")
        z = inputs[Z_INPUT]
        if not np.isfinite(z).all():
            raise RequestError(400, f"input '{Z_INPUT}' must hold finite numbers (standard normal draws)")
        rows = len(z)
        if not self.conditional:
            if "label" in parameters:
                raise RequestError(400, "parameter 'label': this generator is not conditional; send z or a seed only")
            return inputs
        if "label" in parameters:
            if LABEL_INPUT in inputs:
                raise RequestError(400, f"send either the input '{LABEL_INPUT}' or the parameter 'label', not both")
            inputs[LABEL_INPUT] = self._label_parameter(parameters["label"], rows)
        elif LABEL_INPUT not in inputs:
            raise RequestError(400, f"missing '{LABEL_INPUT}': this generator is conditional on {self.n_classes} "
                                    f"classes ({self._classes()}); send the input '{LABEL_INPUT}' INT64 [{rows}] or "
                                    f"the request parameter 'label'")
        label = inputs[LABEL_INPUT]
        if len(label) != rows:
            raise RequestError(400, f"input '{LABEL_INPUT}' has {len(label)} rows, z has {rows}")
        self._check_range(label.tolist())
        return inputs

    def _label_parameter(self, value: Any, rows: int) -> np.ndarray:
        if _is_int(value):
            value = [value] * rows
        if isinstance(value, list) and value and all(_is_int(v) for v in value):
            if len(value) != rows:
                raise RequestError(400, f"parameter 'label' has {len(value)} classes for {rows} images")
            self._check_range(value)  # on Python ints, before int64 (which 2**70 would overflow)
            return np.asarray(value, dtype=np.int64)
        raise RequestError(400, f"parameter 'label' must be a class index (0..{self.n_classes - 1}) or a list of "
                                f"them, got {value!r}")

    def _check_range(self, labels: list[int]) -> None:
        bad = next((v for v in labels if not 0 <= v < self.n_classes), None)
        if bad is not None:
            raise RequestError(400, f"label {bad} is out of range: classes are 0..{self.n_classes - 1} "
                                    f"({self._classes()})")

    def _classes(self) -> str:
        names = ", ".join(f"{i} {name}" for i, name in enumerate(self.class_names[:10]))
        return names + (" ..." if self.n_classes > 10 else "")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _label_rows(label: Any) -> int:
    """Images a seed draws when the request gives no 'n': one per class of a 'label' list, else one."""
    return len(label) if isinstance(label, list) and label else 1


def generator_input(task: str | None, raw: dict[str, str], inputs: list[TensorSpec], class_names: list[str] | None,
                    max_batch_size: int, where: object) -> GeneratorInput | None:
    """The generator contract of a model (None unless task generation with a `z` input); UsageError when the graph
    and the metadata disagree."""
    import json

    from bigmodel_cli.errors import UsageError

    z = next((s for s in inputs if s.name == Z_INPUT), None)
    if task != "generation" or z is None:
        return None
    if len(z.shape) != 2 or z.datatype not in ("FP32", "FP16", "FP64"):
        raise UsageError(f"{where}: a generator's input '{Z_INPUT}' must be float [batch, latent_dim], this one is "
                         f"{z.datatype} {list(z.shape)}")
    try:
        declared = int(raw["latent_dim"]) if raw.get("latent_dim") not in (None, "", "null") else None
        conditional = bool(json.loads(raw.get("conditional") or "false"))
    except ValueError:
        raise UsageError(f"{where}: metadata 'latent_dim' or 'conditional' is malformed; export the model again") \
            from None
    width = z.shape[1] if z.shape[1] > 0 else declared
    if width is None or (declared is not None and declared != width):
        raise UsageError(f"{where}: metadata latent_dim {declared} does not match the input '{Z_INPUT}' "
                         f"{list(z.shape)}; export the model again")
    has_label = any(s.name == LABEL_INPUT for s in inputs)
    if has_label != conditional or (has_label and not class_names):
        raise UsageError(f"{where}: metadata conditional={json.dumps(conditional)} but the graph "
                         f"{'takes' if has_label else 'has no'} a '{LABEL_INPUT}' input"
                         f"{' (and no class_names)' if has_label and not class_names else ''}; export the model again")
    unknown = [s.name for s in inputs if s.name not in (Z_INPUT, LABEL_INPUT)]
    if unknown:
        raise UsageError(f"{where}: a generator takes '{Z_INPUT}' (and '{LABEL_INPUT}'), this one also {unknown}")
    return GeneratorInput(latent_dim=int(width), conditional=has_label, class_names=list(class_names or []),
                          max_batch_size=max_batch_size)
