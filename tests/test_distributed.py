"""torchrun with 2 CPU processes (gloo), DDP and --fsdp, against one process with the same
global batch; FSDP checkpoints in the single-process format, resumed across world sizes."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from owt import devices
from owt.checkpointing import model_from_checkpoint
from same_run import (
    REL_MUON,
    REL_SPLIT,
    assert_close_values,
    assert_same_tensors,
    assert_same_update,
    final_weights,
    initial_weights,
    read_checkpoint,
    scalars,
)
from scripts import FP32_EAGER, pretrain_args, run_script

SAVE_AT = 10  # checkpoint_last.pt is step 10 of the 17 in the epoch: resumes run 7 steps


@pytest.fixture(scope="module")
def data(tiny_dataset):
    """~4.5k train tokens: 17 optimizer steps of 8 windows of 33 tokens."""
    return tiny_dataset


def pretrain(
    data: Path, tokenizer: Path, out: Path, ranks: int, *extra
) -> subprocess.CompletedProcess:
    """pretrain.py with a global batch of 8 windows: 4 x 2 in one process, 4 x 1 per rank on 2."""
    args = pretrain_args(
        data, out, tokenizer, FP32_EAGER, batch_size=4, gradient_accumulation_steps=2 // ranks,
        num_epochs=1, learning_rate=2e-3, log_interval=1, save_interval=SAVE_AT,
        eval_max_batches=3,  # 3: one rank runs one more
    )  # fmt: skip
    return run_script("pretrain.py", *args, *extra, ranks=ranks, set_env={"OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def one_rank(data, gpt2_tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "out"
    result = pretrain(data, gpt2_tokenizer_dir, out, 1)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def fsdp(data, gpt2_tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp") / "out"
    result = pretrain(data, gpt2_tokenizer_dir, out, 2, "--fsdp")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def resume_copy(
    run: Path, tmp_path: Path, data: Path, tokenizer: Path, ranks: int, *extra
) -> tuple[Path, subprocess.CompletedProcess]:
    """Copy `run`'s checkpoint_last.pt into a fresh folder and --resume auto from it there."""
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(run / "checkpoint_last.pt", resumed)
    return resumed, pretrain(data, tokenizer, resumed, ranks, "--resume", "auto", *extra)


def assert_resumes_to(
    resumed: tuple[Path, subprocess.CompletedProcess], reference: Path, start: dict, exact: bool
) -> None:
    """A resume_copy run went on from step SAVE_AT and ended where `reference` ended: bit for
    bit (weights and curves) if `exact`, else up to the rounding of a different split."""
    out, result = resumed
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"at step {SAVE_AT}" in result.stderr
    if exact:
        assert_same_tensors(final_weights(out, 1), final_weights(reference, 1))
    else:
        assert_same_update(final_weights(out, 1), final_weights(reference, 1), start)
    assert_same_curves(out, reference, after=SAVE_AT, exact=exact)


@pytest.fixture(scope="module")
def start(one_rank) -> dict[str, torch.Tensor]:
    """The weights every run here starts from (same model, same seed)."""
    return initial_weights(read_checkpoint(one_rank / "checkpoint_epoch_1.pt")["model_config"])


def assert_same_curves(a: Path, b: Path, after: int = -1, exact: bool = False) -> None:
    for tag in ["train/loss", "val/loss"]:
        curve_a = [p for p in scalars(a / "tensorboard", tag) if p[0] > after]
        curve_b = [p for p in scalars(b / "tensorboard", tag) if p[0] > after]
        assert curve_a and [s for s, _ in curve_a] == [s for s, _ in curve_b], tag
        if exact:
            assert curve_a == curve_b, tag
        else:
            assert_close_values([v for _, v in curve_a], [v for _, v in curve_b])


