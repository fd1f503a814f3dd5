"""`bigmodel train` reads prepared splits memory-mapped: it completes with its private memory capped below the
size of its training split (`prlimit --data` counts private memory, not the page cache of mapped files)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from bigmodel_cli.data.manifest import FORMAT_VERSION

pytestmark = pytest.mark.slow

FEATURES = 2048  # 8 KiB per row
TRAIN_ROWS = 262144  # 2 GiB of float32 features
CAP = 1536 * 2**20  # private memory allowed; `bigmodel train` on tiny data needs about 1.2 GiB (torch alone ~0.8)


def write_large_prepared(root):
    """A tabular dataset in prepare-data's layout whose train split is a 2 GiB sparse file (zeros on disk cost
    nothing) with a real signal in its first rows; validation and test are small and real."""
    rng = np.random.default_rng(0)
    signal = rng.normal(size=FEATURES).astype(np.float32)
    for split, n in (("train", TRAIN_ROWS), ("val", 2048), ("test", 64)):
        (root / split).mkdir(parents=True)
        x = np.lib.format.open_memmap(root / split / "x.npy", "w+", np.float32, (n, FEATURES))
        y = np.zeros(n, dtype=np.int64)
        head = min(n, 4096)
        x[:head] = rng.normal(size=(head, FEATURES)).astype(np.float32)
        y[:head] = (x[:head] @ signal > 0).astype(np.int64)
        x.flush()
        del x
        np.save(root / split / "y.npy", y)
    manifest = {"format_version": FORMAT_VERSION, "name": "big", "task": "classification", "kind": "tabular",
                "source": "generated", "source_sha256": "0" * 64, "fingerprint": "f" * 64, "target": "y",
                "classes": ["a", "b"], "features": [f"f{i}" for i in range(FEATURES)], "input_shape": [FEATURES],
                "input_dtype": "float32", "splits": {"train": TRAIN_ROWS, "val": 2048, "test": 64}, "seed": 0,
                "report": {}, "preprocessing": {"normalize": {"scale": 1.0, "mean": [0.0] * FEATURES,
                                                              "std": [1.0] * FEATURES, "per": "feature"}}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs util-linux prlimit")
def test_train_completes_with_private_memory_capped_below_its_training_split(tmp_path):
    data = write_large_prepared(tmp_path / "data")
    assert (data / "train/x.npy").stat().st_size > CAP
    recipe = tmp_path / "big.yaml"
    recipe.write_text(f"name: big\ndata: {{prepared: {data}}}\nmodel: {{name: mlp, args: {{hidden: [8]}}}}\n"
                      "train: {epochs: 1, batch_size: 8192, early_stopping: {patience: null}}\n")
    proc = subprocess.run(["prlimit", f"--data={CAP}", sys.executable, "-m", "bigmodel_cli", "train", "-r",
                           str(recipe), "--run-dir", str(tmp_path / "run"), "--json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CI": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["steps"] == TRAIN_ROWS // 8192 and summary["last_metrics"]["val_loss"] is not None


def test_the_same_cap_stops_a_process_that_copies_the_split(tmp_path):
    """The control: loading the split into memory, as the trainer did before, fails under the same cap."""
    data = write_large_prepared(tmp_path / "data")
    code = f"import numpy as np; x = np.load('{data}/train/x.npy'); print(float(x[-1].sum()))"
    proc = subprocess.run(["prlimit", f"--data={CAP}", sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0 and "MemoryError" in proc.stderr
