"""One folder, one writer: the exclusive lock a script holds on each folder it writes.

    hold_folder(output_dir, "--output_dir")   # for the rest of this process, or FolderInUse

FOLDER/.owt.lock is locked with flock(2), through the `filelock` library (macOS and Linux). The
kernel drops the lock when its holder ends in any way, kill -9 included (filelock closes it in
forked children; exec'd ones never inherit it), so a lock never outlives its process and the file
itself means nothing. It stays, empty, so that every process locks the same inode: removing it
would let in both a process that opened the old file and one that creates a new one.

FOLDER/.owt.lock.json, the sidecar, names the holder (pid, host, start time, command) for the
refusal a second writer prints; the holder writes it once it holds the lock and removes it when
it exits cleanly (a killed holder's stays until the next holder replaces it).

The lock is advisory: it keeps out every process that asks for it (each script of this project),
not `rm`. Where the filesystem cannot lock at all (NFS without lock support) taking it fails with
LockUnsupported rather than letting two writers in without knowing.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import filelock
from tqdm import tqdm

from owt.atomic_files import write_json_atomically
from owt.cli import UsageError

LOCK_FILE = ".owt.lock"
HOLDER_PATIENCE_SECONDS = 1.0
"""How long a refused writer waits for a new holder to write the sidecar it just locked."""

# What flock reports where the filesystem has no working locks (NFS without lockd/NLM: ENOLCK).
_NO_LOCKS = {
    errno.ENOLCK,
    errno.ENOSYS,
    getattr(errno, "ENOTSUP", errno.EOPNOTSUPP),
    errno.EOPNOTSUPP,
}


class FolderInUse(UsageError):
    """Another process holds the folder's lock (exit status 2)."""


class LockUnsupported(UsageError):
    """The folder's filesystem cannot lock files (exit status 2)."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as its sidecar records it."""

    pid: int
    host: str
    started: str  # ISO 8601 with the UTC offset: holder and reader may be on other hosts
    command: str

    @classmethod
    def this_process(cls) -> Holder:
        return cls(
            pid=os.getpid(),
            host=socket.gethostname(),
            started=datetime.now().astimezone().isoformat(timespec="seconds"),
            command=shlex.join(sys.argv),
        )

    def describe(self) -> str:
        """'pid 42 on host, started 2025-06-01T10:32:05+02:00, command: train/pretrain.py ...'."""
        command = " ".join(self.command.split())  # one line, whatever the arguments held
        return f"pid {self.pid} on {self.host}, started {self.started}, command: {command}"

    def is_gone(self) -> bool:
        """Whether this holder is known to have ended: a pid on this host that runs no more.
        (The sidecar of a killed holder stays until the next holder replaces it.)"""
        if self.host != socket.gethostname():
            return False  # another machine on a shared filesystem: cannot tell
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # alive, under another user
        return False


def describe_holder(holder: Holder | None) -> str:
    return holder.describe() if holder else "which process is not recorded"


class WriterLock:
    """An exclusive lock on `lock_file`, and the sidecar (`lock_file`.json) naming its holder."""

    def __init__(self, lock_file: Path | str) -> None:
        self.lock_file = Path(lock_file)
        self.holder_file = self.lock_file.with_name(self.lock_file.name + ".json")
        # fallback_to_soft=False: a lock file whose mere existence locks would outlive a killed
        # holder and block every later run; better to say the filesystem cannot lock.
        self._lock = filelock.FileLock(self.lock_file, thread_local=False, fallback_to_soft=False)

    def acquire(self, timeout: float) -> bool:
        """Take the lock within `timeout` seconds and record this process in the sidecar;
        False if another process holds it. Raises LockUnsupported where locks do not work."""
        try:
            self._lock.acquire(timeout=timeout)
        except filelock.Timeout:
            return False
        except OSError as exc:
            if exc.errno in _NO_LOCKS:
                raise LockUnsupported(
                    f"cannot lock {self.lock_file.parent}: its filesystem does not support file "
                    f"locks ({exc.strerror}), as on NFS mounted without lock support. Use a folder "
                    "on a local disk, or NFS with locking (NFSv4, or lockd for NFSv3)"
                ) from None
            raise
        write_json_atomically(self.holder_file, asdict(Holder.this_process()))
        return True

    def release(self) -> None:
        """Remove the sidecar, then let go of the lock (the lock file stays: see above)."""
        with contextlib.suppress(FileNotFoundError):
            self.holder_file.unlink()
        self._lock.release()

    def holder(self, patience: float = HOLDER_PATIENCE_SECONDS) -> Holder | None:
        """Who holds the lock, from the sidecar. A holder that has just locked may not have
        written it yet, and a killed one leaves its own behind: wait up to `patience` seconds
        for a sidecar naming a live process, else return what is there (None if nothing)."""
        deadline = time.monotonic() + patience
        while True:
            holder = _read_holder(self.holder_file)
            if (holder and not holder.is_gone()) or time.monotonic() >= deadline:
                return holder
            time.sleep(0.05)


