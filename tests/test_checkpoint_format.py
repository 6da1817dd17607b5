"""Checkpoints say what they are: each one records its format (checkpointing.FORMAT_KEY); code
that meets a newer format stops with one line naming both; checkpoints written before the format
was recorded (by the code of main until then) still load and resume; a model config with unknown
or missing keys is refused, not filled in with defaults.

The checkpoints are written at test time by the code that writes them (training_state,
save_checkpoint) for a tiny model; main's are the same dicts without FORMAT_KEY, its only change.
"""

from __future__ import annotations

import pytest
import torch

from model import LlamaForTraining, ModelConfig
from owt.checkpointing import (
    CHECKPOINT_FORMAT,
    FORMAT_KEY,
    CheckpointError,
    Progress,
    check_resumable,
    load_checkpoint,
    model_from_checkpoint,
    restore_training_state,
    run_signature,
    save_checkpoint,
    training_state,
)
from same_run import assert_same_tensors
from scripts import one_line_error, run_script

TINY = ModelConfig(
    hidden_size=32, num_layers=2, num_heads=2, max_position_embeddings=32
)  # GPT-2's vocabulary, so that generate.py can decode its tokens
SIGNATURE = run_signature(TINY, "dataset", max_length=16, seed=1337, sequences_per_step=2)
WEIGHTS_KEYS = {"model", "model_config", "tokenizer_name", "step", "epoch", "val_loss", "val_bpb"}
MAIN_KEYS = WEIGHTS_KEYS | {"optimizer", "progress", "signature", "rng"}
"""The keys of main's checkpoints before the format was recorded: best_model.pt has
WEIGHTS_KEYS, the resumable ones all of MAIN_KEYS."""


def tiny_model_and_optimizer() -> tuple[LlamaForTraining, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = LlamaForTraining(TINY)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


@pytest.fixture(scope="module")
def written(gpt2_tokenizer_dir) -> tuple[dict, dict]:
    """(resumable state, weights-only state) after one optimizer step, as the trainer makes
    them."""
    model, optimizer = tiny_model_and_optimizer()
    tokens = torch.randint(0, TINY.vocab_size, (2, 17))
    model(tokens[:, :-1], tokens[:, 1:])[1].backward()
    optimizer.step()
    progress = Progress(step=1, step_in_epoch=1)
    common = {"signature": SIGNATURE, "tokenizer_name": str(gpt2_tokenizer_dir)}
    resumable = training_state(model, optimizer, progress, val_loss=None, **common)
    weights = training_state(model, None, progress, val_loss=10.5, **common)
    return resumable, weights


def as_main_wrote(state: dict) -> dict:
    return {key: value for key, value in state.items() if key != FORMAT_KEY}


def test_every_checkpoint_records_its_format_and_nothing_else_changed(written):
    resumable, weights = written
    assert resumable[FORMAT_KEY] == weights[FORMAT_KEY] == CHECKPOINT_FORMAT
    assert set(as_main_wrote(resumable)) == MAIN_KEYS
    assert set(as_main_wrote(weights)) == WEIGHTS_KEYS


def test_a_checkpoint_of_main_loads_and_resumes(written, tmp_path):
    resumable, _ = written
    path = save_checkpoint(as_main_wrote(resumable), tmp_path / "checkpoint_last.pt")
    state = load_checkpoint(path)
    check_resumable(state, path, SIGNATURE, hint="")
    model, optimizer = tiny_model_and_optimizer()
    progress = restore_training_state(state, model, optimizer)
    assert progress.step == 1
    assert_same_tensors(model.state_dict(), resumable["model"])
    assert_same_tensors(optimizer.state_dict()["state"], resumable["optimizer"]["state"])


def test_generate_reads_main_and_refuses_a_newer_format(written, tmp_path):
    """generate.py (a subprocess, as a user runs it) on best_model.pt: main's loads and
    generates; one of the next format stops with one line naming both formats."""
    _, weights = written
    main = save_checkpoint(as_main_wrote(weights), tmp_path / "main" / "best_model.pt")
    future = save_checkpoint(
        {**weights, FORMAT_KEY: CHECKPOINT_FORMAT + 1}, tmp_path / "future" / "best_model.pt"
    )
    flags = ["--max_new_tokens", 4, "--device", "cpu"]

    loaded = run_script("generate.py", "--checkpoint", main, *flags)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert f"{main}: step 1, val_loss 10.5" in loaded.stderr

    refused = run_script("generate.py", "--checkpoint", future, *flags)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert one_line_error(refused) == (
        f"generate.py: error: {future} is checkpoint format {CHECKPOINT_FORMAT + 1}, newer than "
        f"this code reads (format {CHECKPOINT_FORMAT}): update owt-pretrain (git pull, uv sync) "
        "to load it."
    )


@pytest.mark.parametrize("found", [0, "1", 1.5, None])
def test_an_unknown_format_is_refused(written, tmp_path, found):
    path = save_checkpoint({**written[1], FORMAT_KEY: found}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)
    assert str(refused.value) == (
        f"{path} is of an unknown checkpoint format {found!r}; this code reads format "
        f"{CHECKPOINT_FORMAT}."
    )


def test_a_model_config_must_match_key_for_key(written, tmp_path):
    values = TINY.to_dict()
    assert ModelConfig.from_dict(values) == TINY
    with pytest.raises(ValueError, match=r"^model config has unknown keys \(num_experts\)$"):
        ModelConfig.from_dict({**values, "num_experts": 8})
    partial = {k: v for k, v in values.items() if k not in ("rope_theta", "rms_norm_eps")}
    with pytest.raises(ValueError, match=r"^model config has no rope_theta, rms_norm_eps$"):
        ModelConfig.from_dict(partial)  # not the defaults: they may not be what was trained

    state = {**written[1], "model_config": {**values, "num_experts": 8}}
    path = save_checkpoint(state, tmp_path / "other_model.pt")
    with pytest.raises(CheckpointError, match="has unknown keys \\(num_experts\\)"):
        model_from_checkpoint(path)
