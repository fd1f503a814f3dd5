"""The baseline of bench_serve.py: the per-request FastAPI + onnxruntime endpoint users write by hand.

    .venv/bin/python benchmarks/naive_serve.py MODEL.onnx PORT

One `session.run` per request (in FastAPI's thread pool, as a plain `def` endpoint would run it), uvicorn
with its defaults. It answers the same two V2 request bodies as `bigmodel serve`, the way a user would
write them:

- JSON tensors: `json.loads` of the body, `np.asarray(data)`, outputs back as JSON lists;
- binary tensors (the tritonclient default): the JSON header is the first `Inference-Header-Content-Length`
  bytes, the input is `np.frombuffer` on the rest, outputs go back as raw bytes after a JSON header.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

app = FastAPI()
session: ort.InferenceSession | None = None


def run(name: str, x: np.ndarray) -> tuple[list[str], list[np.ndarray]]:
    names = [o.name for o in session.get_outputs()]
    return names, session.run(names, {name: x})


def infer_json(model: str, doc: dict) -> dict:
    tensor = doc["inputs"][0]
    names, values = run(tensor["name"], np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"]))
    return {"model_name": model, "outputs": [{"name": n, "datatype": "FP32", "shape": list(v.shape),
                                              "data": v.ravel().tolist()} for n, v in zip(names, values, strict=True)]}


def infer_binary(model: str, body: bytes, header_length: int) -> Response:
    tensor = json.loads(body[:header_length])["inputs"][0]
    x = np.frombuffer(body[header_length:], dtype=np.float32).reshape(tensor["shape"])
    names, values = run(tensor["name"], x)
    outputs = [{"name": n, "datatype": "FP32", "shape": list(v.shape), "parameters": {"binary_data_size": v.nbytes}}
               for n, v in zip(names, values, strict=True)]
    header = json.dumps({"model_name": model, "outputs": outputs}).encode()
    return Response(header + b"".join(v.tobytes() for v in values), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(header))})


@app.post("/v2/models/{model}/infer")
async def infer(model: str, request: Request):
    body = await request.body()
    header_length = request.headers.get("inference-header-content-length")
    if header_length is None:
        return await run_in_threadpool(infer_json, model, json.loads(body))
    return await run_in_threadpool(infer_binary, model, body, int(header_length))


@app.get("/v2/health/ready")
def ready() -> dict:
    return {"ready": True}


if __name__ == "__main__":
    session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
