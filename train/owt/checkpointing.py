"""Checkpoint files: atomic writes, safe reads, and rebuilding a model from a checkpoint alone.

A checkpoint is a dict of tensors and plain Python values, so `torch.load(weights_only=True)`
reads it and a crafted pickle cannot run code:

    model            state dict (transformers Llama key names)
    model_config     ModelConfig.to_dict()
    tokenizer_name   what --tokenizer_name was
    step, epoch      optimizer steps done, epochs completed
    val_loss         validation loss when written (None if not evaluated)
    ...              resumable checkpoints add optimizer and training state

The format does not depend on how the run was launched: one process, DDP and FSDP (which
gathers its shards first, see distributed.py) all write full, unsharded tensors, so any of
them resumes a checkpoint written by another (same global batch, see Trainer.restore).
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from model import LlamaForTraining, ModelConfig


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, unsafe or from another model."""


def save_checkpoint(state: dict[str, Any], path: Path | str) -> Path:
    """Write `state` to `path` atomically: a temp file in the same folder, fsync, then rename.

    A crash or SIGKILL at any moment leaves either the previous file or the new one, never a
    partial file under `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        # torch.save reports a failed write as a RuntimeError; surface a full disk as such.
        cause = exc
        while cause is not None and getattr(cause, "errno", None) != errno.ENOSPC:
            cause = cause.__context__
        if cause is not None and cause is not exc:
            raise cause from None
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with weights_only=True; raise CheckpointError with a clear reason."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"Cannot read checkpoint {path}: it is truncated, corrupt or not a safe "
            f"owt-pretrain checkpoint ({type(exc).__name__})."
        ) from exc
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise CheckpointError(f"{path} is not an owt-pretrain checkpoint (no model/model_config).")
    return state


def model_from_checkpoint(
    path: Path | str, device: str | torch.device = "cpu"
) -> tuple[LlamaForTraining, dict[str, Any]]:
    """Rebuild the model a checkpoint was saved from and load its weights (eval mode)."""
    state = load_checkpoint(path)
    config = ModelConfig.from_dict(state["model_config"])
    model = LlamaForTraining(config)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), state


def resumable_checkpoints(output_dir: Path | str) -> list[Path]:
    """checkpoint_last.pt and checkpoint_epoch_*.pt in `output_dir`, newest first."""
    output_dir = Path(output_dir)
    paths = [output_dir / "checkpoint_last.pt", *output_dir.glob("checkpoint_epoch_*.pt")]
    return sorted(
        (p for p in paths if p.is_file()), key=lambda p: p.stat().st_mtime_ns, reverse=True
    )


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


def remove_stale_temp_files(output_dir: Path | str) -> None:
    """Delete temp files a killed save left behind (they never carry a checkpoint's name)."""
    for tmp in Path(output_dir).glob(".*.pt.*.tmp"):
        tmp.unlink(missing_ok=True)
