"""Build the dataset layout (see dataset_layout.py) from parquet shards, safely.

Two recipes share these parts:

* subset (prepare_subset.py): a seeded sample of documents worth about N GPT-2 tokens and a seeded
  held-out validation set, copied out of the downloaded shard(s): `choose_documents`, `write_rows`.
* full (download_openwebtext.py): the shards themselves become train/ (moved, never copied) and a
  seeded held-out set is carved out of one shard into validation/: `carve_validation`.

Rules both follow:

* Everything is built in DATA_DIR/.building/ and published by renames: the old validation/ goes
  first, then train/, dataset_info.txt, and validation/ last. find_dataset() calls a dataset without
  validation/ missing, so a crash at any point leaves either the finished dataset or one training
  refuses to use, never a half-written one it would train on. A re-run finishes the publish.
* dataset_info.txt records a fingerprint of the inputs and settings. Same fingerprint: nothing to
  do. A different one: refuse unless --overwrite.

Token estimates: GPT-2's BPE averages about 4.5 bytes of UTF-8 text per token on English web text
(OpenWebText: about 40 GB of text for about 9.0 B tokens, nanoGPT's count), and about 0.4 tokens
per byte of OpenWebText's parquet shards (about 9.0 B tokens from 80 shards of about 300 MB).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from owt.atomic_files import write_text_atomically
from owt.cli import UsageError
from owt.dataset_layout import INFO_FILE, SPLITS, TEXT_COLUMN, split_files
from owt.token_cache import token_dtype

BUILD_DIR = ".building"
SHARDS_DIR = "shards"  # download_subset.py saves shards here, prepare_subset.py reads them
VALIDATION_FILE = "validation-00000.parquet"
BYTES_PER_TOKEN = 4.5
TOKENS_PER_PARQUET_BYTE = 0.4
GPT2_VOCAB_SIZE = 50257
ROWS_PER_GROUP = 1000  # about 5 MB of web text: readers stream the output in small steps


class LayoutError(UsageError):
    """Bad input or a layout that must not be touched; the message names the fix (exit status 2)."""


# -- reading shards -----------------------------------------------------------------------------


def open_shard(path: Path) -> pq.ParquetFile:
    """Open a parquet shard, or raise LayoutError if it is unreadable or has no text column."""
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError...
        raise _unreadable(path, exc) from exc
    if TEXT_COLUMN not in parquet.schema_arrow.names:
        columns = ", ".join(parquet.schema_arrow.names)
        raise LayoutError(
            f"{path} has no '{TEXT_COLUMN}' column (columns: {columns}). Each shard needs one "
            f"document per row in a '{TEXT_COLUMN}' column."
        )
    return parquet


def _unreadable(path: Path, exc: Exception) -> LayoutError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return LayoutError(
        f"Cannot read {path} as parquet ({reason}). Delete it and download it again."
    )


def _read_text(parquet: pq.ParquetFile, row_group: int, path: Path) -> pa.Table:
    try:
        return parquet.read_row_group(row_group, columns=[TEXT_COLUMN])
    except Exception as exc:  # a corrupt page only shows up when it is decoded
        raise _unreadable(path, exc) from exc


def document_bytes(shards: list[Path]) -> np.ndarray:
    """UTF-8 length of every document of `shards`, in order (a null document counts as 0)."""
    lengths = [np.zeros(0, dtype=np.int64)]
    for path in shards:
        parquet = open_shard(path)
        for group in range(parquet.num_row_groups):
            text = _read_text(parquet, group, path).column(TEXT_COLUMN)
            lengths.append(pc.fill_null(pc.binary_length(text), 0).to_numpy().astype(np.int64))
    return np.concatenate(lengths)


def split_summary(files: list[Path]) -> tuple[int, int]:
    """(documents, bytes on disk) of parquet `files`, from their footers alone."""
    documents = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    return documents, sum(f.stat().st_size for f in files)


# -- choosing documents -------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """Row indices (over all shards, in order), sorted, disjoint."""

    train: np.ndarray
    validation: np.ndarray


def choose_documents(
    doc_bytes: np.ndarray,
    *,
    seed: int,
    validation_documents: int | None = None,
    validation_ratio: float | None = None,
    num_documents: int | None = None,
    target_tokens: int = 5_000_000,
) -> Selection:
    """Pick a seeded validation set and a disjoint seeded training sample.

    Non-empty documents are shuffled with `seed`; validation takes the first V of them, training
    the next ones. The same inputs always give the same selection.

    Args:
        doc_bytes (`np.ndarray`): UTF-8 length of each document (see `document_bytes`).
        seed (`int`): seed of the shuffle.
        validation_documents (`int`, *optional*): V. Exactly one of this and `validation_ratio`.
        validation_ratio (`float`, *optional*): V = ratio × the number of training documents.
        num_documents (`int`, *optional*): training documents; 0 = every document not held out;
            None = as many as it takes to reach `target_tokens`.
        target_tokens (`int`): estimated GPT-2 tokens of the training sample, at `BYTES_PER_TOKEN`
            (the last document may overshoot it by one document).

    Raises:
        `LayoutError`: there are not enough documents for the validation set plus one to train on.
    """
    if (validation_documents is None) == (validation_ratio is None):
        raise ValueError("give exactly one of validation_documents and validation_ratio")
    order = np.random.default_rng(seed).permutation(len(doc_bytes))
    order = order[doc_bytes[order] > 0]

    def train_count(candidates: np.ndarray) -> int:
        if num_documents == 0:
            return len(candidates)
        if num_documents is not None:
            return min(num_documents, len(candidates))
        reach = np.cumsum(doc_bytes[candidates])
        return min(
            len(candidates), int(np.searchsorted(reach, target_tokens * BYTES_PER_TOKEN)) + 1
        )

    if validation_ratio is not None:
        if num_documents == 0:  # V + T = all, V = ratio × T
            held_out = round(len(order) * validation_ratio / (1 + validation_ratio))
        else:
            held_out = round(validation_ratio * train_count(order))
        held_out = max(1, held_out)
    else:
        held_out = validation_documents
    if held_out < 1 or held_out >= len(order):
        raise LayoutError(
            f"Cannot hold out {held_out} validation documents from {len(order)} non-empty "
            "documents: keep it between 1 and the number of documents minus one (lower "
            "--validation_documents / --validation_ratio, or download more shards)."
        )
    rest = order[held_out:]
    return Selection(np.sort(rest[: train_count(rest)]), np.sort(order[:held_out]))


# -- writing ----------------------------------------------------------------------------------


def write_rows(shards: list[Path], rows: np.ndarray, destination: Path) -> int:
    """Copy the documents at `rows` (sorted indices over all `shards`) into one parquet file.

    Streams one row group at a time, writes `destination` atomically (temp file, then rename) and
    returns the number of documents written.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.with_name(destination.name + ".tmp")
    schema = pa.schema([(TEXT_COLUMN, pa.string())])
    pending: list[pa.Table] = []
    written = 0
    try:
        with pq.ParquetWriter(tmp, schema) as writer:

            def flush() -> None:
                if pending:
                    writer.write_table(pa.concat_tables(pending).cast(schema))
                    pending.clear()

            first_row = 0
            for path in shards:
                parquet = open_shard(path)
                for group in range(parquet.num_row_groups):
                    size = parquet.metadata.row_group(group).num_rows
                    lo, hi = np.searchsorted(rows, [first_row, first_row + size])
                    if hi > lo:
                        table = _read_text(parquet, group, path)
                        pending.append(table.take(pa.array(rows[lo:hi] - first_row)))
                        written += int(hi - lo)
                        if sum(t.num_rows for t in pending) >= ROWS_PER_GROUP:
                            flush()
                    first_row += size
            flush()
        os.replace(tmp, destination)
    finally:
        tmp.unlink(missing_ok=True)
    return written


