"""Checkpoint files and the training state they hold: atomic writes, safe reads, resume.

A checkpoint is a dict of tensors and plain Python values, so `torch.load(weights_only=True)`
reads it and a crafted pickle cannot run code:

    format_version   CHECKPOINT_FORMAT (absent in checkpoints written before it was recorded: 1)
    model            state dict (transformers Llama key names)
    model_config     ModelConfig.to_dict()
    tokenizer_name   what --tokenizer_name was
    step, epoch      optimizer steps done, epochs completed
    val_loss         validation loss when written (None if not evaluated)
    val_bpb          validation bits per byte, likewise
    optimizer, progress, signature, rng      resumable checkpoints only

The format does not depend on how the run was launched: one process, DDP and FSDP (which
gathers its shards first, see distributed.py) all write full, unsharded tensors, so any of
them resumes a checkpoint written by another with the same global batch.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from model import LlamaForTraining, ModelConfig
from owt import distributed
from owt.atomic_files import current_umask
from owt.cli import UsageError, no_space_left


class CheckpointError(UsageError):
    """A checkpoint is missing, truncated, unsafe, of another format or from another run."""


CHECKPOINT_FORMAT = 1
"""The layout above. Raise it with any change that older code would misread, so that it stops
with a clear error instead; adding a key older code can ignore needs no new format."""
FORMAT_KEY = "format_version"


# ---- files ------------------------------------------------------------------------------------


def save_checkpoint(state: dict[str, Any], path: Path | str) -> Path:
    """Write `state` to `path` atomically: a temp file in the same folder, fsync, then rename.

    A crash or SIGKILL at any moment leaves either the previous file or the new one, never a
    partial file under `path`. A full disk is a UsageError saying the older files are intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    SAVES_IN_PROGRESS.add(tmp)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        # torch.save reports a failed write as a RuntimeError raised from the OSError.
        if no_space_left(exc):
            raise UsageError(
                f"No space left on the device while writing {path}; the previous checkpoints "
                "are intact. Free some space, then resume."
            ) from None
        raise
    finally:
        SAVES_IN_PROGRESS.discard(tmp)
    return path


# Temp files of saves under way, for abandon_saves: a process quitting at once (a second
# Ctrl-C) removes them instead of leaving them for the next run to clean up.
SAVES_IN_PROGRESS: set[str] = set()


def abandon_saves() -> None:
    """Delete the temp files of saves in progress (the files they replace stay as they were)."""
    for tmp in list(SAVES_IN_PROGRESS):
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def load_checkpoint(
    path: Path | str, map_location: str | torch.device = "cpu", mmap: bool = False
) -> dict[str, Any]:
    """Read a checkpoint with weights_only=True; raise CheckpointError with a clear reason.
    mmap: map the tensors' bytes instead of reading them (for a look at the metadata)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:
        raise CheckpointError(
            f"Cannot read checkpoint {path}: it is truncated, corrupt or not a safe "
            f"owt-pretrain checkpoint ({type(exc).__name__})."
        ) from exc
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise CheckpointError(f"{path} is not an owt-pretrain checkpoint (no model/model_config).")
    check_format(state, path)
    try:
        ModelConfig.from_dict(state["model_config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"Cannot load {path}: {exc}.") from None
    return state


def check_format(state: dict[str, Any], path: Path) -> None:
    """Raise CheckpointError unless this code reads `state`'s format. A checkpoint without the
    key was written before formats were recorded, in format 1."""
    found = state.get(FORMAT_KEY, 1)
    if found == CHECKPOINT_FORMAT:
        return
    if isinstance(found, int) and not isinstance(found, bool) and found > CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is checkpoint format {found}, newer than this code reads (format "
            f"{CHECKPOINT_FORMAT}): update owt-pretrain (git pull, uv sync) to load it."
        )
    raise CheckpointError(
        f"{path} is of an unknown checkpoint format {found!r}; this code reads format "
        f"{CHECKPOINT_FORMAT}."
    )


def model_from_checkpoint(
    path: Path | str, device: str | torch.device = "cpu"
) -> tuple[LlamaForTraining, dict[str, Any]]:
    """Rebuild the model a checkpoint was saved from and load its weights (eval mode)."""
    state = load_checkpoint(path)
    model = LlamaForTraining(ModelConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), state


# ---- the training state -----------------------------------------------------------------------


@dataclass
class Progress:
    """Where training is; saved in every resumable checkpoint so a run resumes exactly."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0
    best_val_loss: float = math.inf
    best_val_bpb: float | None = None  # of the validation with the best loss
    skipped_steps: int = 0  # non-finite updates skipped
    elapsed_seconds: float = 0.0  # training time so far: what --max_time counts


