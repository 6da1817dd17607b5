"""One folder, one writer: owt.folder_lock in-process, and a holder killed with SIGKILL."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from owt.cli import UsageError
from owt.folder_lock import LOCK_FILE, FolderInUse, LockUnsupported, WriterLock, hold_folder

ADVICE = "wait for it to finish, stop it, or choose another --output_dir"


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
