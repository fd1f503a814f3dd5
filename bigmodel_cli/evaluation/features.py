"""Feature extractors for scoring generators: a classification run's penultimate layer, Inception-v3 from a
weights file on disk (never downloaded), or a seeded random network (val_fid without either), and torchmetrics'
FID on any of them.

    extractor, record = load_extractor("runs/digits-cnn", data)        # exit 2 for a run of other data
    extractor, record = load_extractor("pt_inception-2015-12-05-6726825d.pth", data, layer=2048)
    fid = frechet_metric(extractor)                                     # torchmetrics FrechetInceptionDistance

Every extractor takes raw pixels (float 0..255, [N, C, H, W]) and has `num_features`, `batch_size` and
`features_and_logits(x)`; `classes` names what its logits score (None for Inception's ImageNet logits, which
give the Inception Score but not the share of each of the data's classes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from bigmodel_cli.errors import UsageError, first_line


class ClassifierFeatures(nn.Module):
    """Raw pixels (float 0..255, [N, C, H, W]) -> the penultimate features of a classification run's network
    (the input of its head), in eval mode; `features_and_logits` also gives its logits."""

    def __init__(self, net: nn.Module, norm: nn.Module, shape: list[int]):
        super().__init__()
        from bigmodel_cli.models.build import head_prefix

        self.net, self.norm = net.eval(), norm.eval()
        self.batch_size = 512
        self._captured: torch.Tensor | None = None
        head = dict(net.named_modules())[head_prefix(net)]
        head.register_forward_hook(self._capture)
        with torch.no_grad():
            self.num_features = int(self.features_and_logits(torch.zeros([2, *shape]))[0].shape[1])

    def _capture(self, module, inputs, output) -> None:
        self._captured = inputs[0]

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(self.norm(x.to(torch.float32)))
        return self._captured.flatten(1).float(), logits.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(x)[0]

    def train(self, mode: bool = True) -> ClassifierFeatures:
        return super().train(False)  # always eval: BatchNorm statistics and dropout of the classifier stay fixed


class RandomFeatures(nn.Module):
    """A fixed random conv network (seeded Kaiming weights) as a feature extractor: val_fid without a classifier.
    Distances in its 64 features compare generators of one data set; they are not classifier-FID values."""

    def __init__(self, shape: list[int], seed: int = 0, features: int = 64):
        super().__init__()
        channels = shape[0]
        self.body = nn.Sequential(nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1),
                                  nn.ReLU(), nn.Conv2d(64, features, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten())
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for module in self.body:
                if isinstance(module, nn.Conv2d):
                    fan_in = module.weight[0].numel()
                    module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                    module.bias.zero_()
        self.requires_grad_(False)
        self.num_features, self.batch_size = features, 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.to(torch.float32) / 127.5 - 1.0)


INCEPTION_LAYERS = (64, 192, 768, 2048)
INCEPTION_EXTRA = "pip install 'bigmodel-cli[inception]'"


class InceptionFeatures(nn.Module):
    """Inception-v3 as torchmetrics' FID builds it (`NoTrainInceptionV3`, torch-fidelity's port of the TF
    2015-12-05 graph, antialiased resize to 299x299) from a weights file, never a download: `layer` (64, 192, 768
    or 2048, pool3) gives the features and, at 2048 where the whole network runs anyway, 'logits_unbiased' the
    Inception Score (the smaller layers stop early: no logits). Grey images are repeated to RGB."""

    def __init__(self, weights: Path, layer: int):
        super().__init__()
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3

            outputs = [str(layer)] + (["logits_unbiased"] if layer == 2048 else [])
            self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=outputs,
                                          feature_extractor_weights_path=str(weights))
        except ImportError:  # NoTrainInceptionV3 raises ModuleNotFoundError without torch-fidelity
            raise UsageError(f"--features {weights}: Inception features need torch-fidelity: {INCEPTION_EXTRA}") \
                from None
        except Exception as exc:  # noqa: BLE001  (a pickle, zip or key error: the file is not these weights)
            raise UsageError(f"--features {weights}: not Inception-v3 weights in torch-fidelity's format "
                             f"(pt_inception-2015-12-05-6726825d.pth, the file torchmetrics' FID downloads): "
                             f"{first_line(exc, 200)}") from None
        self.layer, self.num_features, self.batch_size = layer, layer, 32

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        pixels = x.to(torch.float32).round().clamp(0, 255).to(torch.uint8)
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, 3, -1, -1)
        outputs = self.net._torch_fidelity_forward(pixels)  # every output of one pass (`forward` gives the first)
        logits = outputs[1].float() if len(outputs) > 1 else None
        return outputs[0].reshape(len(x), -1).float(), logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(x)[0]

    def train(self, mode: bool = True) -> InceptionFeatures:
        return super().train(False)


def load_extractor(spec: str | Path, data: dict[str, Any], layer: int = 2048) -> tuple[nn.Module, dict[str, Any]]:
    """`--features SPEC`: a classification run's folder, or an Inception-v3 weights file (`layer` of it)."""
    path = Path(spec)
    if path.is_dir():
        return classifier_features(path, data)
    if not path.is_file():
        raise UsageError(f"--features {spec}: not found; give a classification run of the same data (a folder, "
                         f"e.g. runs/digits-cnn) or a local Inception-v3 weights file")
    return inception_features(path, layer)


