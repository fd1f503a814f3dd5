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
    import shutil
    import subprocess

    try:
        import torch

        if torch.cuda.is_available():
            return True
    except ImportError:
        pass
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
