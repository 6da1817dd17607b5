"""The dataset layout every script agrees on, and the checks that a folder holds one.

DATA_DIR/train/*.parquet        one document per row, column "text"
DATA_DIR/validation/*.parquet
DATA_DIR/dataset_info.txt       human-readable provenance and sizes
"""

from __future__ import annotations

from pathlib import Path

from owt.cli import UsageError

SPLITS = ("train", "validation")
TEXT_COLUMN = "text"
INFO_FILE = "dataset_info.txt"

HOW_TO_CREATE = (
    "Create it with either\n"
    "  uv run train/download_subset.py --output_dir {d}\n"
    "  uv run train/prepare_subset.py --data_dir {d}\n"
    "or, for the full OpenWebText (~24 GB):\n"
    "  uv run train/download_openwebtext.py --output_dir {d}"
)


class DatasetNotFoundError(UsageError):
    """DATA_DIR lacks a split; the message says which commands create it."""


class DatasetFileError(UsageError):
    """A parquet file of the layout is unreadable or lacks the text column."""


def split_files(data_dir: Path | str, split: str) -> list[Path]:
    """The parquet files of one split, sorted by name (empty if the folder is missing)."""
    folder = Path(data_dir) / split
    return sorted(folder.glob("*.parquet")) if folder.is_dir() else []


def find_dataset(data_dir: Path | str) -> dict[str, list[Path]]:
    """Return {split: parquet files} for train and validation, or raise DatasetNotFoundError."""
    data_dir = Path(data_dir)
    files = {split: split_files(data_dir, split) for split in SPLITS}
    missing = [split for split, paths in files.items() if not paths]
    if missing:
        what = " and ".join(f"{split}/*.parquet" for split in missing)
        raise DatasetNotFoundError(
            f"Dataset not found: {data_dir} (no {what}). " + HOW_TO_CREATE.format(d=data_dir)
        )
    return files


def check_parquet_files(files: list[Path]) -> int:
    """Open each file's footer (no data is read): raise DatasetFileError for an unreadable file
    or one without the text column; return the total number of documents."""
    import pyarrow.parquet as pq  # here: the other checks of this module need no pyarrow

    documents = 0
    for path in files:
        try:
            parquet = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError...
            raise DatasetFileError(f"Cannot read {path} as parquet: {exc}") from exc
        if TEXT_COLUMN not in parquet.schema_arrow.names:
            raise DatasetFileError(
                f"{path} has no '{TEXT_COLUMN}' column (columns: {parquet.schema_arrow.names})."
            )
        documents += parquet.metadata.num_rows
    return documents
