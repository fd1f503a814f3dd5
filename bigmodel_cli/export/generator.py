"""Generators and restoration models as ONNX, and the contract that `export`, `generate` and `serve` share.

    bigmodel export runs/digits-dcgan          # -> model.onnx: z FP32 [B, zdim] (+ label INT64 [B]) -> image UINT8
    bigmodel export runs/digits-denoise        # -> model.onnx: input FP32 [B, C, H, W] -> image UINT8 [B, C, H, W]
                                               #    (input UINT8 when data.corrupt.clip: 8-bit noisy images)
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

The contract itself (latents, labels, spec, checks, PNG) lives in `export.generator_spec` (numpy only; re-exported
here); this module imports torch only inside its functions.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel_cli.errors import JobFailed, UsageError, first_line
from bigmodel_cli.export.generator_spec import (  # noqa: F401  (the contract, re-exported for servers)
    CONDITIONAL,
    IMAGE_SHAPE,
    LABEL_RULE,
    LABELS_RULE,
    LATENT_DIM,
    LATENT_RULE,
    OUTPUT_DTYPE,
    VERIFY_ROWS,
    Z_DISTRIBUTION,
    Z_SEED_RULE,
    GeneratorSpec,
    check_inputs,
    class_labels,
    encode_png,
    grid,
    latents,
    save_grid,
    write_images,
)

__all__ = ["CONDITIONAL", "IMAGE_SHAPE", "LABELS_RULE", "LABEL_RULE", "LATENT_DIM", "LATENT_RULE", "OUTPUT_DTYPE",
           "VERIFY_ROWS", "Z_DISTRIBUTION", "Z_SEED_RULE", "GeneratorSpec", "check_inputs", "class_labels",
           "encode_png", "export_generator", "generate", "grid", "latents", "save_grid", "spec_of_run", "write_images"]


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
    if seed < 0:
        raise UsageError(f"--seed {seed}: expected 0 or more")
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
        hint = "; give --prompt TEXT for text" if run.recipe.task == "language-modeling" else ""
        raise UsageError(f"{run_dir}: a {run.recipe.task} run; bigmodel generate takes generation runs{hint}")
    kind, net, path = load_generative(run, checkpoint)
    spec = spec_of_run(run, None if kind == "restoration" else net)

    @torch.no_grad()
    def sample(z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        return sample_pixels(net, kind, z, labels).to(torch.uint8).numpy()

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
    import torch

    from bigmodel_cli.export.exporter import export_graph

    batch = torch.export.Dim("batch", min=1)
    return export_graph(module, args, dest, opset, names, ["image"], tuple({0: batch} for _ in args),
                        {n: {0: "batch"} for n in [*names, "image"]})


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
    noisy = corrupt(clean, run.recipe.data.corrupt, torch.Generator().manual_seed(run.recipe.seed)) * 255.0
    if not run.recipe.data.corrupt.clip:  # unclipped noise: FP32 pixels on the 0..255 scale
        return {"input": noisy.numpy()}
    return {"input": torch.round(noisy).to(torch.uint8).numpy()}


def _torch_outputs(module, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return module(*(torch.from_numpy(v) for v in feeds.values())).numpy()


def export_generator(run, checkpoint: str, out: Path, report_file: Path, opset: int, verify_model: bool = True,
                     verify_samples: int | None = None) -> dict[str, Any]:
    """Export, check and verify a generation/restoration run's model to `out` (+ its report); returns the report."""
    import torch

    from bigmodel_cli import atomic, console
    from bigmodel_cli.export import metadata, onnx_graph
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

    with atomic.atomic_path(report_file) as report_tmp, atomic.atomic_path(out) as tmp, \
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
                                f"{rows} inputs ({first_line(e, 200)}); no model written") from e
            check["float_pixels_from"] = "the exported graph without its final Round and Cast" if twin else \
                "a second export without rounding"
            if not check["passed"]:
                raise JobFailed(f"export verification failed: the exported model differs from PyTorch (max abs error "
                                f"{check['max_abs_error']:.3g} on [0, 1] pixels, identical pixels "
                                f"{check['identical_pixels']:.4f}); no model written")
        inputs = {"z": {"dtype": "float32", "shape": [-1, spec.latent_dim]}} if spec.task == "generation" else \
            {"input": {"dtype": str(feeds["input"].dtype), "shape": [-1, *spec.image_shape]}}
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
    console.info(f"wrote {out} ({report['size_bytes'] / 1024:.0f} KiB) and {report_file}")
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
