"""Fixtures shared by the test modules: the real GPT-2 tokenizer, real English documents, and
the datasets the end-to-end runs train on.

A session fixture is built once per pytest-xdist worker (each worker is its own session). The
datasets below are read-only for the tests that use them, except for the token cache that the
first run builds into DATA_DIR/token_cache/ and later runs reuse: tests that need a cache to be
built (or not to exist) write their own layout with textdata.write_layout.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from textdata import english_documents, save_gpt2_tokenizer, tiny_layout, write_layout


@pytest.fixture(scope="session")
def gpt2_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_gpt2_tokenizer(tmp_path_factory.mktemp("gpt2_tokenizer"))


@pytest.fixture(scope="session")
def documents() -> list[str]:
    return english_documents()


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory, documents: list[str]) -> Path:
    """~120 train documents and 20 validation documents of real English."""
    return write_layout(tmp_path_factory.mktemp("small") / "data", documents[:120], documents[-20:])


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory, documents: list[str]) -> Path:
    """~4.5k train tokens (textdata.tiny_layout): 17 optimizer steps of 8 windows of 33 tokens
    per epoch. What the resume, fault and torchrun tests train on."""
    return tiny_layout(tmp_path_factory.mktemp("tiny") / "data", documents)