def inception_features(weights: Path, layer: int = 2048) -> tuple[InceptionFeatures, dict[str, Any]]:
    from bigmodel_cli.export.metadata import fingerprint

    if layer not in INCEPTION_LAYERS:
        raise UsageError(f"Inception layer {layer} (--inception-layer, eval.generative.inception_layer): expected one "
                         f"of {list(INCEPTION_LAYERS)}")
    extractor = InceptionFeatures(weights, layer)
    record = {"file": str(weights.resolve()), "sha256": fingerprint(weights),
              "model": "inception-v3 (torchmetrics NoTrainInceptionV3)",
              "layer": f"{layer} ({'pool3' if layer == 2048 else 'pooled block output'})",
              "features": layer, "classes": None}
    return extractor, record


def classifier_features(run_dir: str | Path, data: dict[str, Any]) -> tuple[ClassifierFeatures, dict[str, Any]]:
    """The extractor of a classification run trained on images of the same shape and classes, and its record."""
    from bigmodel_cli.export.metadata import fingerprint
    from bigmodel_cli.run import load_network, load_run

    where = f"--features {run_dir}"
    run = load_run(run_dir)
    if run.recipe.task != "classification" or run.manifest["kind"] != "image":
        raise UsageError(f"{where}: a {run.recipe.task} run on {run.manifest['kind']} data; the features come from "
                         f"an image classification run (e.g. bigmodel train -r digits-cnn)")
    shape, want = list(run.manifest["input_shape"]), list(data["input_shape"])
    if shape != want:
        raise UsageError(f"{where}: trained on images of shape {shape}, but this run's images are {want}; train a "
                         f"classifier on the same data")
    if data.get("classes") and run.manifest["classes"] != data["classes"]:
        raise UsageError(f"{where}: its classes {run.manifest['classes'][:10]} differ from this run's "
                         f"{data['classes'][:10]}; train a classifier on the same data")
    net, norm, path = load_network(run, "best")
    extractor = ClassifierFeatures(net, norm, shape)
    record = {"run": str(Path(run_dir).resolve()), "checkpoint": str(path), "sha256": fingerprint(path),
              "model": run.recipe.model.name or run.recipe.model.component, "layer": "penultimate (input of the head)",
              "features": extractor.num_features, "classes": run.manifest["classes"]}
    return extractor, record


def frechet_metric(extractor: nn.Module, keep_real: bool = False):
    """torchmetrics' FID on `extractor`'s features (never synchronised across processes: each computes alike)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(feature=extractor, reset_real_features=not keep_real, sync_on_compute=False)
