"""The one place onnxruntime sessions are created: device, threads and options in, a checked session out.

    session = create_session("runs/digits-cnn/model.onnx")                        # auto device, ORT's threads
    session = create_session(path, device="cpu", threads=2, spinning=False)        # what a server wants
    session = create_session(path, device="cpu", threads=torch.get_num_threads(), spinning=True)  # benchmark

Used by eval's `OnnxModel`, export verification, the int8 guard and `bigmodel benchmark`, so that every
session in the tool is made the same way: onnxruntime's log level at errors only (no provider chatter on
stderr), one graph at a time (`inter_op_threads=1`), the CUDA provider only when asked for (or `auto`)
and a GPU is really there, and an unreadable model reported as a usage error naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bigmodel_cli.errors import UsageError, first_line

DEVICES = ("auto", "cpu", "cuda")


def create_session(path: str | Path, device: str = "auto", threads: int = 0, *, spinning: bool | None = None,
                   inter_op_threads: int = 1, label: str | None = None, **config: str) -> Any:
    """An `onnxruntime.InferenceSession` for `path`.

    `threads`: intra-op threads (0: onnxruntime's choice, one per core). `spinning`: whether idle pool
    threads busy-wait for the next op (None: onnxruntime's default, on; off leaves the CPU to other work,
    e.g. a server's event loop). `config`: further session config entries under onnxruntime's own
    names, e.g. `**{"session.disable_prepacking": "1"}`.
    `label` names the model in error messages (default: the path), e.g. `--onnx runs/a/model.onnx`.
    """
    import onnxruntime as ort

    from bigmodel_cli.devices import ort_providers

    where = label or str(path)
    if device not in DEVICES:
        raise UsageError(f"--device {device}: expected one of {', '.join(DEVICES)}")
    if threads < 0:
        raise UsageError(f"--threads {threads}: must be 0 (onnxruntime's choice) or more")
    if not Path(path).is_file():
        raise UsageError(f"{where}: file not found")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = inter_op_threads
    if spinning is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    for key, value in config.items():
        options.add_session_config_entry(key, str(value))
    providers = ort_providers(device)
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for unreadable or invalid models
        raise UsageError(f"{where}: onnxruntime cannot load it ({first_line(e, 300)})") from e