def assert_one_set_of_outputs(out: Path, reference: Path, stderr: str) -> None:
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
    assert len(list((out / "tensorboard").iterdir())) == 1  # one writer
    assert stderr.count("token cache built") + stderr.count("token cache reused") == 1
    assert stderr.count("Done (epochs, step") == 1


def test_ddp_two_ranks_match_one_rank_with_the_same_global_batch(
    one_rank, start, data, gpt2_tokenizer_dir, tmp_path
):
    two = pretrain(data, gpt2_tokenizer_dir, tmp_path / "two", 2)
    assert two.returncode == 0, two.stderr[-3000:]
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["world_size"] == 2 and config["tokens_per_optimizer_step"] == 8 * 32
    assert_one_set_of_outputs(tmp_path / "two", one_rank, two.stderr)
    assert_same_update(final_weights(tmp_path / "two", 1), final_weights(one_rank, 1), start)
    assert_same_curves(tmp_path / "two", one_rank)


def test_muon_over_two_ranks_matches_one_accumulating_rank_and_resumes_bitwise(
    start, data, gpt2_tokenizer_dir, tmp_path
):
    """--optimizer muon sees the gradient of the whole global batch of 8 however it is split:
    4 x 2 accumulated in one process, or 2 DDP ranks of 4. The weights agree within the
    rounding of Muon's bf16 Newton-Schulz (same_run.REL_MUON); the 2-rank run resumed from its
    step-10 checkpoint ends bit for bit where it ended."""
    muon = ["--optimizer", "muon"]
    for name, ranks in [("accumulated", 1), ("two", 2)]:
        result = pretrain(data, gpt2_tokenizer_dir, tmp_path / name, ranks, *muon)
        assert result.returncode == 0, result.stderr[-3000:]
    two = final_weights(tmp_path / "two", 1)
    assert_same_update(two, final_weights(tmp_path / "accumulated", 1), start, rel=REL_MUON)
    resumed = resume_copy(tmp_path / "two", tmp_path, data, gpt2_tokenizer_dir, 2, *muon)
    assert_resumes_to(resumed, tmp_path / "two", start, exact=True)


# DDP with 2 micro-batches of 2 per rank: the same global batch of 8, through no_sync; twice
# as many validation batches of half the size, so the same validation windows.
DDP_ACCUMULATING = [
    "--batch_size", "2", "--gradient_accumulation_steps", "2", "--eval_max_batches", "6",
]  # fmt: skip


