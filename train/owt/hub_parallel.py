"""Many files at once: `max_workers` downloads in parallel threads under one progress bar, after
checking the disk has room; the first failure or Ctrl-C stops them all, keeping partial bytes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from huggingface_hub import constants
from tqdm.auto import tqdm

from owt.disk_space import check_free_space, format_bytes
from owt.download_manifest import DownloadManifest, RemoteFile
from owt.hub_listing import RepoSnapshot
from owt.hub_retry import RetryPolicy
from owt.hub_transfer import download_file, partial_bytes


def download_all(
    snapshot: RepoSnapshot,
    jobs: Iterable[tuple[RemoteFile, Path]],
    *,
    manifest: DownloadManifest,
    partial_dir: Path,
    retry: RetryPolicy = RetryPolicy(),
    max_workers: int = 4,
    reserve_bytes: int = 0,
    reserve_what: str = "space to keep free",
) -> tuple[int, int]:
    """Make every `(remote, local)` of `jobs` a verified copy, `max_workers` downloads at a time.

    Files already verified are skipped (no request at all). Before the first byte, the disk must
    have room for what is left to download plus `reserve_bytes` (described by `reserve_what`).
    One progress bar counts the bytes of all files. On the first permanent failure or Ctrl-C, the
    other downloads stop, keeping their partial bytes for the next run.

    Returns:
        `(files downloaded, files already there)`.

    Raises:
        [`HubDownloadError`]: a file could not be downloaded.
        `KeyboardInterrupt`: the user pressed Ctrl-C.
    """
    jobs = list(jobs)
    todo = [(remote, local) for remote, local in jobs if not manifest.is_verified(remote, local)]
    skipped = len(jobs) - len(todo)
    if skipped:
        print(f"{skipped} file(s) already downloaded and verified.", flush=True)
    if not todo:
        return 0, skipped
    total = sum(remote.size for remote, _ in todo)
    already = sum(partial_bytes(partial_dir, remote) for remote, _ in todo)
    _check_room(partial_dir, total - already, reserve_bytes, reserve_what)
    print(f"Downloading {len(todo)} file(s), {format_bytes(total)}.", flush=True)
    bar = _byte_bar(total, already)
    bar_lock = threading.Lock()

    def progress(delta: int) -> None:
        with bar_lock:
            bar.update(delta)

    def fetch(remote: RemoteFile, local: Path, stop: threading.Event) -> None:
        download_file(
            snapshot, remote, local, retry=retry, partial_dir=partial_dir, progress=progress,
            stop=stop,
        )  # fmt: skip
        manifest.record(remote, local)
        bar.write(f"  verified {remote.path} ({format_bytes(remote.size)})")

    try:
        _in_parallel(fetch, todo, max_workers)
    finally:
        bar.close()
    return len(todo), skipped


def _check_room(partial_dir: Path, download: int, reserve_bytes: int, reserve_what: str) -> None:
    """Fail before the first byte unless the disk holds the rest of the download and the
    reserve."""
    check_free_space(
        partial_dir.parent,
        download + reserve_bytes,
        f"the download ({format_bytes(download)}) plus {reserve_what} "
        f"({format_bytes(reserve_bytes)})",
    )


def _byte_bar(total: int, initial: int) -> tqdm:
    """One progress bar for the bytes of all files, shown as huggingface_hub shows its own."""
    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=True if constants.HF_HUB_DISABLE_PROGRESS_BARS else None,  # None: only on a tty
    )


def _in_parallel(
    fetch: Callable[[RemoteFile, Path, threading.Event], None],
    todo: list[tuple[RemoteFile, Path]],
    max_workers: int,
) -> None:
    """Run `fetch(remote, local, stop)` for every job, `max_workers` threads at a time. The first
    failure (or Ctrl-C) sets `stop`, which the others heed at their next chunk or pause; it is
    then raised here."""
    stop = threading.Event()
    queue = list(reversed(todo))
    queue_lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        while not stop.is_set():
            with queue_lock:
                if not queue:
                    return
                remote, local = queue.pop()
            try:
                fetch(remote, local, stop)
            except BaseException as exc:
                errors.append(exc)
                stop.set()
                return

    # Daemon threads: on Ctrl-C the main thread may exit while a worker still waits on a stalled
    # connection. Its partial file is then a prefix of the file, which the next run resumes.
    workers = [
        threading.Thread(target=worker, daemon=True)
        for _ in range(max(1, min(max_workers, len(todo))))
    ]
    try:
        for thread in workers:
            thread.start()
        for thread in workers:
            while thread.is_alive():
                thread.join(0.2)  # a timed join lets Ctrl-C through on every platform
    except KeyboardInterrupt:
        stop.set()
        for thread in workers:
            thread.join(1.0)  # time to close their files; a stalled read is abandoned
        raise
    failures = [exc for exc in errors if not isinstance(exc, KeyboardInterrupt)]
    if failures or errors:
        raise (failures or errors)[0]
