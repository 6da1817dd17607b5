"""The dataset layout every script agrees on.

DATA_DIR/train/*.parquet        one document per row, column "text"
DATA_DIR/validation/*.parquet
DATA_DIR/dataset_info.txt       human-readable provenance and sizes
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

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


class DatasetNotFoundError(FileNotFoundError):
    """DATA_DIR lacks a split; the message says which commands create it."""


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


class DataScriptError(RuntimeError):
    """A data script failed for a reason it can state in one line; exits with `exit_code`.

    1 = the hub or network failed (re-running resumes); 2 = bad input or settings (fix, re-run).
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def run_script(main: Callable[[], None]) -> None:
    """Run a data script's `main`: one-line errors and exit statuses instead of tracebacks."""
    try:
        main()
    except DataScriptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print(
            "\nInterrupted. Nothing half-written is used: re-run the same command to continue.",
            file=sys.stderr,
        )
        sys.exit(130)