def run_signature(
    model_config: ModelConfig,
    dataset_fingerprint: str,
    max_length: int,
    seed: int,
    sequences_per_step: int,
) -> dict[str, Any]:
    """What must match for a resume to continue the same run (sequences_per_step is global:
    batch_size x gradient_accumulation_steps x processes)."""
    return {
        "model_config": model_config.to_dict(),
        "dataset_fingerprint": dataset_fingerprint,
        "max_length": max_length,
        "seed": seed,
        "sequences_per_step": sequences_per_step,
    }


def signature_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'key: saved -> current' for every differing value; nested dicts compare key by key."""

    def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        flat = {}
        for key, value in values.items():
            if isinstance(value, dict):
                flat |= flatten(value, f"{prefix}{key}.")
            else:
                flat[prefix + key] = value
        return flat

    saved, current = flatten(saved), flatten(current)
    return [
        f"{key}: {saved.get(key)!r} -> {current.get(key)!r}"
        for key in sorted(set(saved) | set(current))
        if saved.get(key) != current.get(key)
    ]


def global_batch_hint(saved: int | None, batch_size: int, accumulation: int, world: int) -> str:
    """How to resume with another number of processes: keep the global batch."""
    current = batch_size * accumulation * world
    if saved is None or saved == current:
        return ""
    hint = (
        ". sequences_per_step is batch_size x gradient_accumulation_steps x processes "
        f"({batch_size} x {accumulation} x {world} now); any number of processes resumes a run "
        "if that product is unchanged"
    )
    if saved % (batch_size * world) == 0:
        hint += f": here --gradient_accumulation_steps {saved // (batch_size * world)}"
    return hint


def training_state(
    model: torch.nn.Module,
    optimizer: Any,
    progress: Progress,
    *,
    signature: dict[str, Any],
    tokenizer_name: str,
    val_loss: float | None,
    val_bpb: float | None = None,
    fsdp: bool = False,
) -> dict[str, Any]:
    """The checkpoint dict: weights only without `optimizer`, resumable with it. Under FSDP a
    collective (every rank calls it; rank 0 gets the full tensors, the others {})."""
    state = {
        FORMAT_KEY: CHECKPOINT_FORMAT,
        "model": distributed.gather_model_state(model) if fsdp else model.state_dict(),
        "model_config": model.config.to_dict(),
        "tokenizer_name": tokenizer_name,
        "step": progress.step,
        "epoch": progress.epoch,
        "val_loss": val_loss,
        "val_bpb": val_bpb,
    }
    if optimizer is not None:
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        state |= {
            "optimizer": (
                distributed.gather_optimizer_state(model, optimizer)
                if fsdp
                else optimizer.state_dict()
            ),
            "progress": asdict(progress),
            "signature": signature,
            "rng": rng,
        }
    return state


def check_resumable(
    state: dict[str, Any], path: Path, signature: dict[str, Any], hint: str
) -> None:
    """Raise CheckpointError unless `state` continues the run `signature` describes."""
    if "progress" not in state:
        raise CheckpointError(
            f"{path} holds weights only (e.g. best_model.pt); resume from a "
            "checkpoint_epoch_N.pt or checkpoint_last.pt"
        )
    differences = signature_differences(state["signature"], signature)
    if differences:
        raise CheckpointError(
            f"Cannot resume from {path}: this run differs in " + "; ".join(differences) + hint
        )


def restore_training_state(
    state: dict[str, Any],
    model: torch.nn.Module,
    optimizer: Any,
    fsdp: bool = False,
) -> Progress:
    """Load weights, optimizer state and RNG from a checked resumable `state`; its Progress.
    Checkpoints hold full tensors whatever wrote them: under FSDP they are sharded on the way in
    (every rank calls this with the full state)."""
    if fsdp:
        distributed.load_model_state(model, state["model"])
        distributed.load_optimizer_state(model, optimizer, state["optimizer"])
    else:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["cpu"].cpu())
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
    return Progress(**state["progress"])