@pytest.mark.skipif(devices.cxx_compiler() is None, reason="inductor needs a C++ compiler")
@pytest.mark.parametrize("extra", [DDP_ACCUMULATING, ["--fsdp"]], ids=["ddp", "fsdp"])
def test_compiled_two_ranks_match_one_eager_rank(
    extra, one_rank, start, data, gpt2_tokenizer_dir, tmp_path
):
    """torchrun users get --compile auto (compiled on CUDA and Linux CPUs): the compiled model
    under DDP (accumulating) or FSDP trains the same weights as one eager rank, up to the
    rounding of fused kernels."""
    out = tmp_path / "compiled"
    result = pretrain(data, gpt2_tokenizer_dir, out, 2, "--compile", "on", *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["compiled"] and config["tokens_per_optimizer_step"] == 8 * 32
    assert_one_set_of_outputs(out, one_rank, result.stderr)
    assert_same_update(final_weights(out, 1), final_weights(one_rank, 1), start)
    assert_same_curves(out, one_rank)


def test_fsdp_two_ranks_match_one_rank_with_the_same_global_batch(fsdp, one_rank, start):
    out, result = fsdp
    config = json.loads((out / "config.json").read_text())
    reference = json.loads((one_rank / "config.json").read_text())
    assert config["world_size"] == 2 and config["args"]["fsdp"]
    assert config["num_parameters"] == reference["num_parameters"]  # counted unsharded
    assert_one_set_of_outputs(out, one_rank, result.stderr)
    assert_same_update(final_weights(out, 1), final_weights(one_rank, 1), start)
    assert_same_curves(out, one_rank)
    # Gradient clipping acted on the full norm (steps above max_norm 1.0 are clipped alike).
    norms = [v for _, v in scalars(out / "tensorboard", "train/grad_norm")]
    reference = [v for _, v in scalars(one_rank / "tensorboard", "train/grad_norm")]
    assert max(reference) > 1.0
    assert_close_values(norms, reference)
    # Every rank decoded the validation sample together; rank 0 logged it.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    assert [e.step for e in events.Tensors("samples/text_summary")] == [0, 17]


def test_fsdp_checkpoint_has_the_single_process_format(fsdp, one_rank, start):
    out, _ = fsdp
    ours = read_checkpoint(out / "checkpoint_last.pt")
    theirs = read_checkpoint(one_rank / "checkpoint_last.pt")
    assert ours.keys() == theirs.keys() and ours["signature"] == theirs["signature"]
    assert ours["step"] == theirs["step"] == SAVE_AT
    model = ours["model"]
    assert all(type(t) is torch.Tensor for t in model.values())  # plain tensors, no DTensor
    assert model["lm_head.weight"] is model["model.embed_tokens.weight"]  # stored once, tied
    assert_same_update(model, theirs["model"], start)
    optimizer, reference = ours["optimizer"], theirs["optimizer"]
    assert optimizer["param_groups"] == reference["param_groups"]
    assert optimizer["state"].keys() == reference["state"].keys()
    for i, state in reference["state"].items():
        assert state.keys() == optimizer["state"][i].keys()
        assert optimizer["state"][i]["step"] == state["step"]
        for key in ("exp_avg", "exp_avg_sq"):  # moments start at 0: travel = their norm
            ours, theirs = optimizer["state"][i][key], state[key]
            assert (ours - theirs).norm() <= REL_SPLIT * theirs.norm(), (i, key)


def test_fsdp_checkpoint_loads_and_resumes_in_one_process(
    fsdp, one_rank, start, data, gpt2_tokenizer_dir, tmp_path
):
    out, _ = fsdp
    model, state = model_from_checkpoint(out / "checkpoint_epoch_1.pt")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert_same_update(model.state_dict(), final_weights(one_rank, 1), start)
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]]))[0]).all()

    resumed = resume_copy(out, tmp_path, data, gpt2_tokenizer_dir, 1)
    assert_resumes_to(resumed, one_rank, start, exact=False)


def test_fsdp_resume_with_the_same_world_size_is_exact(fsdp, data, gpt2_tokenizer_dir, tmp_path):
    out, _ = fsdp
    resumed = resume_copy(out, tmp_path, data, gpt2_tokenizer_dir, 2, "--fsdp")
    assert_resumes_to(resumed, out, {}, exact=True)


def test_one_process_checkpoint_resumes_under_fsdp(
    one_rank, start, data, gpt2_tokenizer_dir, tmp_path
):
    resumed = resume_copy(one_rank, tmp_path, data, gpt2_tokenizer_dir, 2, "--fsdp")
    assert_resumes_to(resumed, one_rank, start, exact=False)


def test_resume_with_another_global_batch_names_the_fix(fsdp, data, gpt2_tokenizer_dir, tmp_path):
    out, _ = fsdp
    # One process at 4 x 1 is half the FSDP run's global batch of 8.
    _, result = resume_copy(
        out, tmp_path, data, gpt2_tokenizer_dir, 1, "--gradient_accumulation_steps", "1"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert "sequences_per_step: 8 -> 4" in message
    assert "--gradient_accumulation_steps 2" in message


def test_fsdp_without_torchrun_is_refused(data, gpt2_tokenizer_dir, tmp_path):
    result = pretrain(data, gpt2_tokenizer_dir, tmp_path / "out", 1, "--fsdp")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "torchrun" in result.stderr and "drop --fsdp" in result.stderr
    assert not (tmp_path / "out").exists()
