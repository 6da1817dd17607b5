"""Training that survives: exact resume, signals, SIGKILL during a save, NaN, OOM, a full disk,
bad input. pretrain.py as a subprocess on the tiny dataset (conftest.tiny_dataset), fp32 and
eager (scripts.FP32_EAGER), so that a resumed run is bit for bit the uninterrupted one; the
default path (bf16, compiled) is resumed in test_pretrain.py."""

from __future__ import annotations

import pickle
import shutil
import signal
from pathlib import Path

import pytest
import torch

from owt.folder_lock import LOCK_FILE
from same_run import (
    assert_curves_continue,
    assert_same_tensors,
    assert_same_update,
    final_weights,
    initial_weights,
    read_checkpoint,
    scalars,
)
from scripts import (
    FP32_EAGER,
    TINY_RUN,
    error_line,
    last_line,
    pretrain_args,
    run_script,
    start_script,
    wait_until,
)
from textdata import tiny_layout, write_layout

# 2 epochs of 17 steps of 4 x 2 windows. Saves: best_model.pt at step 0, checkpoint_last.pt at
# 4, best_model.pt at 6 (validation improved), checkpoint_last.pt at 8, ...
RUN = {**TINY_RUN, "num_epochs": 2}
TOTAL_STEPS = 34
SECRET = "hf_owtSECRETtoken1234567890"


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_dataset, gpt2_tokenizer_dir):
    """The uninterrupted run every resumed one is compared with. HF_TOKEN is set: it must
    never be shown or written (test_hf_token_is_never_written)."""
    out = tmp_path_factory.mktemp("straight") / "out"
    result = run_script(
        "pretrain.py",
        *pretrain_args(tiny_dataset, out, gpt2_tokenizer_dir, RUN, FP32_EAGER),
        set_env={"HF_TOKEN": SECRET},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


@pytest.fixture(scope="module")
def straight_out(straight) -> Path:
    return straight[0]


def assert_same_run(resumed: Path, straight: Path, from_step: int) -> None:
    assert_same_tensors(final_weights(resumed, 2), final_weights(straight, 2))
    for tag in ["train/loss", "val/loss"]:
        a = [p for p in scalars(resumed / "tensorboard", tag) if p[0] > from_step]
        b = [p for p in scalars(straight / "tensorboard", tag) if p[0] > from_step]
        assert a == b and a, tag


def interrupted_copy(run: Path, out: Path, checkpoint: str) -> Path:
    """`out` as if `run` had been stopped after writing `checkpoint`: that file and the
    TensorBoard curves, which hold the points logged after it (a resume must drop them)."""
    out.mkdir()
    shutil.copytree(run / "tensorboard", out / "tensorboard")
    return Path(shutil.copy(run / checkpoint, out / checkpoint))


SLOW = "slow:1"  # 1 s before each training forward: 2 s an optimizer step


def test_hf_token_is_never_written(straight):
    out, result = straight
    assert SECRET not in result.stdout + result.stderr
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_resume_after_epoch_1_is_bitwise_identical(
    straight_out, tiny_dataset, gpt2_tokenizer_dir, tmp_path
):
    out = tmp_path / "out"
    checkpoint = interrupted_copy(straight_out, out, "checkpoint_epoch_1.pt")
    args = pretrain_args(tiny_dataset, out, gpt2_tokenizer_dir, RUN, FP32_EAGER, resume=checkpoint)
    result = run_script("pretrain.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stderr
    assert_same_run(out, straight_out, from_step=read_checkpoint(checkpoint)["step"])
    assert_curves_continue(out, TOTAL_STEPS)


def test_resume_mid_epoch_restores_the_best_validation_loss(
    straight_out, tiny_dataset, gpt2_tokenizer_dir, tmp_path
):
    """From checkpoint_last.pt (a --save_interval save inside epoch 2), with a best validation
    loss the rest of the run cannot beat: were it not restored, the validation at the end would
    overwrite best_model.pt."""
    out = tmp_path / "out"
    interrupted_copy(straight_out, out, "best_model.pt")
    last = read_checkpoint(straight_out / "checkpoint_last.pt")
    assert last["step"] == 32 and last["progress"]["epoch"] == 1
    assert last["progress"]["step_in_epoch"] == 15
    last["progress"]["best_val_loss"] = 0.125  # far below any validation loss of this run
    torch.save(last, out / "checkpoint_last.pt")
    args = pretrain_args(tiny_dataset, out, gpt2_tokenizer_dir, RUN, FP32_EAGER, resume="auto")
    result = run_script("pretrain.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(out, straight_out, from_step=last["step"])
    assert_curves_continue(out, TOTAL_STEPS)
    assert read_checkpoint(out / "checkpoint_epoch_2.pt")["progress"]["best_val_loss"] == 0.125
    assert "): best validation loss 0.1250" in last_line(result.stderr)
    assert (out / "best_model.pt").read_bytes() == (straight_out / "best_model.pt").read_bytes()


def test_sigterm_saves_then_resume_auto_continues_identically(
    straight_out, tiny_dataset, gpt2_tokenizer_dir, tmp_path
):
    out = tmp_path / "out"
    args = pretrain_args(tiny_dataset, out, gpt2_tokenizer_dir, RUN, FP32_EAGER)
    stopped = run_script("pretrain.py", *args, fault="signal:SIGTERM:21")  # in step 10 (epoch 1)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr
    assert read_checkpoint(out / "checkpoint_last.pt")["step"] == 11
    resume_line = stopped.stderr.strip().splitlines()[-1].strip()
    assert resume_line.endswith("--resume auto") and str(out) in resume_line

    resumed = run_script("pretrain.py", *args, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(out, straight_out, from_step=0)  # one output dir, curves without duplicates
    assert_curves_continue(out, TOTAL_STEPS)


def test_resume_refuses_a_different_model_or_data(
    straight_out, tiny_dataset, gpt2_tokenizer_dir, tmp_path
):
    out = tmp_path / "out"
    shutil.copytree(straight_out, out)
    refused = run_script(
        "pretrain.py",
        *pretrain_args(
            tiny_dataset, out, gpt2_tokenizer_dir, RUN, FP32_EAGER,
            resume="auto", num_layers=3, max_length=16,
        ),
    )  # fmt: skip
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "num_layers" in refused.stderr and "max_length: 32 -> 16" in refused.stderr
    # Harmless changes are allowed: more epochs continue the same run.
    more = run_script(
        "pretrain.py",
        *pretrain_args(
            tiny_dataset, out, gpt2_tokenizer_dir, RUN, FP32_EAGER,
            resume="auto", num_epochs=3, eval_max_batches=1,
        ),
    )  # fmt: skip
    assert more.returncode == 0, more.stderr[-3000:]
    assert read_checkpoint(out / "checkpoint_epoch_3.pt")["epoch"] == 3
    assert_curves_continue(out, TOTAL_STEPS // 2 * 3)


def test_ctrl_c_stops_gracefully_and_a_second_quits_at_once(
    tiny_dataset, gpt2_tokenizer_dir, tmp_path
):
    """One Ctrl-C finishes the step, saves and says how to resume; a second during that step
    quits at once: no save, no resume line, and every file still loads. Steps are slowed down
    (2 s) so that each Ctrl-C lands inside one, even on a busy machine."""
    out = tmp_path / "out"
    last = out / "checkpoint_last.pt"
    args = pretrain_args(
        tiny_dataset, out, gpt2_tokenizer_dir, RUN, FP32_EAGER, num_epochs=1000, save_interval=1
    )
    first_log, second_log = tmp_path / "first.txt", tmp_path / "second.txt"
    process = start_script("pretrain.py", *args, fault=SLOW, stderr=first_log.open("w"))
    wait_until(last.exists, process)  # the save after step 1: training is in its loop
    process.send_signal(signal.SIGINT)
    process.wait(timeout=120)
    stderr = first_log.read_text()
    assert process.returncode == 130, stderr[-3000:]
    assert "Resume with" in stderr and "Traceback" not in stderr
    assert read_checkpoint(last)["step"] > 1  # saved again, after the step it was in

    saved = last.stat().st_mtime_ns
    resume = [*args, "--resume", "auto"]
    process = start_script("pretrain.py", *resume, fault=SLOW, stderr=second_log.open("w"))
    wait_until(lambda: last.stat().st_mtime_ns != saved, process)  # the resumed run's 1st step
    written = last.read_bytes()
    process.send_signal(signal.SIGINT)
    # The second once the first began a graceful stop, while the step is still running.
    wait_until(lambda: "finishing this step and saving" in second_log.read_text(), process)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=60)
    stderr = second_log.read_text()
    assert process.returncode == 130, stderr[-3000:]
    assert "Resume with" not in stderr and "Stopped at step" not in stderr
    assert last.read_bytes() == written  # the second one quit before anything was saved
    assert not list(out.glob(".*.tmp"))
    for checkpoint in out.glob("*.pt"):
        read_checkpoint(checkpoint)  # each one whole


def test_sigkill_during_a_save_leaves_the_previous_checkpoint(
    straight_out, tiny_dataset, gpt2_tokenizer_dir, tmp_path
):
    out, marker = tmp_path / "out", tmp_path / "saving"
    args = pretrain_args(tiny_dataset, out, gpt2_tokenizer_dir, RUN, FP32_EAGER)
    # The 4th save, checkpoint_last.pt at step 8, hangs half-written and is killed there.
    process = start_script("pretrain.py", *args, fault=f"hang_save:4:{marker}")
    wait_until(marker.exists, process, timeout=300)
    process.kill()
    process.wait()
    assert read_checkpoint(out / "checkpoint_last.pt")["step"] == 4
    leftovers = list(out.glob(".*.tmp"))
    assert leftovers, "the killed save should have left only a hidden temp file"
    result = run_script("pretrain.py", *args, "--resume", "auto")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not list(out.glob(".*.tmp"))  # cleaned on the next start
    assert_same_run(out, straight_out, from_step=0)
    assert_curves_continue(out, TOTAL_STEPS)


def test_non_finite_steps_are_skipped_then_too_many_stop_naming_the_last_checkpoint(
    tiny_dataset, gpt2_tokenizer_dir, tmp_path
):
    """Steps 3 and 5 have a NaN loss: skipped and counted, training goes on. From step 10 every
    step has one: after 5 in a row it stops, naming the causes and checkpoint_last.pt (saved at
    step 12). The run that has no checkpoint yet ("none yet") is in test_training_parts.py."""
    out = tmp_path / "out"
    # accumulation 2: optimizer step s is forward calls 2s and 2s + 1
    nan_calls = ",".join(map(str, [6, 10, *range(20, 200)]))
    result = run_script(
        "pretrain.py",
        *pretrain_args(tiny_dataset, out, gpt2_tokenizer_dir, RUN, FP32_EAGER),
        fault=f"nan:{nan_calls}",
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "step 3: non-finite loss or gradient, update skipped" in result.stderr
    skipped = scalars(out / "tensorboard", "train/skipped_steps")
    assert skipped == [(3, 1.0), (5, 2.0), (10, 3.0), (11, 4.0), (12, 5.0), (13, 6.0), (14, 7.0)]
    # Logged steps (1-based) hold the mean of the updates since the last point: none at a
    # skipped step with nothing before it, none once every step is skipped.
    assert [s for s, _ in scalars(out / "tensorboard", "train/loss")] == [1, 2, 3, 5, 7, 8, 9, 10]
    message = error_line(result)
    assert "5 optimizer steps in a row" in message and "--learning_rate" in message
    assert message.endswith(f"Last good checkpoint: {out / 'checkpoint_last.pt'}")
    last = read_checkpoint(out / "checkpoint_last.pt")
    assert last["step"] == 12 and last["progress"]["skipped_steps"] == 4
    assert all(torch.isfinite(w).all() for w in last["model"].values())


def test_out_of_memory_names_smaller_settings(tiny_dataset, gpt2_tokenizer_dir, tmp_path):
    args = pretrain_args(tiny_dataset, tmp_path / "out", gpt2_tokenizer_dir, RUN, FP32_EAGER)
    result = run_script("pretrain.py", *args, fault="oom:2")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    message = error_line(result)
    assert "Out of memory" in message and "--batch_size 4 --max_length 32" in message
    assert "--batch_size 2 --gradient_accumulation_steps 4" in message
    assert "--auto_batch" in message


def test_auto_batch_and_gradient_checkpointing_keep_the_update(
    straight_out, tiny_dataset, gpt2_tokenizer_dir, tmp_path
):
    """--auto_batch halves the micro-batch on out-of-memory (4 x 2 -> 2 x 4 here), with
    --gradient_checkpointing on: the same windows per step, split differently and recomputed in
    backward, so the same update as the straight run up to fp32 rounding (same_run.py). A lost
    or doubled micro-batch, or a recomputation that changes numbers, would not pass."""
    out = tmp_path / "out"
    args = pretrain_args(
        tiny_dataset, out, gpt2_tokenizer_dir, RUN, FP32_EAGER,
        auto_batch=True, gradient_checkpointing=True,
    )  # fmt: skip
    result = run_script("pretrain.py", *args, fault="oom:2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "micro-batch now 2, accumulation 4" in result.stderr
    theirs = read_checkpoint(straight_out / "checkpoint_epoch_2.pt")
    start = initial_weights(theirs["model_config"])
    assert_same_update(final_weights(out, 2), theirs["model"], start)


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_crafted_pickle_checkpoint_does_not_run_code(tiny_dataset, gpt2_tokenizer_dir, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"model": _RunsCode(str(marker)), "model_config": {}}, f)
    torch.save({"model": _RunsCode(str(marker)), "model_config": {}}, tmp_path / "evil2.pt")
    for path in [evil, tmp_path / "evil2.pt"]:
        args = pretrain_args(
            tiny_dataset, tmp_path / "out", gpt2_tokenizer_dir, RUN, FP32_EAGER, resume=path
        )
        result = run_script("pretrain.py", *args)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "not a safe" in error_line(result)
    assert not marker.exists()


@pytest.fixture(scope="module")
def checkpoints(straight_out, tmp_path_factory) -> Path:
    """A good resumable checkpoint of the run, and the same with another model signature."""
    folder = tmp_path_factory.mktemp("checkpoints")
    shutil.copy(straight_out / "checkpoint_epoch_1.pt", folder / "good.pt")
    state = read_checkpoint(straight_out / "checkpoint_epoch_1.pt")
    state["signature"]["model_config"]["hidden_size"] = 64
    torch.save(state, folder / "other_model.pt")
    return folder


def bad_inputs(tmp: Path, checkpoints: Path) -> dict[str, tuple[dict, str]]:
    """name -> (flags that differ from a good run, text the one-line error must hold)."""
    (tmp / "a_file").write_text("x")
    empty_train = write_layout(tmp / "empty_train", ["a"], ["b"])
    for f in (empty_train / "train").iterdir():
        f.unlink()
    no_text = write_layout(tmp / "no_text", ["a"], ["b"])
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": ["hello"] * 5}), no_text / "train" / "part-0.parquet")
    garbage = write_layout(tmp / "garbage", ["a"], ["b"])
    (garbage / "train" / "part-0.parquet").write_bytes(b"PAR1 this is not parquet")
    short_val = write_layout(tmp / "short_val", ["a " * 500], ["tiny"])
    truncated = tmp / "truncated.pt"
    truncated.write_bytes((checkpoints / "good.pt").read_bytes()[:1000])
    return {
        "data_dir missing": ({"data_dir": tmp / "missing"}, "Dataset not found"),
        "data_dir is a file": ({"data_dir": tmp / "a_file"}, "Dataset not found"),
        "empty train": ({"data_dir": empty_train}, "no train/*.parquet"),
        "no text column": ({"data_dir": no_text}, "has no 'text' column"),
        "unreadable parquet": ({"data_dir": garbage}, "Cannot read"),
        "validation too small": ({"data_dir": short_val}, "too few for one window"),
        "tokenizer unloadable": ({"tokenizer_name": "no-such/tokenizer"}, "HF_ENDPOINT"),
        "output_dir is a file": ({"output_dir": tmp / "a_file"}, "is a file"),
        "output_dir unwritable": ({"output_dir": tmp / "a_file" / "sub"}, "not writable"),
        "resume missing": ({"resume": tmp / "nope.pt"}, "Checkpoint not found"),
        "resume truncated": ({"resume": truncated}, "truncated"),
        "resume other model": (
            {"resume": checkpoints / "other_model.pt"},
            "model_config.hidden_size: 64 -> 32",
        ),
        "zero learning rate": ({"learning_rate": 0}, "--learning_rate"),
        "negative weight decay": ({"weight_decay": -0.1}, "--weight_decay"),
    }


BAD = [
    "data_dir missing", "data_dir is a file", "empty train", "no text column",
    "unreadable parquet", "validation too small", "tokenizer unloadable", "output_dir is a file",
    "output_dir unwritable", "resume missing", "resume truncated", "resume other model",
    "zero learning rate", "negative weight decay",
]  # fmt: skip


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_and_destroys_nothing(
    case, tiny_dataset, gpt2_tokenizer_dir, checkpoints, tmp_path
):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    flags, expected = bad_inputs(tmp_path, checkpoints)[case]
    args = pretrain_args(tiny_dataset, out, gpt2_tokenizer_dir, RUN, FP32_EAGER, **flags)
    result = run_script("pretrain.py", *args)
    assert result.returncode == 2, result.stderr[-3000:]
    assert expected in result.stderr and "Traceback" not in result.stderr
    if case not in ("data_dir missing", "data_dir is a file", "empty train"):
        error_line(result)  # one line, the last; progress lines (tokenizing) may come before
    else:  # the error line, then the commands that create the dataset
        (error,) = [line for line in result.stderr.splitlines() if "error:" in line]
        assert "download_subset.py" in result.stderr.split(error)[1]
    assert sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE) == ["precious.txt"]


def test_disk_full_while_tokenizing_leaves_nothing_partial(documents, gpt2_tokenizer_dir, tmp_path):
    data = tiny_layout(tmp_path / "data", documents)  # no token cache yet
    out = tmp_path / "out"
    args = pretrain_args(data, out, gpt2_tokenizer_dir, RUN, FP32_EAGER)
    result = run_script("pretrain.py", *args, fault="enospc:token_cache")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "no space left" in error_line(result).lower() and "Traceback" not in result.stderr
    caches = [p for p in (data / "token_cache").glob("*/*") if p.name != LOCK_FILE]
    assert caches == [], caches  # no .bin, no meta.json, no temp file
    assert not list(out.glob("*.pt"))


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(
    tiny_dataset, gpt2_tokenizer_dir, tmp_path
):
    """The disk fills up at the 4th save (checkpoint_last.pt at step 8): one line, no temporary
    file left, and the checkpoint_last.pt of step 4 still loads."""
    out = tmp_path / "out"
    args = pretrain_args(tiny_dataset, out, gpt2_tokenizer_dir, RUN, FP32_EAGER)
    result = run_script("pretrain.py", *args, fault="enospc:checkpointing:4")
    assert result.returncode == 2, result.stderr[-3000:]
    message = error_line(result)
    assert "No space left" in message and str(out / "checkpoint_last.pt") in message
    assert "previous checkpoints are intact" in message and "Traceback" not in result.stderr
    assert read_checkpoint(out / "checkpoint_last.pt")["step"] == 4
    assert read_checkpoint(out / "best_model.pt")["step"] == 6
    assert not list(out.glob(".*.tmp"))
