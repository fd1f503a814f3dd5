"""Tiny Hugging Face model folders and data, written once per session (tests only read them)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

from hf_tiny import WORDS, write_bert, write_corpus, write_gpt2, write_llama  # noqa: E402

POSITIVE, NEGATIVE = WORDS[:9], WORDS[9:18]
NEUTRAL = WORDS[19:43]


def write_labelled(path: Path, rows: int = 160, seed: int = 0) -> Path:
    """Texts whose label is whether they hold positive or negative words (learnable in a few steps)."""
    rng = np.random.default_rng(seed)
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["text", "label"])
        for _ in range(rows):
            good = bool(rng.random() < 0.5)
            words = list(rng.choice(NEUTRAL, size=int(rng.integers(2, 8))))
            words += list(rng.choice(POSITIVE if good else NEGATIVE, size=2))
            rng.shuffle(words)
            out.writerow([" ".join(words), "positive" if good else "negative"])
    return path


@pytest.fixture(scope="session")
def hf_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hf")


@pytest.fixture(scope="session")
def bert_dir(hf_root) -> Path:
    return write_bert(hf_root / "bert")


@pytest.fixture(scope="session")
def gpt2_dir(hf_root) -> Path:
    return write_gpt2(hf_root / "gpt2")


@pytest.fixture(scope="session")
def llama_dir(hf_root) -> Path:
    return write_llama(hf_root / "llama")


@pytest.fixture(scope="session")
def labelled_csv(hf_root) -> Path:
    return write_labelled(hf_root / "labelled.csv")


@pytest.fixture(scope="session")
def corpus(hf_root) -> Path:
    return write_corpus(hf_root / "corpus.txt", paragraphs=80)
