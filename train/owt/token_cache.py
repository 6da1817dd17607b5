"""Tokenize each split once into a flat file of token ids, reused by later runs.

    DATA_DIR/token_cache/<fingerprint>/train.bin         uint16 (uint32 if the vocabulary needs it)
    DATA_DIR/token_cache/<fingerprint>/validation.bin
    DATA_DIR/token_cache/<fingerprint>/meta.json         written last: its presence means complete
    DATA_DIR/token_cache/<fingerprint>/.owt.lock         its builder's lock (owt.folder_lock)

The fingerprint covers the tokenizer and every dataset file (name, size, mtime), so a changed
tokenizer or dataset gets a fresh cache. Documents are read one parquet record batch at a time,
so memory stays bounded whatever the dataset size.

One run builds a cache: runs that share a DATA_DIR and start together take the cache folder's
lock in turn; the first builds, the others wait for it (with a progress line) and read what it
built. Every file is written under a name of its own and renamed into place, so even builders
that do not lock (a filesystem without locks) can only do the work twice, never mix it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from owt.atomic_files import total_size, write_json_atomically
from owt.dataset_layout import TEXT_COLUMN, DatasetFileError, check_parquet_files
from owt.folder_lock import sole_builder
from owt.tokenization import TextEncoder

CACHE_DIRNAME = "token_cache"
META_FILE = "meta.json"
READ_BATCH_DOCUMENTS = 1024


@dataclass
class TokenCache:
    """A complete cache: one token file per split."""

    directory: Path
    fingerprint: str
    dtype: str
    num_tokens: dict[str, int]
    num_bytes: dict[str, int] = field(default_factory=dict)  # UTF-8 bytes of each split's text

    def path(self, split: str) -> Path:
        return self.directory / f"{split}.bin"

    def tokens(self, split: str) -> np.memmap:
        """The split's tokens as a read-only memmap (never loaded into RAM whole)."""
        return np.memmap(self.path(split), dtype=self.dtype, mode="r")


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 2**16 else "uint32"


def dataset_fingerprint(files: dict[str, list[Path]], encoder: TextEncoder) -> str:
    """Hash of the tokenizer and each file's split, name, size and modification time."""
    h = hashlib.sha256(f"tokenizer={encoder.fingerprint}\n".encode())
    for split in sorted(files):
        for f in files[split]:
            st = f.stat()
            h.update(f"{split}/{f.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _text_batches(path: Path):
    try:
        batches = pq.ParquetFile(path).iter_batches(
            batch_size=READ_BATCH_DOCUMENTS, columns=[TEXT_COLUMN]
        )
        for batch in batches:
            column = batch.column(0)
            num_bytes = pc.sum(pc.binary_length(column)).as_py() or 0
            yield [t for t in column.to_pylist() if t], num_bytes
    except Exception as exc:  # a corrupt page deep inside an otherwise valid file
        raise DatasetFileError(f"Cannot read {path} as parquet: {exc}") from exc


def build_token_cache(
    files: list[Path],
    encoder: TextEncoder,
    dest: Path,
    desc: str = "tokenizing",
    documents: int | None = None,
) -> tuple[int, int]:
    """Tokenize `files` into `dest` (EOS after each document); return (tokens, UTF-8 bytes of
    the documents' text).

    `documents` (the progress bar's total) is what check_parquet_files returned for `files`,
    if the caller already checked them. Writes to a temp file beside `dest` and renames it at
    the end, so an interrupted or failed build (Ctrl-C, disk full) never leaves a file under
    `dest`.
    """
    if documents is None:
        documents = check_parquet_files(files)
    dtype = token_dtype(encoder.vocab_size)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.fchmod(fd, 0o644)
    total = total_bytes = 0
    try:
        with (
            os.fdopen(fd, "wb") as out,
            tqdm(total=documents, desc=desc, unit="doc", unit_scale=True) as bar,
        ):
            for path in files:
                for texts, num_bytes in _text_batches(path):
                    flat = encoder.encode_documents(texts, dtype)  # EOS after each
                    out.write(flat.tobytes())
                    total += flat.size
                    total_bytes += num_bytes
                    bar.update(len(texts))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return total, total_bytes


def read_token_cache(directory: Path) -> TokenCache | None:
    """The complete cache in `directory`, or None if meta.json is not there (yet)."""
    try:
        meta = json.loads((directory / META_FILE).read_text())
    except FileNotFoundError:
        return None
    return TokenCache(
        directory, directory.name, meta["dtype"], meta["num_tokens"], meta.get("num_bytes", {})
    )


def load_or_build_token_cache(
    data_dir: Path, files: dict[str, list[Path]], encoder: TextEncoder
) -> tuple[TokenCache, bool]:
    """Return the cache for these files and tokenizer, building it if needed; (cache, built).
    A complete cache is read without locking (DATA_DIR may be read-only)."""
    fingerprint = dataset_fingerprint(files, encoder)
    directory = Path(data_dir) / CACHE_DIRNAME / fingerprint
    cache = read_token_cache(directory)
    if cache is not None:
        return cache, False

    # Every split's files are checked before any tokenizing starts.
    documents = {split: check_parquet_files(paths) for split, paths in files.items()}
    directory.mkdir(parents=True, exist_ok=True)
    with sole_builder(directory, "the token cache", lambda: total_size(directory.glob("*.bin*"))):
        cache = read_token_cache(directory)  # built by the run we waited for
        if cache is not None:
            return cache, False
        return _build_splits(directory, files, encoder, documents), True


def _build_splits(
    directory: Path, files: dict[str, list[Path]], encoder: TextEncoder, documents: dict[str, int]
) -> TokenCache:
    """Tokenize every split into `directory`, then write meta.json, which completes the cache."""
    sizes = {
        split: build_token_cache(
            paths, encoder, directory / f"{split}.bin", f"tokenizing {split}", documents[split]
        )
        for split, paths in files.items()
    }
    num_tokens = {split: tokens for split, (tokens, _) in sizes.items()}
    num_bytes = {split: size for split, (_, size) in sizes.items()}
    cache = TokenCache(
        directory, directory.name, token_dtype(encoder.vocab_size), num_tokens, num_bytes
    )
    meta = {
        "fingerprint": cache.fingerprint,
        "dtype": cache.dtype,
        "num_tokens": num_tokens,
        "num_bytes": num_bytes,
        "tokenizer": encoder.name,
        "files": {s: [p.name for p in paths] for s, paths in files.items()},
    }
    # The commit point: once meta.json is there, the cache is complete.
    write_json_atomically(directory / META_FILE, meta)
    return cache
