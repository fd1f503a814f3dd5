"""Reading a recipe's `data.source` into arrays, before any cleaning or splitting.

    raw = read_source("sklearn:digits")   # RawData(kind="image", x=uint8 [N,1,8,8], ...)

Sources here: `sklearn:digits|breast_cancer|wine|iris|diabetes` (ship with scikit-learn).
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass, field

import numpy as np

from bigmodel_cli.errors import UsageError

SKLEARN_DATASETS = ("digits", "breast_cancer", "wine", "iris", "diabetes")


@dataclass
class RawData:
    kind: str  # tabular | image | text
    task: str  # classification | regression (what the data supports)
    x: np.ndarray  # float32 [N,F] or uint8 [N,C,H,W]
    y: np.ndarray  # class index (int64) or target (float32)
    features: list[str]
    classes: list[str] | None
    target: str
    sha256: str
    notes: list[str] = field(default_factory=list)


def read_source(source: str | None) -> RawData:
    if not source:
        raise UsageError("data.source is not set; give --source or set data.source in the recipe")
    scheme, _, rest = source.partition(":")
    if scheme == "sklearn" and rest:
        return _sklearn(rest)
    raise UsageError(
        f"data.source '{source}': unsupported source; this version reads sklearn:{{{'|'.join(SKLEARN_DATASETS)}}}"
    )


def _sha256(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()


def _sklearn(name: str) -> RawData:
    import sklearn.datasets as skd

    if name not in SKLEARN_DATASETS:
        near = difflib.get_close_matches(name, SKLEARN_DATASETS, n=1)
        hint = f"; did you mean 'sklearn:{near[0]}'?" if near else f"; available: {', '.join(SKLEARN_DATASETS)}"
        raise UsageError(f"data.source 'sklearn:{name}': unknown scikit-learn dataset{hint}")
    bunch = getattr(skd, f"load_{name}")()
    sha = _sha256(bunch.data, bunch.target)
    if name == "digits":
        # 8x8 grey images with values 0..16: stored as uint8 pixels 0..255 like any image
        pixels = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
        return RawData(
            kind="image",
            task="classification",
            x=pixels,
            y=bunch.target.astype(np.int64),
            features=["pixels"],
            classes=[str(c) for c in bunch.target_names],
            target="digit",
            sha256=sha,
        )
    if name == "diabetes":
        return RawData(
            kind="tabular",
            task="regression",
            x=bunch.data.astype(np.float32),
            y=bunch.target.astype(np.float32),
            features=list(bunch.feature_names),
            classes=None,
            target="progression",
            sha256=sha,
        )
    return RawData(
        kind="tabular",
        task="classification",
        x=bunch.data.astype(np.float32),
        y=bunch.target.astype(np.int64),
        features=[str(f) for f in bunch.feature_names],
        classes=[str(c) for c in bunch.target_names],
        target="target",
        sha256=sha,
    )