def carve_validation(source: Path, build: Path, *, count: int, seed: int) -> Selection:
    """Split the shard `source` into build/train/<its name> and build/validation/.

    `count` seeded documents go to validation, all the other non-empty ones to train. Crash-safe:
    build/validation/ appears (by rename) only once both outputs are complete, and `source` is
    deleted after that; until then a re-run just carves again (same seed, same result).
    See `carve_done`.
    """
    selection = choose_documents(
        document_bytes([source]), seed=seed, validation_documents=count, num_documents=0
    )
    staging = build / "validation.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    write_rows([source], selection.train, build / "train" / source.name)
    write_rows([source], selection.validation, staging / VALIDATION_FILE)
    _remove(build / "validation")
    os.replace(staging, build / "validation")
    source.unlink()
    return selection


def carve_done(build: Path) -> bool:
    return (build / "validation").is_dir()


# -- fingerprints, dataset_info.txt, publishing ---------------------------------------------------


def fingerprint(settings: dict) -> str:
    """Short hash of everything that decides a layout's content (JSON-serialisable)."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def format_info(fields: list[tuple[str, str]]) -> str:
    """dataset_info.txt: one `key: value` per line; a multi-line value is indented below its key."""
    lines = []
    for key, value in fields:
        if "\n" in value:
            lines.append(f"{key}:")
            lines.extend(f"  {line}" for line in value.splitlines())
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines) + "\n"


def read_info(path: Path) -> dict[str, str]:
    """The single-line `key: value` fields of a dataset_info.txt ({} if absent)."""
    if not path.is_file():
        return {}
    fields = {}
    for line in path.read_text(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep and key and not key[0].isspace():
            fields[key.strip()] = value.strip()
    return fields


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _layout_present(data_dir: Path) -> list[str]:
    return [name for name in (*SPLITS, INFO_FILE) if (data_dir / name).exists()]


def _finish_publish(data_dir: Path) -> None:
    build = data_dir / BUILD_DIR
    if (build / "validation").exists():
        _remove(data_dir / "validation")  # out of service first: find_dataset() now says missing
    for name in ("train", INFO_FILE, "validation"):
        if (build / name).exists():
            _remove(data_dir / name)
            os.replace(build / name, data_dir / name)
    shutil.rmtree(build, ignore_errors=True)


def check_existing(data_dir: Path, fingerprint: str, *, overwrite: bool) -> bool:
    """Whether `data_dir` already holds exactly the layout `fingerprint` describes.

    First finishes a publish that a crash interrupted. Returns True if the complete layout with
    this fingerprint is there (nothing to do), False if there is no layout or `overwrite` allows
    replacing it (`publish` will).

    Raises:
        `LayoutError`: a different (or unidentifiable) layout is there and `overwrite` is False.
    """
    if (data_dir / BUILD_DIR / INFO_FILE).exists():
        _finish_publish(data_dir)
    present = _layout_present(data_dir)
    if not present:
        return False
    complete = all(split_files(data_dir, split) for split in SPLITS)
    existing = read_info(data_dir / INFO_FILE).get("fingerprint")
    if complete and existing == fingerprint:
        shutil.rmtree(data_dir / BUILD_DIR, ignore_errors=True)  # leftovers of a finished build
        return True
    if overwrite:
        return False
    reason = (
        "made from other sources or settings"
        if existing
        else f"not made by these scripts (no fingerprint in {INFO_FILE})"
    )
    raise LayoutError(
        f"{data_dir} already holds a dataset layout ({', '.join(present)}) {reason}. Pass "
        "--overwrite to replace it (downloaded shards are kept), or choose another directory."
    )


def start_build(data_dir: Path, fingerprint: str, *, keep: tuple[str, ...] = ()) -> Path:
    """DATA_DIR/.building/, for the build `fingerprint` describes.

    What an interrupted build with other settings left there is removed, except the entries named
    in `keep` (e.g. verified downloads worth reusing).
    """
    build = data_dir / BUILD_DIR
    stamp = build / "FINGERPRINT"
    if build.exists() and (not stamp.is_file() or stamp.read_text().strip() != fingerprint):
        for entry in build.iterdir():
            if entry.name not in keep:
                _remove(entry)
    build.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint + "\n")
    return build


def publish(data_dir: Path, fields: list[tuple[str, str]], fingerprint: str) -> None:
    """Write dataset_info.txt and move the finished build into place.

    dataset_info.txt gets `fields` (provenance), then the documents and bytes of each split, the
    date and `fingerprint`. See the module docstring for the order of the moves and why.
    """
    build = data_dir / BUILD_DIR
    for split in SPLITS:
        documents, size = split_summary(split_files(build, split))
        fields = [*fields, (split, f"{documents:,} documents, {size:,} bytes of parquet")]
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    info = format_info([*fields, ("created", created), ("fingerprint", fingerprint)])
    write_text_atomically(build / INFO_FILE, info)  # from here on, a re-run finishes this publish
    _finish_publish(data_dir)


def token_cache_bytes(parquet_bytes: int, vocab_size: int = GPT2_VOCAB_SIZE) -> int:
    """Estimated size of the token cache pretrain.py builds (DATA_DIR/token_cache/) for shards
    of `parquet_bytes` bytes of OpenWebText-like text."""
    itemsize = np.dtype(token_dtype(vocab_size)).itemsize
    return int(parquet_bytes * TOKENS_PER_PARQUET_BYTE * itemsize)
