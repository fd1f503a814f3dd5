"""`bigmodel eval` for generators and restoration models: scores that work offline, each beside its floor.

    bigmodel eval runs/digits-dcgan --features runs/digits-cnn --fail-over fid=20
    bigmodel eval runs/digits-vae --features runs/digits-cnn        # + nelbo, bits_per_dim, mse, psnr
    bigmodel eval runs/digits-denoise --fail-under psnr_gain=8

Inception weights cannot be downloaded here, and Inception features mean little on 8x8 digits,
so FID and KID (torchmetrics' FrechetInceptionDistance / KernelInceptionDistance with a custom
feature extractor) use the penultimate layer of a classification run of ours trained on the same
data (`--features RUN_DIR` or `eval.generative.features`), whose predictions also give the
Inception Score, the share of each class among the samples, their entropy and coverage (a
mode-collapse alarm). A local Inception-v3 weights file (`--features pt_inception-2015-12-05-6726825d.pth`,
torch-fidelity's format, never downloaded) gives the usual Inception FID/KID and Inception Score instead, without
class shares. Precision and recall are Kynkaanniemi et al.'s (2019) k-nearest-neighbour
manifolds on the same features. Each score has its floor beside it: the same metric between
real train images (as many as samples) and the real reference split, the best a generator can
hope for with these features and sample sizes.

`eval.generative.samples` images (1000) are drawn from the fixed latents of the recipe's seed
(the seed -> z rule of `export.generator`; conditional generators get the classes in turn).
FID needs more images than the extractor has features on each side (a covariance of full rank):
cnn_small at width 32 has 64, so at least 65 samples and 65 reference images.

VAEs add the test negative ELBO (nats per image and bits per dimension, single-sample, beta 1),
reconstruction MSE and PSNR (z = mu). Restoration: PSNR and SSIM of restored vs clean and of
corrupted vs clean (the floor to beat), and their gain, with the corruption seeded by the
recipe's seed. Files: eval/<split>.json, <split>_samples.png (VAE: also _reconstructions.png and
_interpolation.png; restoration: _restorations.png with rows corrupted, restored, clean).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bigmodel_cli import atomic, console
from bigmodel_cli.errors import UsageError
from bigmodel_cli.evaluation.features import RandomFeatures, frechet_metric, load_extractor  # noqa: F401  (part of this module's interface)

GAN_METRICS = ("fid", "kid", "kid_std", "inception_score", "class_entropy", "class_coverage", "min_class_share",
               "precision", "recall")
VAE_METRICS = ("nelbo", "bits_per_dim", "mse", "psnr")
RESTORATION_METRICS = ("psnr", "ssim", "psnr_corrupted", "ssim_corrupted", "psnr_gain")
BATCH = 512
GRID = 64


# ---------------------------------------------------------------- metrics


@torch.no_grad()
def embed(extractor: nn.Module, pixels: np.ndarray) -> tuple[torch.Tensor, np.ndarray | None]:
    """Features and class probabilities (None: an extractor without logits) of `pixels` (uint8 or float 0..255),
    one pass in the extractor's batches."""
    feats, proba = [], []
    size = extractor.batch_size
    for start in range(0, len(pixels), size):
        f, logits = extractor.features_and_logits(torch.from_numpy(np.array(pixels[start:start + size],
                                                                            dtype=np.float32)))
        feats.append(f)
        if logits is not None:
            proba.append(torch.softmax(logits.double(), dim=1))
    return torch.cat(feats), torch.cat(proba).numpy() if proba else None


class _Given(nn.Module):
    """Features computed once (`embed`), handed to torchmetrics' FID and KID as they are."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@torch.no_grad()
def fid_kid(real: torch.Tensor, fake: torch.Tensor, subsets: int, seed: int) -> dict[str, float]:
    """FID and KID (mean and std over `subsets` random subsets) with torchmetrics, on features [N, F]."""
    from torchmetrics.image.kid import KernelInceptionDistance

    given = _Given(real.shape[1])
    fid = frechet_metric(given)
    with warnings.catch_warnings():  # "KID will save all extracted features": a few thousand rows here
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=given, subsets=subsets,
                                      subset_size=min(1000, len(real), len(fake)), sync_on_compute=False)
    for metric in (fid, kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    torch.manual_seed(seed)  # KID's subsets
    kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std)}


def _radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each point to its k-th nearest neighbour in the same set (itself excluded)."""
    out = []
    for start in range(0, len(x), 1024):
        d = torch.cdist(x[start:start + 1024].double(), x.double())
        out.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(out)


