"""The generator contract shared by export, `bigmodel generate`, training's sample grids, eval and servers:
the seed -> z rule, labels, the model's spec from its metadata, input checks and PNG bytes. numpy (and Pillow
for PNG) only: a server reproduces z for a seed without torch.

    z = latents(seed=0, n=64, latent_dim=64)
    spec = GeneratorSpec.from_metadata(metadata.read(Path("model.onnx")).raw)
    z, label = check_inputs(spec, z, label)    # exit-2 errors for a wrong z width, a missing or unknown label
    png = encode_png(images[0])
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel_cli.errors import UsageError

# metadata keys of generators and restoration models (besides export.metadata's own)
LATENT_DIM = "latent_dim"
CONDITIONAL = "conditional"
IMAGE_SHAPE = "image_shape"
Z_DISTRIBUTION = "z_distribution"
Z_SEED_RULE = "z_seed_rule"
LABEL_RULE = "label_rule"
OUTPUT_DTYPE = "output_dtype"

LATENT_RULE = "numpy.random.default_rng(seed).standard_normal((n, latent_dim), dtype=numpy.float32)"
LABELS_RULE = ("label of image i: the label asked for (a server requires it); bigmodel generate and eval without one: "
               "i % len(class_names)")
VERIFY_ROWS = 256  # latents (or validation images) compared at most


def latents(seed: int, n: int, latent_dim: int) -> np.ndarray:
    """z for `n` images from `seed`: standard normal float32 [n, latent_dim], row i the same for any n > i."""
    return np.random.default_rng(seed).standard_normal((n, latent_dim), dtype=np.float32)


def class_labels(n: int, n_classes: int, label: int | None = None) -> np.ndarray:
    """int64 [n]: `label` for every image, or the classes in turn (0, 1, ..., K-1, 0, ...)."""
    if label is not None:
        return np.full(n, label, dtype=np.int64)
    return np.arange(n, dtype=np.int64) % max(n_classes, 1)


@dataclass(frozen=True)
class GeneratorSpec:
    """How to call an exported generator or restoration model."""

    task: str  # generation | restoration
    image_shape: list[int]  # [C, H, W] of the output (and of the input of a restoration model)
    latent_dim: int | None = None  # generation: the width of z
    conditional: bool = False  # generation: takes `label` INT64 [B]
    class_names: list[str] | None = None

    @classmethod
    def from_metadata(cls, raw: Mapping[str, str], where: str = "model") -> GeneratorSpec:
        """From an ONNX model's metadata_props (`metadata.read(path).raw`, or a session's custom_metadata_map)."""
        task = raw.get("task")
        if task not in ("generation", "restoration"):
            raise UsageError(f"{where}: not a generator or restoration model (task {task!r}); export a run of task "
                             f"generation or restoration with bigmodel export")
        try:
            shape = json.loads(raw[IMAGE_SHAPE])
            names = json.loads(raw["class_names"]) if raw.get("class_names") else None
            latent = int(raw[LATENT_DIM]) if raw.get(LATENT_DIM) not in (None, "null") else None
            conditional = json.loads(raw.get(CONDITIONAL, "false"))
        except (KeyError, ValueError) as e:
            raise UsageError(f"{where}: generator metadata is missing or malformed ({e}); export the model again") \
                from None
        return cls(task, list(shape), latent, bool(conditional), names)

    def props(self) -> dict[str, str]:
        """The metadata_props this spec adds to a model (every value a string)."""
        out = {IMAGE_SHAPE: json.dumps(self.image_shape), OUTPUT_DTYPE: "uint8"}
        if self.task == "generation":
            out.update({LATENT_DIM: str(self.latent_dim), CONDITIONAL: json.dumps(self.conditional),
                        Z_DISTRIBUTION: "standard_normal", Z_SEED_RULE: LATENT_RULE, LABEL_RULE: LABELS_RULE})
        return out

    @property
    def n_classes(self) -> int:
        return len(self.class_names or [])


def check_inputs(spec: GeneratorSpec, z: Any, label: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
    """z as float32 [B, latent_dim] and label as int64 [B] (None when unconditional), or exit 2 naming the fault."""
    z = np.asarray(z)
    if z.ndim != 2 or z.shape[1] != spec.latent_dim or not len(z):
        raise UsageError(f"z has shape {list(z.shape)}; this generator takes z FP32 [B, {spec.latent_dim}], B >= 1")
    if not np.issubdtype(z.dtype, np.floating):
        raise UsageError(f"z has type {z.dtype}; it must hold floating-point numbers (standard normal draws)")
    with np.errstate(over="ignore"):
        z = np.ascontiguousarray(z, dtype=np.float32)
    if not np.isfinite(z).all():  # after the cast: 1e300 in float64 is inf in float32
        raise UsageError("z must hold finite numbers in float32 (standard normal draws)")
    if not spec.conditional:
        if label is not None:
            raise UsageError("label: this generator is not conditional; send z only")
        return z, None
    names = spec.class_names or []
    if label is None:
        raise UsageError(f"label INT64 [B] is required: this generator is conditional on {len(names)} classes "
                         f"(0..{len(names) - 1}: {', '.join(names[:10])}{' ...' if len(names) > 10 else ''})")
    label = np.asarray(label)
    if label.ndim == 0:
        label = np.full(len(z), label)
    if label.shape != (len(z),) or not np.issubdtype(label.dtype, np.integer):
        raise UsageError(f"label has shape {list(label.shape)} and type {label.dtype}; expected INT64 [{len(z)}], one "
                         "class index per z row")
    bad = label[(label < 0) | (label >= len(names))]
    if len(bad):
        raise UsageError(f"label {int(bad[0])} is out of range: classes are 0..{len(names) - 1}")
    return z, label.astype(np.int64)


# ---------------------------------------------------------------- PNG


def encode_png(image: np.ndarray) -> bytes:
    """One uint8 image [C, H, W] (C = 1 or 3) as PNG bytes (Pillow, default settings: the same bytes every call)."""
    import io

    from PIL import Image

    array = image[0] if image.shape[0] == 1 else np.transpose(image, (1, 2, 0))
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def grid(images: np.ndarray, columns: int | None = None, pad: int = 1) -> np.ndarray:
    """uint8 [N, C, H, W] -> one uint8 image [C, rows*(H+pad)-pad, columns*(W+pad)-pad] (pad pixels are 0)."""
    n, channels, height, width = images.shape
    columns = columns or max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / columns))
    out = np.zeros((channels, rows * (height + pad) - pad, columns * (width + pad) - pad), dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        out[:, r * (height + pad):r * (height + pad) + height, c * (width + pad):c * (width + pad) + width] = image
    return out


def save_grid(images: np.ndarray, dest: Path, columns: int | None = None, scale: int | None = None) -> Path:
    """A PNG grid of uint8 images, enlarged (nearest) so that small images stay visible; written atomically."""
    from bigmodel_cli import atomic

    picture = grid(images, columns)
    scale = scale or max(1, 256 // max(picture.shape[1:]))
    if scale > 1:
        picture = picture.repeat(scale, axis=1).repeat(scale, axis=2)
    return atomic.write_bytes(dest, encode_png(picture))


def write_images(images: np.ndarray, out: Path) -> list[Path]:
    """`out` ending in .png: one grid; else a folder of 00000.png, 00001.png, ... (swapped in whole)."""
    from bigmodel_cli import atomic

    out = Path(out)
    if out.suffix.lower() == ".png":
        if not out.parent.is_dir():
            raise UsageError(f"--out {out}: folder {out.parent} does not exist")
        return [save_grid(images, out)]
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file; give a folder or a .png name")
    if out.exists():  # the folder is swapped in whole: only a previous generate's PNGs may be replaced
        if out.resolve() in (Path.cwd(), *Path.cwd().parents):
            raise UsageError(f"--out {out}: the working directory or a folder above it; give a new folder")
        other = next((p.name for p in sorted(out.iterdir()) if not re.fullmatch(r"\d{5}\.png", p.name)), None)
        if other is not None:
            raise UsageError(f"--out {out}: the folder holds {other}, which generate did not write; give a new or "
                             "empty folder (generate replaces the folder whole)")
    with atomic.atomic_dir(out) as tmp:
        for i, image in enumerate(images):
            (tmp / f"{i:05d}.png").write_bytes(encode_png(image))
    return [out / f"{i:05d}.png" for i in range(len(images))]
