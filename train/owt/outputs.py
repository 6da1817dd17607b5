"""The OUTPUT_DIR contract: what pretrain.py writes there and which files continue a run.

    OUTPUT_DIR/config.json              the run's settings and what they resolved to
    OUTPUT_DIR/checkpoint_epoch_{N}.pt  after each epoch (resumable)
    OUTPUT_DIR/checkpoint_last.pt       every --save_interval steps and on SIGINT/SIGTERM
    OUTPUT_DIR/best_model.pt            weights with the best validation loss (not resumable)
    OUTPUT_DIR/tensorboard/             the curves and text samples
    OUTPUT_DIR/.owt.lock                the one-writer lock (owt.folder_lock); .owt.lock.json
                                        names its holder while a run writes there

One run writes a folder at a time: claim_output_dir takes the folder's lock before anything
there is deleted or written. Plain paths only (no torch), so a wrong --output_dir or --resume,
or a folder in use, is reported at once.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from owt.cli import UsageError
from owt.folder_lock import hold_folder, require_held

CONFIG_FILE = "config.json"
LAST_CHECKPOINT = "checkpoint_last.pt"
BEST_MODEL = "best_model.pt"
TENSORBOARD_DIR = "tensorboard"


def epoch_checkpoint(epoch: int) -> str:
    return f"checkpoint_epoch_{epoch}.pt"


def resumable_checkpoints(output_dir: Path | str) -> list[Path]:
    """checkpoint_last.pt and checkpoint_epoch_*.pt in `output_dir`, newest first."""
    output_dir = Path(output_dir)
    paths = [output_dir / LAST_CHECKPOINT, *output_dir.glob("checkpoint_epoch_*.pt")]
    return sorted(
        (p for p in paths if p.is_file()), key=lambda p: p.stat().st_mtime_ns, reverse=True
    )


def newest_checkpoint(output_dir: Path | str) -> Path | None:
    """The checkpoint `--resume auto` would continue from (None if there is none)."""
    found = resumable_checkpoints(output_dir)
    return found[0] if found else None


def remove_stale_temp_files(output_dir: Path | str) -> None:
    """Delete temp files a killed save left behind (they never carry a checkpoint's name).
    Only the folder's lock holder may: another live run's save in progress looks the same."""
    require_held(output_dir)
    for tmp in Path(output_dir).glob(".*.pt.*.tmp"):
        tmp.unlink(missing_ok=True)


def run_folder(path: Path | str) -> Path | None:
    """The run output folder that holds the file `path` (config.json beside it), resolved; or
    None if that folder is not one."""
    folder = Path(path).resolve().parent
    return folder if (folder / CONFIG_FILE).is_file() else None


def is_main_rank() -> bool:
    """Rank 0 under torchrun, or the only process: the one that writes OUTPUT_DIR."""
    return os.environ.get("RANK", "0") == "0"


def claim_output_dir(path: Path, resume: str | None, overwrite: bool) -> None:
    """Refuse a file, an unwritable folder, a folder another run is writing (its lock is held:
    exit 2 naming that run) or one holding a run we were not told to resume. The main rank
    holds the folder's lock from here to its exit; --overwrite clears the old run only then."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"--output_dir {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UsageError(f"--output_dir {path} is not writable ({exc.strerror})") from None
    if is_main_rank():  # the other ranks never write there
        hold_folder(path, "--output_dir")
    if resume is None and resumable_checkpoints(path):
        if not overwrite:
            raise UsageError(
                f"--output_dir {path} already holds a run: pass --resume auto to continue it, "
                "--overwrite to start afresh there, or choose another --output_dir"
            )
        if is_main_rank():
            clear_run(path)


def clear_run(path: Path) -> None:
    """Remove a previous run's outputs (only the files this contract names): its curves would
    mix with the new run's in TensorBoard, and `--resume auto` could pick up its checkpoints.
    Only the folder's lock holder may: the files could be another live run's."""
    require_held(path)
    run = [path / CONFIG_FILE, path / BEST_MODEL, *resumable_checkpoints(path)]
    for file in run:
        file.unlink(missing_ok=True)
    shutil.rmtree(path / TENSORBOARD_DIR, ignore_errors=True)
    print(f"--overwrite: removed the previous run from {path}", file=sys.stderr)


def resume_path(resume: str | None, output_dir: Path) -> Path | None:
    """The checkpoint `--resume` names: 'auto' = the newest resumable one in `output_dir`
    (None, with a note, if there is none yet); a path must exist."""
    if resume is None:
        return None
    if resume == "auto":
        found = resumable_checkpoints(output_dir)
        if not found:
            print(
                "--resume auto: no checkpoint in output_dir yet, starting afresh", file=sys.stderr
            )
        return found[0] if found else None
    path = Path(resume)
    if not path.is_file():
        raise UsageError(f"Checkpoint not found: {path}")
    return path
