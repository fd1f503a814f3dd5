"""The baseline of bench_serve.py: the per-request FastAPI + onnxruntime JSON endpoint users write by hand.

    .venv/bin/python benchmarks/naive_serve.py MODEL.onnx PORT

One `session.run` per request, JSON tensors in and out, a plain `def` endpoint (FastAPI runs it in its
thread pool), uvicorn with its defaults. It answers the same V2 JSON request body as `bigmodel serve`.
"""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import Body, FastAPI

app = FastAPI()
session: ort.InferenceSession | None = None


@app.post("/v2/models/{model}/infer")
def infer(model: str, body: dict = Body(...)) -> dict:
    tensor = body["inputs"][0]
    x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {tensor["name"]: x})
    return {"model_name": model, "outputs": [{"name": n, "datatype": "FP32", "shape": list(v.shape),
                                              "data": v.ravel().tolist()} for n, v in zip(names, values, strict=True)]}


@app.get("/v2/health/ready")
def ready() -> dict:
    return {"ready": True}


if __name__ == "__main__":
    session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
