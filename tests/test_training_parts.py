"""The training loop's parts in-process, without a CLI: the epoch sampler, the learning-rate
schedule's values, the resume signature, weight-decay groups, TrainConfig, and Trainer.fit on a
learnable token stream."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from model import LlamaForTraining
from owt.checkpointing import load_checkpoint, run_signature, signature_differences
from owt.cli import UsageError
from owt.config import TrainConfig, build_parser
from owt.optim import param_groups
from owt.schedule import Budget, Schedule, cosine_lr, warmup_steps_for
from owt.token_windows import EpochSampler, TokenWindows
from owt.trainer import Trainer, TrainingFailed
from tiny import tiny_config, tiny_model

# ---- epoch sampler -----------------------------------------------------------------------------


def test_an_epoch_visits_each_window_at_most_once_and_epochs_shuffle_differently():
    sampler = EpochSampler(num_windows=103, windows_per_step=8, seed=7)
    assert sampler.steps_per_epoch == 12  # 103 // 8: the tail of 7 is skipped
    epochs = [np.concatenate(list(sampler.step_windows(e))) for e in range(3)]
    for seen in epochs:
        assert len(seen) == 96 and len(set(seen.tolist())) == 96
        assert seen.min() >= 0 and seen.max() < 103
    assert not np.array_equal(epochs[0], epochs[1])
    again = EpochSampler(num_windows=103, windows_per_step=8, seed=7)
    assert np.array_equal(np.concatenate(list(again.step_windows(1))), epochs[1])  # seeded


def test_resuming_mid_epoch_continues_the_same_order():
    sampler = EpochSampler(num_windows=80, windows_per_step=4, seed=1)
    steps = list(sampler.step_windows(2))
    resumed = list(sampler.step_windows(2, start_step=13))
    assert len(resumed) == len(steps) - 13
    assert all(np.array_equal(a, b) for a, b in zip(steps[13:], resumed, strict=True))


def test_ranks_split_each_global_step_between_them():
    """2 ranks of 4 windows a step see, together, exactly the 8 windows one process sees."""
    single = list(EpochSampler(97, 8, seed=3).step_windows(0))
    ranks = [
        list(EpochSampler(97, 4, seed=3, rank=r, world_size=2).step_windows(0)) for r in (0, 1)
    ]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 12
    for one, r0, r1 in zip(single, *ranks, strict=True):
        assert not set(r0.tolist()) & set(r1.tolist())
        assert np.array_equal(np.concatenate([r0, r1]), one)


# ---- the learning-rate schedule (README, "Training flags") ------------------------------------


def test_default_warmup_is_5_percent_of_all_steps_at_most_2000():
    assert warmup_steps_for(1_000) == 50
    assert warmup_steps_for(1_000_000) == 2000
    assert warmup_steps_for(1_000, requested=0) == 0
    assert warmup_steps_for(1_000, requested=7) == 7


def test_warmup_is_linear_then_cosine_decays_to_min_lr_ratio():
    peak, warmup, total, floor = 1e-3, 10, 110, 0.1
    lrs = [cosine_lr(s, peak, warmup, total, floor) for s in range(total + 5)]
    assert lrs[:warmup] == pytest.approx([peak * (s + 1) / warmup for s in range(warmup)])
    assert lrs[warmup] == pytest.approx(peak)  # the peak, then down
    assert lrs[warmup + 50] == pytest.approx(peak * (floor + (1 - floor) * 0.5))  # half-way
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1 :], strict=False))
    assert lrs[total:] == pytest.approx([peak * floor] * 5)  # flat after the end


def test_a_time_budget_warms_up_over_its_first_5_percent():
    schedule = Schedule.of("cosine", Budget(10**9, "epochs", max_time=1000.0), -1, 0.1, 0.2)
    assert schedule.warmup_steps is None
    assert schedule.factor(5, elapsed=25.0) == pytest.approx(0.5)
    assert schedule.factor(5, elapsed=50.0) == pytest.approx(1.0)
    assert schedule.factor(5, elapsed=1000.0) == pytest.approx(0.1)


# ---- resume signature --------------------------------------------------------------------------


def test_resume_signature_names_each_difference():
    saved = run_signature(tiny_config(), "data-a", 32, 1337, 8)
    assert signature_differences(saved, run_signature(tiny_config(), "data-a", 32, 1337, 8)) == []
    other = run_signature(tiny_config(hidden_size=64), "data-b", 32, 1337, 16)
    assert signature_differences(saved, other) == [
        "dataset_fingerprint: 'data-a' -> 'data-b'",
        "model_config.hidden_size: 32 -> 64",
        "sequences_per_step: 8 -> 16",
    ]


# ---- weight decay ------------------------------------------------------------------------------


def test_weight_decay_applies_to_matrices_only():
    model = tiny_model()
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.dim() == 2 for p in decay["params"])
    assert all("norm" in names[id(p)] for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


# ---- TrainConfig -------------------------------------------------------------------------------


def test_train_config_defaults_are_the_public_interface():
    config = TrainConfig.from_args(build_parser().parse_args([]))
    assert (config.batch_size, config.max_length, config.gradient_accumulation_steps) == (4, 512, 8)
    assert config.learning_rate == 5e-5 and config.num_epochs >= 1
    assert (config.vocab_size, config.hidden_size, config.num_layers, config.num_heads) == (
        50257, 768, 12, 12,
    )  # fmt: skip
    assert config.max_position_embeddings == 1024 and config.tokenizer_name == "gpt2"
    assert (config.optimizer, config.lr_schedule) == ("adamw", "cosine")
    assert TrainConfig().to_dict() == config.to_dict()  # the dataclass and the CLI agree


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_heads": 5}, "not divisible"),
        ({"max_length": 2048}, "max_position_embeddings"),
        ({"optimizer": "muon", "fsdp": True}, "drop --fsdp"),
        ({"cooldown_fraction": 0.0}, "--cooldown_fraction"),
        ({"auto_batch": True}, "--auto_batch cannot"),
    ],
)
def test_train_config_validation_names_the_fix(change, message):
    with pytest.raises(UsageError, match=message):
        replace(TrainConfig(), **change).validate(world_size=2)


# ---- Trainer.fit, in-process -------------------------------------------------------------------


def test_trainer_fit_learns_a_repeating_sequence_and_writes_its_checkpoints(tmp_path: Path):
    """A 64-token cycle: after 2 epochs the model predicts it far better than chance (ln 64)."""
    tokens = np.tile(np.arange(64, dtype=np.uint16), 60)
    config = TrainConfig(
        output_dir=str(tmp_path), vocab_size=64, hidden_size=32, num_layers=2, num_heads=2,
        max_length=16, max_position_embeddings=32, batch_size=4, gradient_accumulation_steps=1,
        learning_rate=1e-2,
        num_epochs=2, eval_interval=0, log_interval=5, eval_max_batches=2, device="cpu",
    ).validate()  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForTraining(config.model_config())
    trainer = Trainer(
        config, model, TokenWindows(tokens[:3000], 16), TokenWindows(tokens[3000:], 16),
        device=torch.device("cpu"),
    )  # fmt: skip
    assert trainer.total_steps == 2 * (3000 // 17 // 4)
    assert trainer.fit() == 0
    assert trainer.progress.step == trainer.total_steps and trainer.ended_by() == "epochs"
    assert trainer.last_evaluation.loss < 0.25 * math.log(64)
    for name in ["checkpoint_epoch_1.pt", "checkpoint_epoch_2.pt", "best_model.pt"]:
        assert (tmp_path / name).is_file(), name
    state = load_checkpoint(tmp_path / "checkpoint_epoch_2.pt")
    assert state["step"] == trainer.total_steps
    assert state["val_loss"] == pytest.approx(trainer.last_evaluation.loss)


def test_a_run_that_never_had_a_finite_step_says_there_is_no_checkpoint_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The other case (a checkpoint to go back to, named by path) is test_resilience.py's."""
    real_forward = LlamaForTraining.forward

    def nan_loss(self, input_ids, targets=None, **kwargs):
        logits, loss = real_forward(self, input_ids, targets, **kwargs)
        return logits, loss * float("nan")

    monkeypatch.setattr(LlamaForTraining, "forward", nan_loss)
    tokens = np.tile(np.arange(64, dtype=np.uint16), 20)
    config = TrainConfig(
        output_dir=str(tmp_path), vocab_size=64, hidden_size=32, num_layers=2, num_heads=2,
        max_length=16, max_position_embeddings=32, batch_size=4, gradient_accumulation_steps=1,
        max_bad_steps=3, eval_max_batches=1, device="cpu",
    ).validate()  # fmt: skip
    model = LlamaForTraining(config.model_config())
    trainer = Trainer(
        config, model, TokenWindows(tokens[:1000], 16), TokenWindows(tokens[1000:], 16),
        device=torch.device("cpu"),
    )  # fmt: skip
    with pytest.raises(TrainingFailed) as failed:
        trainer.fit()
    message = str(failed.value)
    assert message.startswith("3 optimizer steps in a row had a non-finite loss")
    assert message.endswith("Last good checkpoint: none yet")
    assert trainer.progress.step == 3 and trainer.progress.skipped_steps == 3
    assert not list(tmp_path.glob("*.pt"))
