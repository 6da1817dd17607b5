"""One folder, one writer: pretrain.py holds its --output_dir's lock for the whole run, a second
run there refuses at once, a killed run's lock blocks nobody, and runs sharing a --data_dir build
its token cache once. pretrain.py as a subprocess on the tiny dataset (conftest.tiny_dataset),
held mid-run by tests/inject.py's pause faults (no sleeps); owt.folder_lock itself in-process.
The data scripts' locks are tested with the hub stand-in in test_data_scripts.py."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from owt.checkpointing import CHECKPOINT_FORMAT, FORMAT_KEY
from owt.cli import UsageError
from owt.folder_lock import (
    LOCK_FILE,
    FolderInUse,
    LockUnsupported,
    WriterLock,
    hold_folder,
    sole_builder,
)
from same_run import assert_curves_continue, assert_same_tensors, read_checkpoint
from scripts import (
    FP32_EAGER,
    TINY_RUN,
    one_line_error,
    pretrain_args,
    run_script,
    start_script,
    wait_until,
)
from textdata import tiny_layout

RUN = {**TINY_RUN, "num_epochs": 1}
STEPS = 17
# Training forward call 18 (0-based, 2 a step) begins step 10: steps 1-9 are done, and saved up to
# checkpoint_last.pt of step 8 and best_model.pt of step 6.
PAUSE_IN_STEP_10 = 18
ADVICE = "wait for it to finish, stop it, or choose another --output_dir"


def files_of(out: Path) -> dict[str, int | None]:
    """Every file under `out` -> its mtime (None for TensorBoard's log, which its writer's
    thread may flush at any time): what a second writer must leave as it is."""
    return {
        str(p.relative_to(out)): None if "tensorboard" in p.parts else p.stat().st_mtime_ns
        for p in out.rglob("*")
        if p.is_file()
    }


def assert_refused(result: subprocess.CompletedProcess, out: Path, holder_pid: int) -> None:
    """Exit 2 and one line naming the folder, the holder and what to do."""
    assert result.returncode == 2, result.stderr[-3000:]
    line = one_line_error(result)
    assert line.startswith("pretrain.py: error: "), line
    assert f"--output_dir {out} is in use by another process (pid {holder_pid} on " in line
    assert f" on {socket.gethostname()}, started " in line and "command: " in line
    assert "pretrain.py --data_dir" in line and line.endswith(ADVICE), line


def test_a_second_run_into_the_same_folder_refuses_at_once(
    tiny_dataset, gpt2_tokenizer_dir, tmp_path
):
    """The first run is held in step 10, after checkpoint_last.pt (step 8) and best_model.pt
    (step 6): the same command, with --resume auto and with --overwrite, each refuses before
    touching a file; the first then finishes as if alone."""
    out, paused = tmp_path / "out", tmp_path / "paused"
    args = pretrain_args(tiny_dataset, out, gpt2_tokenizer_dir, RUN, FP32_EAGER)
    log = tmp_path / "first.txt"
    first = start_script(
        "pretrain.py", *args, fault=f"pause_step:{PAUSE_IN_STEP_10}:{paused}", stderr=log.open("w")
    )
    wait_until(paused.exists, first)
    before = files_of(out)
    assert {"checkpoint_last.pt", "best_model.pt", "config.json"} <= before.keys()
    for extra in ([], ["--resume", "auto"], ["--overwrite"]):
        started = time.monotonic()
        second = run_script("pretrain.py", *args, *extra, timeout=120)
        assert_refused(second, out, first.pid)
        # Refused by the cheap checks, before torch is imported (seconds), let alone a run.
        assert time.monotonic() - started < 30, extra
        assert files_of(out) == before, extra

    paused.unlink()
    assert first.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert len(list((out / "tensorboard").rglob("events.out.tfevents.*"))) == 1
    assert_curves_continue(out, STEPS)  # one run's curve: each step once
    record = json.loads((out / "config.json").read_text())
    assert record["args"]["resume"] is None and not record["args"]["overwrite"]
    assert record["result"]["steps"] == STEPS
    assert read_checkpoint(out / "checkpoint_epoch_1.pt")["step"] == STEPS
    assert read_checkpoint(out / "checkpoint_last.pt")["step"] == 16
    for checkpoint in out.glob("*.pt"):  # best_model.pt too: every checkpoint says its format
        assert read_checkpoint(checkpoint)[FORMAT_KEY] == CHECKPOINT_FORMAT, checkpoint
    assert not (out / ".owt.lock.json").exists()  # who held it: gone with the run


def test_after_kill_9_the_same_command_with_resume_auto_continues(
    tiny_dataset, gpt2_tokenizer_dir, tmp_path
):
    out, paused = tmp_path / "out", tmp_path / "paused"
    args = pretrain_args(tiny_dataset, out, gpt2_tokenizer_dir, RUN, FP32_EAGER)
    killed = start_script("pretrain.py", *args, fault=f"pause_step:{PAUSE_IN_STEP_10}:{paused}")
    wait_until(paused.exists, killed)
    killed.kill()  # SIGKILL: no handler, no clean-up; the kernel drops the lock
    killed.wait(timeout=60)
    stale = json.loads((out / ".owt.lock.json").read_text())
    assert stale["pid"] == killed.pid  # the dead holder's record is still there

    resumed = run_script("pretrain.py", *args, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "in use" not in resumed.stderr
    assert f"resumed from {out / 'checkpoint_last.pt'} at step 8" in resumed.stderr
    assert read_checkpoint(out / "checkpoint_epoch_1.pt")["step"] == STEPS
    assert_curves_continue(out, STEPS)


def test_runs_sharing_a_data_dir_build_its_token_cache_once(
    documents, gpt2_tokenizer_dir, tmp_path
):
    """Two runs into two folders on one fresh dataset, started together: whichever takes the
    cache's lock first builds (held there until the other is seen waiting), the other waits
    with a progress line, then reads the same cache; both train on the same tokens."""
    data = tiny_layout(tmp_path / "data", documents)  # no token cache yet
    building = tmp_path / "building"
    short = {**RUN, "max_steps": 3, "eval_max_batches": 1}
    logs = [tmp_path / "a.txt", tmp_path / "b.txt"]
    runs = [
        start_script(
            "pretrain.py",
            *pretrain_args(data, tmp_path / log.stem, gpt2_tokenizer_dir, short, FP32_EAGER),
            fault=f"pause_cache:{building}",
            stderr=log.open("w"),
        )
        for log in logs
    ]
    wait_until(building.exists, *runs)
    wait_until(lambda: any("being built by" in log.read_text() for log in logs), *runs)
    building.unlink()
    for run, log in zip(runs, logs, strict=True):
        assert run.wait(timeout=300) == 0, log.read_text()[-3000:]

    stderrs = [log.read_text() for log in logs]
    assert sum(text.count("token cache built") for text in stderrs) == 1
    builder, waiter = sorted(range(2), key=lambda i: "token cache built" not in stderrs[i])
    assert f"is being built by another process (pid {runs[builder].pid} on " in stderrs[waiter]
    assert "waiting for the token cache" in stderrs[waiter]  # the progress line
    assert "token cache reused" in stderrs[waiter] and "tokenizing" not in stderrs[waiter]
    (cache,) = (data / "token_cache").iterdir()
    assert sorted(p.name for p in cache.iterdir()) == [
        LOCK_FILE, "meta.json", "train.bin", "validation.bin"
    ]  # fmt: skip
    records = [json.loads((tmp_path / log.stem / "config.json").read_text()) for log in logs]
    assert records[0]["token_cache"] == records[1]["token_cache"]
    weights = [read_checkpoint(tmp_path / log.stem / "checkpoint_last.pt")["model"] for log in logs]
    assert_same_tensors(*weights)  # same tokens, same seed: the same run


# ---- owt.folder_lock in-process ---------------------------------------------------------------


def test_a_held_folder_is_refused_with_its_holder(tmp_path):
    folder = tmp_path / "run"
    held = WriterLock(folder / LOCK_FILE)
    folder.mkdir()
    assert held.acquire(timeout=0)
    try:
        with pytest.raises(FolderInUse) as refused:
            hold_folder(folder, "--output_dir")
        assert refused.value.exit_code == 2
        message = str(refused.value)
        assert message.startswith(f"--output_dir {folder} is in use by another process (pid ")
        assert f"pid {held.holder().pid} on {socket.gethostname()}" in message
        assert message.endswith(ADVICE)
    finally:
        held.release()
    assert not held.holder_file.exists() and held.lock_file.exists()  # see folder_lock


def test_a_killed_holder_blocks_nobody(tmp_path):
    """A process holding the lock is killed with SIGKILL: the lock is free at once, and the
    sidecar it left names a process that is gone."""
    folder = tmp_path / "data"
    code = (
        "import sys, time; from owt.folder_lock import hold_folder; "
        f"hold_folder({str(folder)!r}, '--data_dir'); print('held', flush=True); time.sleep(300)"
    )
    train = Path(__file__).resolve().parents[1] / "train"
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=train
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUse):
            hold_folder(folder, "--data_dir")
    finally:
        holder.kill()
        holder.wait(timeout=60)
    lock = WriterLock(folder / LOCK_FILE)
    assert lock.holder(patience=0).is_gone()
    assert lock.acquire(timeout=0)
    assert lock.holder().pid != holder.pid  # the new holder replaced the dead one's record
    lock.release()


@pytest.fixture(params=[errno.ENOLCK, errno.ENOSYS])
def no_locks(request, monkeypatch) -> None:
    """A filesystem without locks, as NFS without lock support: flock fails with ENOLCK (or
    ENOSYS, which filelock would otherwise answer with a lock file that outlives a killed
    holder)."""
    import fcntl

    def flock(fd: int, operation: int) -> None:
        raise OSError(request.param, os.strerror(request.param))

    monkeypatch.setattr(fcntl, "flock", flock)


def test_a_folder_on_a_filesystem_without_locks_is_refused_in_one_line(tmp_path, no_locks):
    with pytest.raises(LockUnsupported) as refused:
        hold_folder(tmp_path / "nfs", "--output_dir")
    message = str(refused.value)
    assert isinstance(refused.value, UsageError) and "\n" not in message
    assert message.startswith(f"cannot lock {tmp_path / 'nfs'}: its filesystem does not support")
    assert "NFS" in message


def test_a_token_cache_on_a_filesystem_without_locks_is_built_unlocked(tmp_path, no_locks, capsys):
    """Reading data from such a folder must still work; two builds at once only do the work
    twice (unique temp names, atomic renames)."""
    with sole_builder(tmp_path, "the token cache"):
        pass
    assert "building the token cache without a lock" in capsys.readouterr().err
