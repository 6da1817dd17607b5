"""Training that survives: exact resume, signals, SIGKILL during a save, NaN, OOM, bad input."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from same_run import assert_same_update, initial_weights, read_checkpoint
from scripts import REPO, run_script, run_with_fault, tiny_model_args
from test_pretrain import scalars
from textdata import write_layout


@pytest.fixture(scope="module")
def data(tmp_path_factory, documents):
    """~4.5k train tokens: 17 optimizer steps per epoch at 4 x 2 windows of 33 tokens."""
    return write_layout(tmp_path_factory.mktemp("resume") / "data", documents[:10], documents[-3:])


def run_args(data: Path, out: Path, tokenizer: Path, *extra: str) -> list[str]:
    return [
        "--data_dir", data, "--output_dir", out, *tiny_model_args(tokenizer),
        "--batch_size", "4", "--gradient_accumulation_steps", "2", "--num_epochs", "2",
        "--learning_rate", "2e-3", "--log_interval", "1", "--save_interval", "4",
        "--eval_interval", "6", "--eval_max_batches", "2", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data, gpt2_tokenizer_dir):
    out = tmp_path_factory.mktemp("straight") / "out"
    result = run_script("pretrain.py", *run_args(data, out, gpt2_tokenizer_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoint_epoch_2.pt", weights_only=True)["model"]


def assert_same_run(resumed: Path, straight: Path, from_step: int) -> None:
    ours, theirs = final_weights(resumed), final_weights(straight)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs), "final weights differ"
    for tag in ["train/loss", "val/loss"]:
        a = [p for p in scalars(resumed / "tensorboard", tag) if p[0] > from_step]
        b = [p for p in scalars(straight / "tensorboard", tag) if p[0] > from_step]
        assert a == b and a, tag


def test_resume_after_epoch_1_is_bitwise_identical(straight, data, gpt2_tokenizer_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    checkpoint = shutil.copy(straight / "checkpoint_epoch_1.pt", out / "from.pt")
    result = run_script(
        "pretrain.py", *run_args(data, out, gpt2_tokenizer_dir, "--resume", checkpoint)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stderr
    assert_same_run(out, straight, from_step=torch.load(checkpoint, weights_only=True)["step"])


def test_resume_mid_epoch_from_save_interval(straight, data, gpt2_tokenizer_dir, tmp_path):
    last = torch.load(straight / "checkpoint_last.pt", weights_only=True)
    assert last["step"] % 4 == 0 and last["progress"]["step_in_epoch"] > 0  # inside epoch 2
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(straight / "checkpoint_last.pt", out / "checkpoint_last.pt")
    result = run_script("pretrain.py", *run_args(data, out, gpt2_tokenizer_dir, "--resume", "auto"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(out, straight, from_step=last["step"])


def test_sigterm_saves_then_resume_auto_continues_identically(
    straight, data, gpt2_tokenizer_dir, tmp_path
):
    out = tmp_path / "out"
    args = run_args(data, out, gpt2_tokenizer_dir)
    stopped = run_with_fault("signal:SIGTERM:21", *args)  # inside optimizer step 10 (epoch 1)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr
    assert torch.load(out / "checkpoint_last.pt", weights_only=True)["step"] == 11
    resume_line = stopped.stderr.strip().splitlines()[-1].strip()
    assert resume_line.endswith("--resume auto") and str(out) in resume_line

    resumed = run_script("pretrain.py", *args, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(out, straight, from_step=0)  # one output dir, curves without duplicates
    steps = [s for s, _ in scalars(out / "tensorboard", "train/loss")]
    total = json.loads((out / "config.json").read_text())["total_steps"]
    assert steps == sorted(set(steps)) == list(range(1, total + 1))


def test_resume_refuses_a_different_model_or_data(straight, data, gpt2_tokenizer_dir, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(straight, out)
    args = run_args(data, out, gpt2_tokenizer_dir, "--resume", "auto")
    changed = [*args, "--num_layers", "3", "--max_length", "16"]
    result = run_script("pretrain.py", *changed)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "num_layers" in result.stderr and "max_length: 32 -> 16" in result.stderr
    # Harmless changes are allowed: more epochs continue the same run.
    more = run_script("pretrain.py", *args, "--num_epochs", "3", "--eval_max_batches", "1")
    assert more.returncode == 0, more.stderr[-3000:]
    assert torch.load(out / "checkpoint_epoch_3.pt", weights_only=True)["epoch"] == 3


def test_sigint_from_outside_twice_leaves_loadable_files(data, gpt2_tokenizer_dir, tmp_path):
    out = tmp_path / "out"
    args = run_args(data, out, gpt2_tokenizer_dir, "--num_epochs", "1000")
    command = [sys.executable, str(REPO / "train" / "pretrain.py"), *map(str, args)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    log = tmp_path / "stderr.txt"
    # stderr to a file, not a pipe: an unread pipe fills up and blocks the child.
    process = subprocess.Popen(command, stderr=log.open("w"), env=env)
    deadline = time.time() + 120
    while not (out / "checkpoint_last.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=120)
    stderr = log.read_text()
    assert process.returncode == 130, stderr[-3000:]
    assert "Resume with" in stderr and "Traceback" not in stderr
    assert torch.load(out / "checkpoint_last.pt", weights_only=True)["step"] > 0

    saved = (out / "checkpoint_last.pt").stat().st_mtime_ns
    process = subprocess.Popen([*command, "--resume", "auto"], stderr=log.open("w"), env=env)
    # Wait until the resumed run is in its loop (it has saved again), then press Ctrl-C twice.
    while (out / "checkpoint_last.pt").stat().st_mtime_ns == saved and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=60)
    assert process.returncode == 130, log.read_text()[-3000:]
    for checkpoint in out.glob("*.pt"):
        torch.load(checkpoint, weights_only=True)


def test_sigkill_during_a_save_leaves_the_previous_checkpoint(data, gpt2_tokenizer_dir, tmp_path):
    out, marker = tmp_path / "out", tmp_path / "saving"
    command = [sys.executable, str(REPO / "tests" / "inject.py"), f"hang_save:4:{marker}",
               *map(str, run_args(data, out, gpt2_tokenizer_dir))]  # fmt: skip
    # saves: best_model.pt at step 0, checkpoint_last.pt at 4, best_model.pt at 6, then
    # checkpoint_last.pt at step 8 hangs half-written and is killed there
    process = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 300
    while not marker.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.1)
    assert marker.exists()
    process.kill()
    process.wait()
    assert torch.load(out / "checkpoint_last.pt", weights_only=True)["step"] == 4
    leftovers = list(out.glob(".*.tmp"))
    assert leftovers, "the killed save should have left only a hidden temp file"
    result = run_script("pretrain.py", *run_args(data, out, gpt2_tokenizer_dir, "--resume", "auto"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert not list(out.glob(".*.tmp"))  # cleaned on the next start


def test_non_finite_steps_are_skipped_and_counted(data, gpt2_tokenizer_dir, tmp_path):
    out = tmp_path / "out"
    # accumulation 2: forward calls 6 and 7 are optimizer step 3, call 10 is step 5
    result = run_with_fault("nan:6,10", *run_args(data, out, gpt2_tokenizer_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "update skipped" in result.stderr
    skipped = scalars(out / "tensorboard", "train/skipped_steps")
    assert [(s, v) for s, v in skipped] == [(3, 1.0), (5, 2.0)]
    weights = final_weights(out)
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_persistent_nan_stops_with_causes_and_last_checkpoint(data, gpt2_tokenizer_dir, tmp_path):
    out = tmp_path / "out"
    result = run_with_fault("nan:all", *run_args(data, out, gpt2_tokenizer_dir))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert "5 optimizer steps in a row" in message and "--learning_rate" in message
    assert "Last good checkpoint: none yet" in message or str(out) in message


def test_out_of_memory_names_smaller_settings(data, gpt2_tokenizer_dir, tmp_path):
    result = run_with_fault("oom:2", *run_args(data, tmp_path / "out", gpt2_tokenizer_dir))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert "Out of memory" in message and "--batch_size 4 --max_length 32" in message
    assert "--batch_size 2 --gradient_accumulation_steps 4" in message
    assert "--auto_batch" in message


def test_auto_batch_halves_the_micro_batch_and_keeps_the_update(
    straight, data, gpt2_tokenizer_dir, tmp_path
):
    out = tmp_path / "out"
    result = run_with_fault("oom:2", *run_args(data, out, gpt2_tokenizer_dir, "--auto_batch"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "micro-batch now 2, accumulation 4" in result.stderr
    # Same windows per step, split differently: equal up to fp32 rounding (same_run.py).
    theirs = read_checkpoint(straight / "checkpoint_epoch_2.pt")
    start = initial_weights(theirs["model_config"])
    assert_same_update(final_weights(out), theirs["model"], start)


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_crafted_pickle_checkpoint_does_not_run_code(data, gpt2_tokenizer_dir, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"model": _RunsCode(str(marker)), "model_config": {}}, f)
    torch.save({"model": _RunsCode(str(marker)), "model_config": {}}, tmp_path / "evil2.pt")
    for path in [evil, tmp_path / "evil2.pt"]:
        result = run_script(
            "pretrain.py", *run_args(data, tmp_path / "out", gpt2_tokenizer_dir, "--resume", path)
        )
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "not a safe" in result.stderr
    assert not marker.exists()


def test_hf_token_is_never_written(data, gpt2_tokenizer_dir, tmp_path):
    secret = "hf_owtSECRETtoken1234567890"
    out = tmp_path / "out"
    result = run_script(
        "pretrain.py",
        *run_args(data, out, gpt2_tokenizer_dir, "--num_epochs", "1"),
        env={"HF_TOKEN": secret},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert secret not in result.stdout + result.stderr
    for path in out.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def bad_inputs(tmp: Path, data: Path, tokenizer: Path) -> dict[str, tuple[list, str]]:
    """name -> (arguments that differ from a good run, text the one-line error must hold)."""
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
    truncated.write_bytes((data.parent / "good.pt").read_bytes()[:1000])
    other_model = data.parent / "other_model.pt"
    return {
        "data_dir missing": (["--data_dir", tmp / "missing"], "Dataset not found"),
        "data_dir is a file": (["--data_dir", tmp / "a_file"], "Dataset not found"),
        "empty train": (["--data_dir", empty_train], "no train/*.parquet"),
        "no text column": (["--data_dir", no_text], "has no 'text' column"),
        "unreadable parquet": (["--data_dir", garbage], "Cannot read"),
        "validation too small": (["--data_dir", short_val], "too few for one window"),
        "tokenizer unloadable": (["--tokenizer_name", "no-such/tokenizer"], "HF_ENDPOINT"),
        "output_dir is a file": (["--output_dir", tmp / "a_file"], "is a file"),
        "output_dir unwritable": (["--output_dir", tmp / "a_file" / "sub"], "not writable"),
        "resume missing": (["--resume", tmp / "nope.pt"], "Checkpoint not found"),
        "resume truncated": (["--resume", truncated], "truncated"),
        "resume other model": (["--resume", other_model], "model_config.hidden_size: 64 -> 32"),
        "zero learning rate": (["--learning_rate", "0"], "--learning_rate"),
        "negative weight decay": (["--weight_decay", "-0.1"], "--weight_decay"),
    }


@pytest.fixture(scope="module")
def good_checkpoints(straight, data):
    shutil.copy(straight / "checkpoint_epoch_1.pt", data.parent / "good.pt")
    state = torch.load(straight / "checkpoint_epoch_1.pt", weights_only=True)
    state["signature"]["model_config"]["hidden_size"] = 64
    torch.save(state, data.parent / "other_model.pt")


BAD = [
    "data_dir missing", "data_dir is a file", "empty train", "no text column",
    "unreadable parquet", "validation too small", "tokenizer unloadable", "output_dir is a file",
    "output_dir unwritable", "resume missing", "resume truncated", "resume other model",
    "zero learning rate", "negative weight decay",
]  # fmt: skip


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_and_destroys_nothing(
    case, data, gpt2_tokenizer_dir, good_checkpoints, tmp_path
):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    extra, expected = bad_inputs(tmp_path, data, gpt2_tokenizer_dir)[case]
    args = run_args(data, out, gpt2_tokenizer_dir) + [str(a) for a in extra]
    result = run_script("pretrain.py", *args)
    assert result.returncode == 2, result.stderr[-3000:]
    assert expected in result.stderr and "Traceback" not in result.stderr
    # The error is one line, the last; progress lines (tokenizing) may come before it.
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1
    if case not in ("data_dir missing", "data_dir is a file", "empty train"):
        assert errors[0] == result.stderr.strip().splitlines()[-1]
    else:  # the error line, then the commands that create the dataset
        assert "download_subset.py" in result.stderr.split(errors[0])[1]
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]


@pytest.mark.parametrize("module", ["token_cache", "checkpointing"])
def test_disk_full_is_reported_and_leaves_nothing_partial(
    module, documents, gpt2_tokenizer_dir, tmp_path
):
    data = write_layout(tmp_path / "data", documents[:10], documents[-3:])
    out = tmp_path / "out"
    result = run_with_fault(f"enospc:{module}", *run_args(data, out, gpt2_tokenizer_dir))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "no space left" in result.stderr.lower() and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()[-1:]) == 1
    if module == "token_cache":
        caches = list((data / "token_cache").glob("*/*"))
        assert caches == [], caches  # no .bin, no meta.json, no temp file
    else:
        assert not list(out.glob("*.pt")) and not list(out.glob(".*.tmp"))