def _covered(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    out = []
    for start in range(0, len(points), 1024):
        d = torch.cdist(points[start:start + 1024].double(), centres.double())
        out.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(out)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> dict[str, float]:
    """Improved precision (samples inside the real manifold) and recall (real images inside the samples')."""
    k = min(k, len(real) - 1, len(fake) - 1)
    return {"precision": float(_covered(fake, real, _radii(real, k)).double().mean()),
            "recall": float(_covered(real, fake, _radii(fake, k)).double().mean())}


def class_scores(proba: np.ndarray, classes: list[str] | None) -> dict[str, Any]:
    """Inception Score (one split), and with the data's `classes` (None: Inception's ImageNet logits) their shares,
    normalised entropy, coverage and smallest share."""
    eps = 1e-12
    marginal = proba.mean(axis=0)
    kl = (proba * (np.log(proba + eps) - np.log(marginal + eps))).sum(axis=1)
    if classes is None:
        return {"inception_score": float(np.exp(kl.mean()))}
    k = proba.shape[1]
    shares = np.bincount(proba.argmax(axis=1), minlength=k) / max(len(proba), 1)
    nonzero = shares[shares > 0]
    return {"inception_score": float(np.exp(kl.mean())),
            "class_entropy": max(0.0, float(-(nonzero * np.log(nonzero)).sum() / np.log(k))) if k > 1 else 1.0,
            "class_coverage": float((shares >= 0.5 / k).mean()), "min_class_share": float(shares.min()),
            "class_shares": dict(zip(classes, shares.round(6).tolist(), strict=True))}


def generation_scores(real: tuple[torch.Tensor, np.ndarray], fake: tuple[torch.Tensor, np.ndarray],
                      classes: list[str] | None, cfg, seed: int) -> dict[str, Any]:
    """Every score of `fake` against `real`, each an `embed` result (features, class probabilities)."""
    scores = fid_kid(real[0], fake[0], cfg.kid_subsets, seed)
    scores.update(precision_recall(real[0], fake[0], cfg.nearest_k))
    if fake[1] is not None:
        scores.update(class_scores(fake[1], classes))
    return scores


def check_sample_sizes(extractor_features: int, samples: int, reference: int, split: str) -> None:
    need = extractor_features + 1
    if samples < need:
        raise UsageError(f"{samples} samples: FID needs at least {need} generated images (more than "
                         f"the extractor's {extractor_features} features); pass --samples {need} or more (1000 "
                         f"recommended)")
    if reference < need:
        raise UsageError(f"split '{split}' has {reference} images; FID needs at least {need} real images (more than "
                         f"the extractor's {extractor_features} features); evaluate on a larger split (--split)")


# ---------------------------------------------------------------- the evaluation


def evaluate_generative(run_dir: str | Path, options, onnx: Path | None, config, place) -> dict[str, Any]:
    """Plan (every check first), score and write the report of a generation or restoration run; `config(run,
    options)` is the eval section with the command line applied, `place(run_path, split, which, checkpoint_path)`
    the (folder, file stem) of the report (both from `evaluation.evaluate`)."""
    from bigmodel_cli.evaluation import gates as G
    from bigmodel_cli.run import load_run, prepared_split
    from bigmodel_cli.tasks.generation import load_generative

    started = time.perf_counter()
    run = load_run(run_dir)
    task = run.recipe.task
    cfg = config(run, options)
    if options.data is not None:
        raise UsageError(f"--data {options.data}: generative runs are evaluated on their own prepared splits")
    if onnx is not None:
        raise UsageError("--onnx: generative runs are evaluated from their checkpoint; `bigmodel export` verifies the "
                         "ONNX generator against it (identical pixels) and `bigmodel generate MODEL.onnx` samples it")
    if options.ci is not None:
        console.warn("--ci: no bootstrap intervals for generative metrics; ignored")
    if options.samples is not None and options.samples < 2:
        raise UsageError(f"--samples {options.samples}: expected 2 or more images")
    given = {"samples": options.samples, "inception_layer": options.inception_layer}
    cfg = cfg.model_copy(update={"generative": cfg.generative.model_copy(
        update={k: v for k, v in given.items() if v is not None})})
    split = options.split or cfg.split
    which = options.checkpoint or cfg.checkpoint
    kind, net, ckpt_path = load_generative(run, which)
    known = RESTORATION_METRICS if task == "restoration" else GAN_METRICS + (VAE_METRICS if kind == "vae" else ())
    gates = G.resolve(cfg, options.fail_under, options.fail_over, known)
    x_ref, y_ref = prepared_split(run, split)
    features = options.features or cfg.generative.features
    extractor = record = None
    if task == "generation":
        if features:
            if split == "train":
                raise UsageError("--split train: the floor beside each score is real train images against the scored "
                                 "split, so the train split cannot be scored; use --split val or test")
            extractor, record = load_extractor(features, run.manifest, cfg.generative.inception_layer)
            if options.inception_layer is not None and "run" in record:
                console.warn(f"--inception-layer: {features} is a classification run, not Inception weights; ignored")
            check_sample_sizes(extractor.num_features, cfg.generative.samples, len(x_ref), split)
        elif kind == "gan":
            raise UsageError("a GAN is scored on the features of a classifier of the same data: give --features "
                             "RUN_DIR (a classification run, e.g. runs/digits-cnn) or eval.generative.features")
        else:
            console.warn("no --features run: FID, KID, precision/recall and class shares are not computed")
    out_dir, stem = place(run.path, split, which, ckpt_path)
    report: dict[str, Any] = {"run": str(run_dir), "task": task, "model": kind, "split": split,
                              "reference": {"split": split, "n": int(len(x_ref))}, "checkpoint": str(ckpt_path),
                              "warnings": []}
    pictures: dict[str, np.ndarray] = {}
    with torch.no_grad():
        if task == "restoration":
            _restoration(run, net, x_ref, y_ref, report, pictures)
        else:
            _generation(run, kind, net, cfg, split, x_ref, y_ref, extractor, record, report, pictures)
    report["gates"] = G.check(gates, report["metrics"])
    report["time_s"] = time.perf_counter() - started
    _write(out_dir, stem, report, pictures, cfg.plots)
    _print(report)
    return report


def _generation(run, kind, net, cfg, split, x_ref, y_ref, extractor, record, report, pictures) -> None:
    from bigmodel_cli.export.generator_spec import LATENT_RULE, class_labels, latents
    from bigmodel_cli.run import prepared_split
    from bigmodel_cli.tasks.base import Split
    from bigmodel_cli.tasks.generation import sample_pixels, vae_scores

    seed, classes = run.recipe.seed, run.manifest["classes"]
    n = cfg.generative.samples
    labels = class_labels(n, len(classes or [])) if net.conditional else None
    z = latents(seed, n, net.latent_dim)
    fake = torch.cat([sample_pixels(net, kind, z[i:i + BATCH], None if labels is None else labels[i:i + BATCH])
                      for i in range(0, n, BATCH)]).numpy()
    pictures["samples"] = fake[:GRID].astype(np.uint8)
    report["samples"] = {"n": n, "seed": seed, "z": LATENT_RULE,
                         "labels": "classes in turn" if labels is not None else None}
    metrics: dict[str, Any] = {}
    if extractor is not None:
        x_train, _ = prepared_split(run, "train")
        floor_rows = np.random.default_rng(seed).permutation(len(x_train))[:min(n, len(x_train))]
        real_train = np.asarray(x_train[np.sort(floor_rows)])
        reference = embed(extractor, np.asarray(x_ref))
        scores = generation_scores(reference, embed(extractor, fake), record["classes"], cfg.generative, seed)
        floor = generation_scores(reference, embed(extractor, real_train), record["classes"], cfg.generative, seed)
        report["class_shares"] = scores.pop("class_shares", None)
        report["floor_class_shares"] = floor.pop("class_shares", None)
        report["floor"] = {**floor, "what": f"{len(real_train)} real train images (in place of samples) vs the "
                                           f"{split} split"}
        report["ratio_to_floor"] = {k: (scores[k] / floor[k] if floor[k] else None) for k in ("fid", "kid")}
        report["extractor"] = record
        metrics.update(scores)
    if kind == "vae":
        split_rows = Split(np.asarray(x_ref), np.asarray(y_ref))
        metrics.update(vae_scores(net, run.recipe.train.vae, split_rows, "cpu", seed, net.conditional, prefix=""))
        report["nelbo_units"] = "nats per image (single-sample ELBO, beta 1); bits_per_dim = nelbo / (C*H*W*ln 2)"
        x = torch.from_numpy(np.array(x_ref[:16], dtype=np.float32)) / 255.0
        y = torch.from_numpy(np.array(y_ref[:16])) if net.conditional else None
        mu, _ = net.encode(x, y)
        recon = torch.sigmoid(net.decode(mu, y))
        pictures["reconstructions"] = np.round(torch.cat([x, recon]).numpy() * 255).astype(np.uint8)
        pictures["interpolation"] = _interpolation(net, mu, y)
    report["metrics"] = metrics
    report["n"] = n if extractor is not None else int(len(x_ref))  # samples scored, else the split's images


def _interpolation(net, mu: torch.Tensor, y: torch.Tensor | None) -> np.ndarray:
    """The decoder along the straight line between the latents of the first two images (10 steps)."""
    t = torch.linspace(0, 1, 10)[:, None]
    z = (1 - t) * mu[0:1] + t * mu[1:2]
    labels = None if y is None else y[:1].repeat(10)
    return np.round(torch.sigmoid(net.decode(z, labels)).numpy() * 255).astype(np.uint8)


def _restoration(run, net, x_ref, y_ref, report, pictures) -> None:
    from bigmodel_cli.tasks.base import Split
    from bigmodel_cli.tasks.restoration import restoration_scores, restore_split

    split = Split(np.asarray(x_ref), np.asarray(y_ref))
    scores = restoration_scores(net, split, run.recipe, "cpu")
    scores.pop("loss")
    report["metrics"] = scores
    report["n"] = int(len(split))
    report["corruption"] = {**run.recipe.data.corrupt.model_dump(), "seed": run.recipe.seed,
                            "floor": "psnr_corrupted / ssim_corrupted: the corrupted input itself"}
    clean, noisy, restored = restore_split(net, split, run.recipe, "cpu", limit=16)
    pictures["restorations"] = np.concatenate([noisy, restored, clean])


def _write(out_dir: Path, stem: str, report: dict[str, Any], pictures: dict[str, np.ndarray], plots: bool) -> None:
    from bigmodel_cli.export.generator_spec import save_grid

    report["files"] = {"report": str(out_dir / f"{stem}.json"), "plots": []}
    columns = {"reconstructions": 16, "interpolation": 10, "restorations": 16}
    with contextlib.ExitStack() as stack:
        if plots:
            for name, images in pictures.items():
                dest = out_dir / f"{stem}_{name}.png"
                tmp = stack.enter_context(atomic.atomic_path(dest))
                save_grid(images, tmp, columns=columns.get(name))
                report["files"]["plots"].append(str(dest))
        tmp = stack.enter_context(atomic.atomic_path(out_dir / f"{stem}.json"))
        atomic.write_json(tmp, report)


def _print(report: dict[str, Any]) -> None:
    if console.is_quiet():
        return
    from bigmodel_cli.console import fmt

    floor = report.get("floor") or {}
    lines = [f"{report['run']}: {report['task']} ({report['model']}) on split '{report['split']}', n {report['n']}"]
    for name, value in report["metrics"].items():
        beside = f"   floor {fmt(floor[name])}" if name in floor else ""
        lines.append(f"  {name:<18} {fmt(value)}{beside}")
    if report.get("class_shares"):
        shares = ", ".join(f"{k} {v:.0%}" for k, v in report["class_shares"].items())
        lines.append(f"  class shares: {shares}")
    for gate in report["gates"]:
        lines.append(f"  gate {gate['metric']} {gate['kind']} {gate['limit']:g}: "
                     f"{'passed' if gate['passed'] else 'FAILED'}")
    console.info("\n".join(lines))
