"""The models evaluate.py scores, behind one face: token ids in, next-token logits out.

    model = load_checkpoint_model("checkpoints/best_model.pt", device)   # a run of ours
    model = load_hf_model("gpt2", device)                              # any transformers causal LM
    logits = model.logits(input_ids)                                   # (B, T, vocab)

Each comes with its own tokenizer (the one it was trained with) and the longest context it was
trained on, so that every model can be scored on the same text, in windows it knows.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from owt.checkpointing import load_checkpoint, model_from_checkpoint
from owt.cli import UsageError
from owt.outputs import CONFIG_FILE, run_folder
from owt.sampling import checkpoint_tokenizer


@dataclass
class EvalModel:
    """A causal LM ready to score: `logits(ids)` runs it (no grad; autocast is the caller's)."""

    name: str
    num_parameters: int
    tokenizer: Any  # a transformers tokenizer
    context_length: int  # the longest window to score it on (see trained_length)
    logits: Callable[[torch.Tensor], torch.Tensor]
    step: int | None = None  # optimizer steps of a checkpoint of ours
    run_dir: Path | None = None  # the pretrain.py output folder a checkpoint belongs to


def unlimited(tokenizer: Any) -> Any:
    """`tokenizer` without its model_max_length: documents are tokenized whole and cut into
    windows here, so transformers' "sequence length is longer than..." warning is noise."""
    tokenizer.model_max_length = 1 << 62
    return tokenizer


def trained_length(run_dir: Path | None, max_position_embeddings: int) -> int:
    """The window length the run trained on (config.json's max_length), capped by the model's
    positions: RoPE positions past it were never seen, and scoring there would measure
    extrapolation, not the model."""
    if run_dir is not None:
        try:
            args = json.loads((run_dir / CONFIG_FILE).read_text())["args"]
            return min(int(args["max_length"]), max_position_embeddings)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # an unreadable config.json: the model's own limit
    return max_position_embeddings


def load_checkpoint_model(
    path: Path | str, device: torch.device, tokenizer_name: str | None = None
) -> EvalModel:
    """A checkpoint written by pretrain.py (best_model.pt, checkpoint_*.pt) and its tokenizer.

    Raises CheckpointError (not a checkpoint) or TokenizerLoadError (its tokenizer cannot be
    loaded, or has more tokens than the model's vocabulary), each with what to pass instead.
    """
    path = Path(path)
    model, state = model_from_checkpoint(path, device)
    tokenizer = unlimited(checkpoint_tokenizer(state, tokenizer_name))
    run_dir = run_folder(path)

    def logits(ids: torch.Tensor) -> torch.Tensor:
        return model(ids)[0]

    return EvalModel(
        name=str(path),
        num_parameters=model.num_parameters(),
        tokenizer=tokenizer,
        context_length=trained_length(run_dir, model.config.max_position_embeddings),
        logits=logits,
        step=state.get("step"),
        run_dir=run_dir,
    )


def _hf_load_error(name: str, exc: BaseException) -> str:
    return (
        f"--hf_model {name}: cannot load it as a transformers causal LM ({type(exc).__name__}). "
        "Pass a model folder (e.g. one export_hf.py wrote) or a model name on the hub; offline, "
        "set HF_ENDPOINT to a mirror or pass a local folder."
    )


def load_hf_model(name: str, device: torch.device) -> EvalModel:
    """Any transformers causal LM, by hub name or local folder (export_hf.py's output too), in
    fp32 on `device` with its own tokenizer. Raises UsageError saying what to check."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = unlimited(AutoTokenizer.from_pretrained(name))
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
    except Exception as exc:  # OSError, ValueError, HTTP errors...
        raise UsageError(_hf_load_error(name, exc)) from exc
    model = model.to(device).eval()
    config = model.config
    if len(tokenizer) > config.vocab_size:
        raise UsageError(
            f"--hf_model {name}: its tokenizer has {len(tokenizer)} tokens but the model's "
            f"vocab_size is {config.vocab_size}: the folder mixes two models' files."
        )
    context = getattr(config, "max_position_embeddings", None) or config.n_positions

    def logits(ids: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids, use_cache=False).logits

    return EvalModel(
        name=name,
        num_parameters=model.num_parameters(),
        tokenizer=tokenizer,
        context_length=int(context),
        logits=logits,
    )


def load_model(
    kind: str, name: str, device: torch.device, tokenizer_name: str | None = None
) -> EvalModel:
    """`kind` "checkpoint" or "hf_model" (evaluate.py's flags), loaded on `device`."""
    if kind == "checkpoint":
        return load_checkpoint_model(name, device, tokenizer_name)
    return load_hf_model(name, device)


def context_length_of(kind: str, name: str) -> int:
    """The trained context of a model without loading its weights into the device (a
    checkpoint's tensors are memory-mapped, a hub model's config alone is read)."""
    if kind == "checkpoint":
        state = load_checkpoint(name, mmap=True)
        positions = state["model_config"]["max_position_embeddings"]
        return trained_length(run_folder(Path(name)), positions)
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name)
    except Exception as exc:
        raise UsageError(_hf_load_error(name, exc)) from exc
    return int(getattr(config, "max_position_embeddings", None) or config.n_positions)
