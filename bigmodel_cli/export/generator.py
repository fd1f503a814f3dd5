"""Generators and restoration models as ONNX, and the contract that `export`, `generate` and `serve` share.

    bigmodel export runs/digits-dcgan          # -> model.onnx: z FP32 [B, zdim] (+ label INT64 [B]) -> image UINT8
    bigmodel export runs/digits-denoise        # -> model.onnx: input UINT8 [B, C, H, W] -> image UINT8 [B, C, H, W]
    bigmodel generate runs/digits-dcgan --n 64 --seed 0 --out grid.png

    z = latents(seed=0, n=64, latent_dim=64)   # the seed -> z rule, numpy only (servers reproduce it without torch)
    spec = GeneratorSpec.from_metadata(metadata.read(Path("model.onnx")).raw)
    z, label = check_inputs(spec, z, label)    # exit-2 errors for a wrong z width, a missing or unknown label

The graph (`export_generator`) is the EMA generator of a GAN (or the VAE's decoder, or the
restoration network) in eval mode with its spectral norm baked in, followed by the pixel mapping
and rounding to uint8, so that clients get images, not tensors to post-process. Its
`metadata_props` (written with `export.metadata`'s writer) say how to call it: task, latent_dim,
conditional, class_names, input_shape ([latent_dim] or [C, H, W]), image_shape, the z
distribution and the seed -> z rule. Verification compares the float pixels before rounding
with PyTorch (max abs error on [0, 1]) and the uint8 images (share of identical pixels).

This module imports numpy only at the top: the contract (latents, labels, checks, PNG) needs no torch.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel_cli.errors import JobFailed, UsageError

# metadata keys of generators and restoration models (besides export.metadata's own)
LATENT_DIM = "latent_dim"
CONDITIONAL = "conditional"
IMAGE_SHAPE = "image_shape"
Z_DISTRIBUTION = "z_distribution"
Z_SEED_RULE = "z_seed_rule"
LABEL_RULE = "label_rule"
OUTPUT_DTYPE = "output_dtype"

LATENT_RULE = "numpy.random.default_rng(seed).standard_normal((n, latent_dim), dtype=numpy.float32)"
LABELS_RULE = "label of image i: the label asked for, else i % len(class_names)"
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
    if z.ndim != 2 or z.shape[1] != spec.latent_dim:
        raise UsageError(f"z has shape {list(z.shape)}; this generator takes z FP32 [B, {spec.latent_dim}]")
    if not np.issubdtype(z.dtype, np.floating) or not np.isfinite(z).all():
        raise UsageError("z must hold finite floating-point numbers (standard normal draws)")
    if not spec.conditional:
        if label is not None:
            raise UsageError("label: this generator is not conditional; send z only")
        return np.ascontiguousarray(z, dtype=np.float32), None
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
    return np.ascontiguousarray(z, dtype=np.float32), label.astype(np.int64)


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
    with atomic.atomic_dir(out) as tmp:
        for i, image in enumerate(images):
            (tmp / f"{i:05d}.png").write_bytes(encode_png(image))
    return [out / f"{i:05d}.png" for i in range(len(images))]


# ---------------------------------------------------------------- sampling: a run or an exported model


def spec_of_run(run, net=None) -> GeneratorSpec:
    """The spec of a run's (export-to-be) model."""
    manifest = run.manifest
    if run.recipe.task == "restoration":
        return GeneratorSpec("restoration", list(manifest["input_shape"]), class_names=manifest["classes"])
    if net is None:
        from bigmodel_cli.tasks.generation import build_model

        net = build_model(run.recipe, manifest)
    return GeneratorSpec("generation", list(manifest["input_shape"]), int(net.latent_dim), bool(net.conditional),
                         manifest["classes"])


