"""`bigmodel generate`: images from a generation run or an exported generator, or text from a language model.

    bigmodel generate runs/digits-dcgan --n 64 --seed 0 --out grid.png          # the run's EMA generator (PyTorch)
    bigmodel generate runs/digits-dcgan/model.onnx --n 64 --seed 0 --out grid.png   # onnxruntime: a server's bytes
    bigmodel generate runs/mnist-dcgan --label 3 --n 16 --out threes/           # a folder of 00000.png ...
    bigmodel generate runs/digits-vae --z my_latents.npy --out walk.png         # your own z (float32 [N, zdim])
    bigmodel generate runs/text-gpt-lm --prompt "Once upon" --max-new-tokens 40 --temperature 0.8 --top-p 0.9

z for a seed is `numpy.random.default_rng(seed).standard_normal((n, latent_dim), dtype=float32)`
(`export.generator.latents`), the rule servers use too, so a seed names the same images everywhere.
A conditional generator without --label draws the classes in turn. With --prompt (language-modelling
runs and their model.onnx) the prompt and its sampled continuation are printed on stdout
(`inference.text_generation`: temperature, then nucleus sampling; --temperature 0 is greedy).
"""

from __future__ import annotations

from pathlib import Path

import typer

from bigmodel_cli.cli.common import JSON, finish, start


def generate(
    source: Path = typer.Argument(..., metavar="RUN_DIR|MODEL.onnx", help="A generation run directory (its EMA "
                                  "generator or VAE decoder) or an exported generator model."),
    n: int = typer.Option(64, "--n", help="Number of images."),
    seed: int = typer.Option(0, "--seed", help="Seed of the latents (numpy default_rng(seed).standard_normal)."),
    label: int | None = typer.Option(None, "--label", help="Conditional generators: the class index of every image "
                                     "(default: the classes in turn)."),
    z: Path | None = typer.Option(None, "--z", help="A .npy file of latents float32 [N, latent_dim] instead of "
                                  "--n/--seed."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="RUN_DIR only: best | last | PATH."),
    out: Path = typer.Option(Path("samples.png"), "--out", help="A .png file (one grid) or a folder (one PNG per "
                             "image)."),
    prompt: str | None = typer.Option(None, "--prompt", help="Language-modelling runs (or their model.onnx): the "
                                      "text to continue; the prompt and its continuation are printed."),
    max_new_tokens: int = typer.Option(50, "--max-new-tokens", help="--prompt: tokens generated at most."),
    temperature: float = typer.Option(1.0, "--temperature", help="--prompt: logits divided by this before "
                                      "sampling; 0 is greedy."),
    top_p: float = typer.Option(1.0, "--top-p", help="--prompt: sample from the smallest set of tokens whose "
                                "probabilities reach this (nucleus)."),
    as_json: bool = JSON,
) -> None:
    """Generate images from a generation run or an exported generator (a grid PNG or a folder of PNGs), or text."""
    from bigmodel_cli import console
    from bigmodel_cli.errors import UsageError
    from bigmodel_cli.export.generator import generate as sample
    from bigmodel_cli.export.generator import write_images

    start(as_json)
    if prompt is not None:
        from bigmodel_cli.tasks.language_modeling import generate_text

        if label is not None or z is not None:
            raise UsageError("--prompt: text generation takes no --label or --z")
        text = generate_text(source, prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                             seed=seed, checkpoint=checkpoint)
        if not as_json:
            print(text)
        finish({"source": str(source), "prompt": prompt, "text": text, "seed": seed, "temperature": temperature,
                "top_p": top_p, "max_new_tokens": max_new_tokens}, as_json)
        return
    images, info = sample(source, n=n, seed=seed, label=label, z_file=z, checkpoint=checkpoint)
    files = write_images(images, out)
    info["out"] = str(out)
    info["files"] = len(files)
    console.info(f"wrote {len(images)} images {'as a grid ' if out.suffix.lower() == '.png' else 'to '}{out} "
                 f"(from {info['model']})")
    finish(info, as_json)
