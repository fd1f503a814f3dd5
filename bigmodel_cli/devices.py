"""Picking the device a job runs on: `auto` is the GPU when one is present, else the CPU."""

from __future__ import annotations

from bigmodel_cli.errors import UsageError


def resolve(devices: str = "auto"):
    import torch

    if devices == "auto" or devices.isdigit():  # N processes: each its own GPU when there are GPUs
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if devices == "cpu":
        return torch.device("cpu")
    if devices == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--devices cuda: no CUDA GPU is visible to PyTorch (see `bigmodel info`)")
        return torch.device("cuda")
    raise UsageError(f"--devices {devices}: expected auto, cpu, cuda or a number of processes")


def ort_providers(device: str = "auto") -> list[str]:
    """onnxruntime providers: CUDA only when asked for (or auto) and a GPU is really there."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    want_cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in available and _gpu_present()
    if device == "cuda" and not want_cuda:
        raise UsageError("--device cuda: onnxruntime's CUDA provider or a GPU is not available (see `bigmodel info`)")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if want_cuda else ["CPUExecutionProvider"]


def _gpu_present() -> bool:
    """A GPU this process may use: asked of torch when it is already imported, else of nvidia-smi (importing
    torch only to find out costs seconds of a server's or a prediction's start-up)."""
    import sys

    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            return True
    return bool(gpu_ids())


def gpu_count() -> int:
    return len(gpu_ids())


def gpu_ids() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (else as nvidia-smi lists them); no
    torch import."""
    import os
    import shutil
    import subprocess

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    if listed.returncode:
        return []
    return [str(i) for i, line in enumerate(line for line in listed.stdout.splitlines() if line.startswith("GPU "))]
