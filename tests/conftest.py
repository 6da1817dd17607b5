from __future__ import annotations

from pathlib import Path

import pytest

from textdata import english_documents, save_gpt2_tokenizer, write_layout

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def gpt2_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_gpt2_tokenizer(tmp_path_factory.mktemp("gpt2_tokenizer"))


@pytest.fixture(scope="session")
def documents() -> list[str]:
    return english_documents()


@pytest.fixture
def small_dataset(tmp_path: Path, documents: list[str]) -> Path:
    """~120 train documents and 20 validation documents of real English."""
    return write_layout(tmp_path / "data", documents[:120], documents[-20:])
