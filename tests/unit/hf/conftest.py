"""Tiny Hugging Face model folders and data, written once per session (tests only read them)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")

from hf_tiny import write_bert, write_corpus, write_gpt2, write_labelled, write_llama  # noqa: E402


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
