"""Budgets, schedules and optimizers through pretrain.py: each budget ends the run on time with
the outputs an epoch end writes, a wsd run continues with a larger budget exactly, and the
default path (bf16 and compiled where the CPU has both) repeats and resumes bit for bit."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

import machine
from same_run import assert_same_tensors, read_checkpoint, scalars
from scripts import DEFAULT_THREADS, FP32_EAGER, last_line, pretrain_args, run_script

# tiny_dataset: 143 windows of 33 tokens, so 17 steps an epoch at 8 windows (256 tokens) a step.
STEPS_PER_EPOCH = 17
TOKENS_PER_STEP = 8 * 32
SHORT = {"batch_size": 8, "gradient_accumulation_steps": 1, "learning_rate": 2e-3,
         "eval_max_batches": 2, "log_interval": 1}  # fmt: skip


def config_of(out: Path) -> dict:
    return json.loads((out / "config.json").read_text())


# ---- each budget ends the run --------------------------------------------------------------


@pytest.mark.parametrize(
    ("budget", "ended_by", "steps"),
    [
        ({"max_steps": 5}, "max_steps", 5),
        ({"max_tokens": "2K"}, "max_tokens", math.ceil(2000 / TOKENS_PER_STEP)),  # 8 steps
    ],
    ids=["max_steps", "max_tokens"],
)
def test_a_step_or_token_budget_ends_the_run_like_an_epoch_end(
    budget, ended_by, steps, tiny_dataset, gpt2_tokenizer_dir, tmp_path
):
    out = tmp_path / "out"
    args = pretrain_args(
        tiny_dataset, out, gpt2_tokenizer_dir, FP32_EAGER, SHORT, num_epochs=3, **budget
    )
    result = run_script("pretrain.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert last_line(result.stderr).startswith(f"Done ({ended_by}, step {steps},")
    assert f"{ended_by} reached: validation loss" in result.stderr
    run = config_of(out)["result"]
    assert (run["ended_by"], run["steps"], run["tokens"]) == (
        ended_by, steps, steps * TOKENS_PER_STEP,
    )  # fmt: skip
    last = read_checkpoint(out / "checkpoint_last.pt")
    assert last["step"] == steps and last["val_loss"] == pytest.approx(run["final_val_loss"])
    best = read_checkpoint(out / "best_model.pt")
    assert best["val_loss"] == pytest.approx(run["best_val_loss"]) and best["val_bpb"] > 0
    assert not list(out.glob("checkpoint_epoch_*.pt"))  # the budget ended inside epoch 1
    val = scalars(out / "tensorboard", "val/loss")
    assert [s for s, _ in val] == [0, steps]
    assert [s for s, _ in scalars(out / "tensorboard", "val/bpb")] == [0, steps]


def test_a_time_budget_ends_within_a_step_of_the_deadline_with_the_lr_decayed(
    tiny_dataset, gpt2_tokenizer_dir, tmp_path
):
    out, deadline = tmp_path / "out", 6.0
    args = pretrain_args(
        tiny_dataset, out, gpt2_tokenizer_dir, FP32_EAGER, SHORT, num_epochs=10_000,
        max_time="6s", eval_interval=0,
    )  # fmt: skip
    result = run_script("pretrain.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "left=" in result.stderr  # the progress bar counts down the budget
    run = config_of(out)["result"]
    assert run["ended_by"] == "max_time" and last_line(result.stderr).startswith("Done (max_time")
    # The run checks the clock after each step, so it overshoots by at most the last step: the
    # time train/tokens_per_sec says that step took (log_interval 1; it times from one log call
    # to the next, the clock from one step's end to the next: 50 ms covers a log call).
    speed = scalars(out / "tensorboard", "train/tokens_per_sec")[-1][1]
    assert deadline <= run["elapsed_seconds"] <= deadline + TOKENS_PER_STEP / speed + 0.05, run
    assert read_checkpoint(out / "checkpoint_last.pt")["progress"][
        "elapsed_seconds"
    ] == pytest.approx(run["elapsed_seconds"], abs=1e-3)
    # The cosine is fitted to the time: warmup over its first 5%, the floor (0.1 x peak) at the
    # end, whatever the number of steps that took.
    lrs = [v for _, v in scalars(out / "tensorboard", "train/lr")]
    assert lrs[0] < 0.5 * SHORT["learning_rate"] and max(lrs) > 0.9 * SHORT["learning_rate"]
    assert lrs[-1] < 0.25 * SHORT["learning_rate"]


# ---- wsd: a checkpoint of the constant phase goes on with a larger budget ------------------


def wsd_factor(step: int, steps: int, warmup: int, cooldown: float, floor: float) -> float:
    """The wsd schedule as README states it, written out independently of owt/schedule.py."""
    if step < warmup:
        return (step + 1) / warmup
    progress, start = step / steps, 1 - cooldown
    if progress <= start:
        return 1.0
    return floor + (1 - floor) * (1 - math.sqrt((progress - start) / cooldown))


def test_wsd_resumed_with_a_larger_budget_continues_as_that_budget_from_the_start(
    tiny_dataset, gpt2_tokenizer_dir, tmp_path
):
    wsd = {"lr_schedule": "wsd", "warmup_steps": 2, "cooldown_fraction": 0.25, "num_epochs": 3}

    def args(out: Path, steps: int, **flags) -> list:
        return pretrain_args(
            tiny_dataset, out, gpt2_tokenizer_dir, FP32_EAGER, SHORT, wsd, max_steps=steps,
            **flags,
        )  # fmt: skip

    straight = tmp_path / "straight"
    result = run_script("pretrain.py", *args(straight, 24))
    assert result.returncode == 0, result.stderr[-3000:]
    lrs = scalars(straight / "tensorboard", "train/lr")
    expected = [2e-3 * wsd_factor(s - 1, 24, 2, 0.25, 0.1) for s in range(1, 25)]
    assert [s for s, _ in lrs] == list(range(1, 25))
    assert [v for _, v in lrs] == pytest.approx(expected, rel=1e-6)

    # A 12-step budget stopped by SIGTERM during its 7th step: checkpoint_last.pt at step 7,
    # before its cooldown (from step 9) began; then resumed with the budget of 24.
    grown = tmp_path / "grown"
    stopped = run_script("pretrain.py", *args(grown, 12), fault="signal:SIGTERM:6")
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert read_checkpoint(grown / "checkpoint_last.pt")["step"] == 7
    resumed = run_script("pretrain.py", *args(grown, 24, resume="auto"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    ours = read_checkpoint(grown / "checkpoint_last.pt")
    theirs = read_checkpoint(straight / "checkpoint_last.pt")
    assert ours["step"] == theirs["step"] == 24
    assert_same_tensors(ours["model"], theirs["model"], "model")
    assert_same_tensors(ours["optimizer"], theirs["optimizer"], "optimizer")
    assert scalars(grown / "tensorboard", "train/lr") == lrs


# ---- the default path repeats and resumes bit for bit --------------------------------------


def test_the_default_path_repeats_and_resumes_bit_for_bit_with_the_time_budget_recipe(
    tiny_dataset, gpt2_tokenizer_dir, tmp_path
):
    """pretrain.py's defaults (--dtype auto, --compile auto: bf16 and compiled on this CPU if
    machine.py says so), 2 threads, with --recipe time_budget (Muon and wsd; SHORT's
    --learning_rate overrides the recipe's, and config.json says so): the same command twice
    gives the same weights and optimizer state, and a run resumed from its epoch-1 checkpoint
    ends where the uninterrupted one did. (AdamW + cosine on the default path:
    test_pretrain.py's resume, in a fresh process, bit for bit.)"""
    recipe = {"recipe": "time_budget"}

    def train(out: Path, **flags) -> dict:
        args = pretrain_args(
            tiny_dataset, out, gpt2_tokenizer_dir, SHORT, recipe, num_epochs=2, **flags
        )
        result = run_script("pretrain.py", *args, set_env=DEFAULT_THREADS)
        assert result.returncode == 0, result.stderr[-3000:]
        config = config_of(out)
        assert (config["dtype"], config["compiled"]) == (
            machine.DEFAULT_CPU_DTYPE, machine.COMPILES_ON_CPU,
        )  # fmt: skip
        assert config["recipe"]["name"] == "time_budget"
        assert config["recipe"]["set"]["optimizer"] == config["args"]["optimizer"] == "muon"
        assert config["recipe"]["overridden_by_flags"] == {"learning_rate": 3e-3}
        assert config["args"]["learning_rate"] == SHORT["learning_rate"]
        return read_checkpoint(out / "checkpoint_epoch_2.pt")

    first = train(tmp_path / "first")
    second = train(tmp_path / "second")
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copy(tmp_path / "first" / "checkpoint_epoch_1.pt", resumed_dir)
    resumed = train(resumed_dir, resume=resumed_dir / "checkpoint_epoch_1.pt")
    for other in (second, resumed):
        assert_same_tensors(first["model"], other["model"], "model")
        assert_same_tensors(first["optimizer"], other["optimizer"], "optimizer")


# ---- the dry run -------------------------------------------------------------------------------


def test_dry_run_reports_speed_memory_and_budget_and_writes_no_run(
    tiny_dataset, gpt2_tokenizer_dir, tmp_path
):
    out = tmp_path / "out"
    args = pretrain_args(
        tiny_dataset, out, gpt2_tokenizer_dir, FP32_EAGER, SHORT, max_time="1h", dry_run=True,
        recipe="time_budget",
    )  # fmt: skip
    result = run_script("pretrain.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    # --recipe shows what it set, and which of its settings the command line overrode.
    assert "recipe time_budget (recipes/time_budget.toml) sets --optimizer muon" in result.stderr
    assert "your flags override its --learning_rate" in result.stderr
    report = result.stdout
    # 1 h holds far more steps than the 1 epoch asked for: the epochs end it.
    assert "tokens/s" in report and "(until epochs)" in report
    memory = next(line for line in report.splitlines() if line.strip().startswith("memory"))
    peak_gb = float(memory.split("peak")[1].split("GB")[0])
    assert peak_gb > 0 and ("fits" in memory)
    assert not out.exists()  # no config.json, checkpoint or TensorBoard log