def generate(source: str | Path, n: int = 64, seed: int = 0, label: int | None = None, z_file: Path | None = None,
             checkpoint: str = "best", batch_size: int = 256) -> tuple[np.ndarray, dict[str, Any]]:
    """uint8 images [n, C, H, W] from a run directory (PyTorch, its EMA generator) or an exported MODEL.onnx
    (onnxruntime: the same bytes a server gives for this seed), and what made them."""
    source = Path(source)
    if n < 1:
        raise UsageError(f"--n {n}: expected 1 or more images")
    if source.suffix.lower() == ".onnx":
        run_images, spec, what = _onnx_sampler(source)
    elif source.is_dir():
        run_images, spec, what = _run_sampler(source, checkpoint)
    else:
        raise UsageError(f"{source}: neither a run directory nor a .onnx model")
    if spec.task != "generation":
        raise UsageError(f"{source}: a restoration model restores images it is given; it generates none")
    if z_file is not None:
        try:
            z = np.load(z_file, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UsageError(f"--z {z_file}: not a readable .npy array ({e})") from None
    else:
        z = latents(seed, n, spec.latent_dim)
    labels = class_labels(len(z), spec.n_classes, label) if spec.conditional else label
    z, labels = check_inputs(spec, z, labels)
    images = np.concatenate([run_images(z[i:i + batch_size], None if labels is None else labels[i:i + batch_size])
                             for i in range(0, len(z), batch_size)])
    info = {"source": str(source), "model": what, "n": int(len(z)), "seed": None if z_file else seed,
            "z": str(z_file) if z_file else LATENT_RULE, "latent_dim": spec.latent_dim,
            "labels": None if labels is None else labels.tolist(), "class_names": spec.class_names,
            "image_shape": spec.image_shape}
    return images, info


def _onnx_sampler(path: Path):
    from bigmodel_cli.export import metadata
    from bigmodel_cli.inference.session import create_session

    if not path.is_file():
        raise UsageError(f"{path}: no such model file")
    session = create_session(path, device="cpu")
    spec = GeneratorSpec.from_metadata(metadata.from_session(session, str(path)).raw, str(path))

    def run(z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        feeds = {"z": z} if labels is None else {"z": z, "label": labels}
        return np.asarray(session.run(["image"], feeds)[0], dtype=np.uint8)

    return run, spec, str(path)


def _run_sampler(run_dir: Path, checkpoint: str):
    import torch

    from bigmodel_cli.run import load_run
    from bigmodel_cli.tasks.generation import load_generative, sample_pixels

    run = load_run(run_dir)
    if run.recipe.task not in ("generation", "restoration"):
        raise UsageError(f"{run_dir}: a {run.recipe.task} run; bigmodel generate takes generation runs")
    kind, net, path = load_generative(run, checkpoint)
    spec = spec_of_run(run, None if kind == "restoration" else net)

    @torch.no_grad()
    def sample(z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        return sample_pixels(net, kind, z, labels).round().to(torch.uint8).numpy()

    return sample, spec, str(path)


# ---------------------------------------------------------------- export


def _graph(net, kind: str, conditional: bool, quantize: bool):
    """The exported module: latents (+ labels) or uint8 images -> pixels (float 0..255, or rounded uint8)."""
    import torch
    from torch import nn

    def finish(pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.clamp(0.0, 255.0)
        return torch.round(pixels).to(torch.uint8) if quantize else pixels

    if kind == "restoration":
        class Restore(nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002  (the ONNX input's name)
                return finish(self.net(input.to(torch.float32) / 255.0) * 255.0)

        return Restore().eval()

    def pixels(z: torch.Tensor, label: torch.Tensor | None) -> torch.Tensor:
        if kind == "vae":
            return torch.sigmoid(net.decode(z, label)) * 255.0
        return (net(z, label) + 1.0) * 127.5

    if conditional:
        class SampleConditional(nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, z: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
                return finish(pixels(z, label))

        return SampleConditional().eval()

    class Sample(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return finish(pixels(z, None))

    return Sample().eval()


def _to_onnx(module, args: tuple, names: list[str], dest: Path, opset: int) -> str:
    """Write the graph (dynamic batch on every input); 'dynamo', or 'torchscript' where dynamo cannot."""
    import contextlib
    import sys
    import warnings

    import torch

    from bigmodel_cli import console

    batch = torch.export.Dim("batch", min=1)
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(module, args, dynamo=True, input_names=names, output_names=["image"],
                                        opset_version=opset, dynamic_shapes=tuple({0: batch} for _ in args),
                                        verbose=False)
            program.save(str(dest), external_data=False)
            return "dynamo"
        except Exception as e:  # the legacy exporter takes some graphs dynamo cannot
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        console.warn(f"dynamo ONNX exporter failed ({reason[:200]}); falling back to the TorchScript exporter")
        try:
            torch.onnx.export(module, args, str(dest), dynamo=False, input_names=names, output_names=["image"],
                              opset_version=opset, dynamic_axes={n: {0: "batch"} for n in [*names, "image"]})
        except Exception as e:
            raise JobFailed(f"ONNX export failed with both exporters: {str(e).strip().splitlines()[0]}") from e
        return "torchscript"


def _verify_inputs(run, spec: GeneratorSpec, rows: int) -> dict[str, np.ndarray]:
    """Latents (+ labels) from the recipe's seed, or validation images corrupted as in validation (restoration)."""
    if spec.task == "generation":
        feeds = {"z": latents(run.recipe.seed, rows, spec.latent_dim)}
        if spec.conditional:
            feeds["label"] = class_labels(rows, spec.n_classes)
        return feeds
    import torch

    from bigmodel_cli.export.verify import validation_rows
    from bigmodel_cli.tasks.restoration import corrupt

    x, _ = validation_rows(run, rows)
    clean = torch.from_numpy(np.asarray(x, dtype=np.float32)) / 255.0
    noisy = corrupt(clean, run.recipe.data.corrupt, torch.Generator().manual_seed(run.recipe.seed))
    return {"input": torch.round(noisy * 255.0).to(torch.uint8).numpy()}


def _torch_outputs(module, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return module(*(torch.from_numpy(v) for v in feeds.values())).numpy()


def export_generator(run, checkpoint: str, out: Path, opset: int, verify_model: bool = True,
                     verify_samples: int | None = None) -> dict[str, Any]:
    """Export, check and verify a generation/restoration run's model to `out` (+ its report); returns the report."""
    import torch

    from bigmodel_cli import atomic, console
    from bigmodel_cli.export import metadata, onnx_graph
    from bigmodel_cli.export.onnx_export import report_path
    from bigmodel_cli.models.gan import remove_parametrizations
    from bigmodel_cli.tasks.generation import load_generative

    started = time.perf_counter()
    kind, net, ckpt_path = load_generative(run, checkpoint)
    remove_parametrizations(net)
    spec = spec_of_run(run, None if kind == "restoration" else net)
    rows = min(verify_samples or run.recipe.export.verify.samples, VERIFY_ROWS)
    feeds = _verify_inputs(run, spec, max(rows, 2))
    names = list(feeds)
    exact, floats = _graph(net, kind, spec.conditional, True), _graph(net, kind, spec.conditional, False)
    sample = tuple(torch.from_numpy(v[:2]) for v in feeds.values())
    record = metadata.checkpoint_record(run.path, checkpoint, ckpt_path)
    console.info(f"exporting {ckpt_path} ({'EMA generator' if kind == 'gan' else kind}) to onnx (opset {opset})")
    props = metadata.for_run(run, exporter="", quantize="none", model=metadata.model_info(run.recipe, net),
                             checkpoint=record)
    props.pop(metadata.NORMALIZATION, None)  # the graph takes raw pixels or latents; its scaling is inside
    props[metadata.INPUT_SHAPE] = json.dumps([spec.latent_dim] if spec.task == "generation" else spec.image_shape)
    props[metadata.INPUT_KIND] = "latent" if spec.task == "generation" else "image"
    props.update(spec.props())
    import tempfile

    with atomic.atomic_path(report_path(out)) as report_tmp, atomic.atomic_path(out) as tmp, \
            tempfile.TemporaryDirectory(prefix="bigmodel-export-") as work:
        exporter = _to_onnx(exact, sample, names, tmp, opset)
        props[metadata.EXPORTER] = exporter
        metadata.write(tmp, props)
        onnx_graph.check(tmp)
        check = None
        if verify_model:
            float_path = Path(work) / "float.onnx"
            twin = _float_twin(tmp, float_path)
            if not twin:  # the graph does not end in Round -> Cast: export it without them
                _to_onnx(floats, sample, names, float_path, opset)
            try:
                check = _verify(tmp, float_path, exact, floats, feeds, run.recipe.export.verify)
            except Exception as e:  # onnxruntime refusing the graph on these inputs (a batch size baked in...)
                raise JobFailed(f"export verification failed: onnxruntime cannot run the exported model on "
                                f"{rows} inputs ({str(e).strip().splitlines()[0][:200]}); no model written") from e
            check["float_pixels_from"] = "the exported graph without its final Round and Cast" if twin else \
                "a second export without rounding"
            if not check["passed"]:
                raise JobFailed(f"export verification failed: the exported model differs from PyTorch (max abs error "
                                f"{check['max_abs_error']:.3g} on [0, 1] pixels, identical pixels "
                                f"{check['identical_pixels']:.4f}); no model written")
        inputs = {"z": {"dtype": "float32", "shape": [-1, spec.latent_dim]}} if spec.task == "generation" else \
            {"input": {"dtype": "uint8", "shape": [-1, *spec.image_shape]}}
        if spec.conditional:
            inputs["label"] = {"dtype": "int64", "shape": [-1], "classes": spec.class_names}
        report = {"model": str(out), "run": str(run.path), "format": "onnx", "task": spec.task, "checkpoint": record,
                  "network": {**metadata.model_info(run.recipe, net),
                              "exported": "EMA generator" if kind == "gan" else
                              ("decoder" if kind == "vae" else "restoration network")},
                  "exporter": exporter, "opset": opset, "quantize": "none", "inputs": inputs,
                  "outputs": {"image": {"dtype": "uint8", "shape": [-1, *spec.image_shape]}},
                  "metadata": {k: v for k, v in props.items() if k in spec.props() or k == metadata.INPUT_SHAPE},
                  "size_bytes": tmp.stat().st_size, "onnx_checker": "passed (full_check)", "verification": check,
                  "time_s": time.perf_counter() - started}
        atomic.write_json(report_tmp, report)
    if check:
        console.info(f"verified on {check['samples']} {'latents' if spec.task == 'generation' else 'images'}: max abs "
                     f"error {check['max_abs_error']:.2e} on [0, 1] pixels, {check['identical_pixels']:.4%} identical "
                     f"uint8 pixels")
    console.info(f"wrote {out} ({report['size_bytes'] / 1024:.0f} KiB) and {report_path(out)}")
    return report


def _float_twin(path: Path, dest: Path) -> bool:
    """The exported graph with its final Round -> Cast(uint8) removed, so that the float pixels the model computes
    before rounding can be compared with PyTorch's: the very graph that ships, not a second export. False when
    the graph does not end that way."""
    import onnx

    model = onnx.load(str(path))
    producers = {out: node for node in model.graph.node for out in node.output}
    cast = producers.get("image")
    rounding = producers.get(cast.input[0]) if cast is not None and cast.op_type == "Cast" else None
    if rounding is None or rounding.op_type != "Round" or len(model.graph.output) != 1:
        return False
    model.graph.node.remove(cast)
    model.graph.node.remove(rounding)
    output = model.graph.output[0]
    output.name = rounding.input[0]
    output.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    onnx.save(model, str(dest))
    return True


def _verify(exact_path: Path, float_path: Path, exact, floats, feeds: dict[str, np.ndarray], cfg) -> dict[str, Any]:
    """onnxruntime against PyTorch: float pixels before rounding (on [0, 1]) and the uint8 images."""
    from bigmodel_cli.inference.session import create_session

    got_f = np.asarray(create_session(float_path, device="cpu").run(None, feeds)[0], dtype=np.float32) / 255.0
    want_f = _torch_outputs(floats, feeds).astype(np.float32) / 255.0
    got_u = np.asarray(create_session(exact_path, device="cpu").run(["image"], feeds)[0])
    want_u = _torch_outputs(exact, feeds)
    diff = np.abs(got_f - want_f)
    identical = float((got_u == want_u).mean())
    within = bool(np.allclose(got_f, want_f, atol=cfg.atol, rtol=cfg.rtol))
    return {"samples": int(len(next(iter(feeds.values())))), "compared": "image",
            "max_abs_error": float(diff.max()), "atol": cfg.atol, "rtol": cfg.rtol, "within_tolerance": within,
            "identical_pixels": identical, "min_identical_pixels": cfg.min_agreement,
            "max_pixel_difference": int(np.abs(got_u.astype(np.int16) - want_u.astype(np.int16)).max()),
            "output_dtype": str(got_u.dtype), "passed": within and identical >= cfg.min_agreement
            and got_u.dtype == np.uint8}
