"""What this installation can use: versions, GPUs, onnxruntime providers, registered models."""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from typing import Any

from bigmodel_cli import __version__

EXTRAS = {  # pip install 'bigmodel-cli[EXTRA]': the optional libraries each brings (None: not installed)
    "hf": ("transformers", "peft"),
    "ops": ("mlflow-skinny", "optuna"),
    "inception": ("torch-fidelity",),
    "tensorboard": ("tensorboard",),
}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def describe() -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    from bigmodel_cli.devices import ort_providers
    from bigmodel_cli.models import list_models

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": p.name, "memory_gib": round(p.total_memory / 2**30, 1)})
    return {
        "bigmodel_version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": {
            "version": torch.__version__,
            "cuda_build": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(),
            "devices": gpus,
            "bf16_supported": torch.cuda.is_bf16_supported() if torch.cuda.is_available() else True,
            "threads": torch.get_num_threads(),
        },
        "distributed": {
            "available": torch.distributed.is_available(),
            "gloo": torch.distributed.is_available() and torch.distributed.is_gloo_available(),
            "nccl": torch.distributed.is_available() and torch.distributed.is_nccl_available(),
            "backend": "nccl" if torch.cuda.is_available() else "gloo",
            "visible_gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        },
        "onnxruntime": {
            "version": ort.__version__,
            "providers": ort.get_available_providers(),
            "usable_providers": ort_providers("auto"),
        },
        "libraries": {name: _version(name) for name in
                      ("torchvision", "scikit-learn", "onnx", "onnxscript", "numpy", "typer", "pydantic")},
        "extras": {extra: {name: _version(name) for name in names} for extra, names in EXTRAS.items()},
        "models": list_models(),
    }
