"""Streaming prepare-data: the in-memory results of commit c423ab6, a fingerprint of what was written, bounded memory.

The sources of `golden_cases.py` are prepared with chunks far smaller than usual (a few
rows per record batch and per chunk of the per-row arrays) so that every pass crosses many
chunk boundaries; the manifests and the bytes of every .npy file must equal what the
in-memory code of c423ab6 wrote (`golden/c423ab6.json`).
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from bigmodel_cli.data import arrays, clean, prepare_table, sources, split, tables
from bigmodel_cli.data import manifest as manifests
from tests.unit.data.golden_cases import CASES, run_case

GOLDEN = json.loads((Path(__file__).with_name("golden") / "c423ab6.json").read_text())


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(sources, "MAP_BYTES", 0)  # every table file streamed into a memory-mapped Arrow file
    monkeypatch.setattr(tables, "BLOCK_BYTES", 4096)  # a CSV/JSONL block of a few dozen rows
    monkeypatch.setattr(tables, "BATCH_ROWS", 37)
    for module in (split, clean, prepare_table):
        monkeypatch.setattr(module, "STEP", 53)
    monkeypatch.setattr(arrays, "CHUNK_BYTES", 5000)  # a few images per copied chunk
    monkeypatch.setattr(arrays, "SMALL_BYTES", 0)  # every scratch array file-backed


@pytest.mark.parametrize("case", list(CASES))
def test_streamed_output_equals_the_in_memory_prepare_data_of_c423ab6(tmp_path, case, small_chunks):
    manifest, digests = run_case(case, tmp_path)
    assert digests == GOLDEN[case]["arrays"]  # every x.npy and y.npy, byte for byte
    assert manifest == GOLDEN[case]["manifest"]  # classes, features, fitted values, report


def test_fingerprint_covers_every_array_byte_and_the_preprocessing(tmp_path):
    manifest, _ = run_case("table-defaults", tmp_path)
    out = tmp_path / "out"
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["format_version"] == 2 and len(on_disk["fingerprint"]) == 64
    assert manifests.fingerprint(out, on_disk) == on_disk["fingerprint"]
    digest = hashlib.sha256()
    for s in manifests.SPLITS:
        for name in ("x.npy", "y.npy"):
            digest.update((out / s / name).read_bytes())
    digest.update(json.dumps(on_disk["preprocessing"], sort_keys=True, separators=(",", ":")).encode())
    assert digest.hexdigest() == on_disk["fingerprint"]
    x = np.load(out / "val/x.npy", mmap_mode="r+")
    x[3, 1] += 1  # one value of the validation split changes
    x.flush()
    del x
    assert manifests.fingerprint(out, on_disk) != on_disk["fingerprint"]
    changed = {**on_disk["preprocessing"], "normalize": {**on_disk["preprocessing"]["normalize"], "scale": 2.0}}
    assert manifests.fingerprint(out, {**on_disk, "preprocessing": changed}) != on_disk["fingerprint"]


def test_format_1_data_is_refused_with_the_fix(tmp_path):
    run_case("sklearn-wine", tmp_path)
    path = tmp_path / "out" / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "format_version": 1}))
    with pytest.raises(Exception, match="format_version 1 is not 2; rerun prepare-data"):
        manifests.read(tmp_path / "out")