def _read_holder(path: Path) -> Holder | None:
    try:
        return Holder(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):  # missing, being replaced, or not ours
        return None


# ---- a folder one process fills while the others wait ------------------------------------------

WAIT_POLL_SECONDS = 0.5  # how often a waiting process tries the lock and updates its progress


@contextmanager
def sole_builder(
    directory: Path, what: str, bytes_written: Callable[[], int] = lambda: 0
) -> Iterator[None]:
    """Hold `directory`'s lock for the body, which fills it with `what` (e.g. "the token
    cache"). If another process holds it (it is building the same thing), say so and wait for
    it with a progress line (`bytes_written()` so far), then run the body, which should find
    the work done. Where the filesystem cannot lock, run without the lock: the body must write
    under names of its own and rename into place, so concurrent builders only repeat work."""
    lock = WriterLock(directory / LOCK_FILE)
    try:
        taken = lock.acquire(timeout=0)
    except LockUnsupported as exc:
        print(f"warning: {exc}; building {what} without a lock", file=sys.stderr)
        yield
        return
    if not taken:
        print(
            f"{what} in {directory} is being built by another process "
            f"({describe_holder(lock.holder())}): waiting for it, then reading it",
            file=sys.stderr,
        )
        with tqdm(desc=f"waiting for {what}", unit="B", unit_scale=True) as bar:
            while not lock.acquire(timeout=WAIT_POLL_SECONDS):
                bar.update(bytes_written() - bar.n)
    try:
        yield
    finally:
        lock.release()


# ---- a folder held for the life of the process ------------------------------------------------

_HELD: dict[Path, WriterLock] = {}
_OWNER_PID = os.getpid()


def hold_folder(folder: Path | str, flag: str) -> None:
    """Hold `folder`'s one-writer lock until this process ends, creating the folder if needed.

    `flag` is the option that named the folder ('--output_dir'), for the messages. Raises
    FolderInUse, naming the holder and what to do, if another process holds the lock, and
    UsageError if the folder cannot be written or its filesystem cannot lock (LockUnsupported).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = WriterLock(folder / LOCK_FILE)
        taken = lock.acquire(timeout=0)
    except (PermissionError, FileExistsError, NotADirectoryError) as exc:
        raise UsageError(f"{flag} {folder} is not a writable folder ({exc.strerror})") from None
    if not taken:
        raise FolderInUse(
            f"{flag} {folder} is in use by another process ({describe_holder(lock.holder())}): "
            f"wait for it to finish, stop it, or choose another {flag}"
        )
    _HELD[folder.resolve()] = lock


def holds(folder: Path | str) -> bool:
    """Whether this process holds `folder`'s lock (hold_folder)."""
    return Path(folder).resolve() in _HELD


def require_held(folder: Path | str) -> None:
    """Raise RuntimeError unless this process holds `folder`'s lock: for code that deletes
    files another writer could own. A bug if it fires, so it keeps its traceback."""
    if not holds(folder):
        raise RuntimeError(f"{folder} is written without holding its lock (folder_lock)")


@atexit.register
def _release_held() -> None:
    """A clean exit removes the sidecars it wrote (kill -9 leaves them, and no lock)."""
    if os.getpid() != _OWNER_PID:
        return  # a forked child exiting: the folders are its parent's
    while _HELD:
        _, lock = _HELD.popitem()
        with contextlib.suppress(OSError):
            lock.release()
