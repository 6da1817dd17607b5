"""Moving one file's bytes: streamed, resumable with Range requests, verified, placed atomically.

Each file is streamed through huggingface_hub's own HTTP session (so HF_ENDPOINT, HF_TOKEN or a
saved `hf auth login` token, proxies and HF_HUB_OFFLINE behave as everywhere else in the
library) into `DIR/.partial/`, resumed after a dropped connection (also by a later run), hashed
once complete, and fsynced and renamed into place only once verified.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from huggingface_hub import constants
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status, httpx

from owt.download_manifest import RemoteFile, file_checksum
from owt.hub_listing import RepoSnapshot
from owt.hub_retry import (
    HubDownloadError,
    Retryable,
    RetryPolicy,
    explain,
    is_transient,
    log_retry,
    short_reason,
)

PARTIAL_DIR = ".partial"


def _partial_path(partial_dir: Path, remote: RemoteFile) -> Path:
    # The checksum in the name means a later run only ever resumes bytes of the same content.
    return partial_dir / f"{remote.name}.{remote.checksum[:16]}.part"


def partial_bytes(partial_dir: Path, remote: RemoteFile) -> int:
    """Bytes of `remote` already fetched by an interrupted run (0 if none)."""
    part = _partial_path(partial_dir, remote)
    return part.stat().st_size if part.is_file() else 0


def _fetch_into(
    part: Path,
    url: str,
    remote: RemoteFile,
    progress: Callable[[int], None],
    stop: threading.Event | None,
) -> None:
    """Append the missing bytes of `remote` to `part` (one GET). Raises on any failure."""
    offset = part.stat().st_size if part.exists() else 0
    if offset > remote.size:  # cannot be ours: start over
        part.unlink()
        progress(-offset)
        offset = 0
    if offset == remote.size:
        return
    headers = build_hf_headers()  # adds the HF_TOKEN / saved token; never logged by us
    headers["Accept-Encoding"] = "identity"  # ranges must address the file, not a gzip stream
    if offset:
        headers["Range"] = f"bytes={offset}-"
    session = get_session()
    timeout = httpx.Timeout(constants.HF_HUB_DOWNLOAD_TIMEOUT)
    with session.stream(
        "GET", url, headers=headers, timeout=timeout, follow_redirects=True
    ) as response:
        if offset and response.status_code == 416:  # our bytes do not fit the file: start over
            part.unlink()
            progress(-offset)
            raise Retryable("partial bytes do not match the file, starting over")
        if response.status_code >= 400:
            response.read()  # hf_raise_for_status reads the body for its message
            hf_raise_for_status(response)
        if offset and response.status_code == 206:
            start = _range_start(response.headers.get("Content-Range", ""))
            if start == 0:  # the whole file from its start: take it as a 200
                progress(-offset)
                offset = 0
            elif start != offset:  # bytes from elsewhere: appending them would corrupt the file
                part.unlink()
                progress(-offset)
                raise Retryable(f"the server sent bytes from {start}, not {offset}; starting over")
        elif offset and response.status_code == 200:  # the server ignored Range: take it all
            progress(-offset)
            offset = 0
        elif offset:
            raise Retryable(f"unexpected HTTP {response.status_code} to a Range request")
        with part.open("ab" if offset else "wb") as f:
            for chunk in response.iter_bytes():  # as received: a drop loses nothing already read
                if stop is not None and stop.is_set():
                    raise KeyboardInterrupt
                f.write(chunk)
                progress(len(chunk))
                if f.tell() > remote.size:
                    raise Retryable(f"server sent more than the {remote.size} bytes listed")
            f.flush()
            os.fsync(f.fileno())
    if part.stat().st_size != remote.size:
        raise Retryable(f"body ended at {part.stat().st_size} of {remote.size} bytes")


def _range_start(content_range: str) -> int | None:
    """First byte of a `Content-Range: bytes START-END/TOTAL` answer (None if unreadable)."""
    unit, _, spec = content_range.strip().partition(" ")
    start = spec.partition("-")[0]
    return int(start) if unit == "bytes" and start.isdigit() else None


def download_file(
    snapshot: RepoSnapshot,
    remote: RemoteFile,
    destination: Path,
    *,
    retry: RetryPolicy = RetryPolicy(),
    partial_dir: Path,
    progress: Callable[[int], None] = lambda n: None,
    stop: threading.Event | None = None,
) -> None:
    """Download `remote` to `destination`, verified, resuming any earlier partial download.

    The file appears at `destination` (atomically, by rename) only once its checksum matches the
    hub's. A connection that drops mid-body is resumed from where it stopped; attempts that made
    such progress do not use up the retry budget, so a flaky link still finishes a 300 MB file.

    Args:
        snapshot ([`RepoSnapshot`]): where `remote` comes from (the download URL is pinned to its
            commit).
        remote ([`RemoteFile`]): the file and its expected size and checksum.
        destination (`Path`): final path; must be on the same filesystem as `partial_dir`.
        retry ([`RetryPolicy`]): retries and backoff.
        partial_dir (`Path`): where incomplete bytes live between attempts and runs.
        progress (`Callable[[int], None]`): called with each byte delta (negative when bytes are
            thrown away).
        stop (`threading.Event`, *optional*): when set, the download stops (KeyboardInterrupt),
            keeping its partial bytes.

    Raises:
        [`HubDownloadError`]: a permanent failure, or `retry.max_retries` failed attempts.
    """
    partial_dir.mkdir(parents=True, exist_ok=True)
    part = _partial_path(partial_dir, remote)
    url = snapshot.url(remote)
    failures = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            _fetch_into(part, url, remote, progress, stop)
            _place_if_verified(part, destination, remote, progress)
            return
        except Exception as exc:
            if stop is not None and stop.is_set():
                raise KeyboardInterrupt from None  # whatever broke, we were told to stop
            if not is_transient(exc):
                raise explain(exc, f"Downloading {remote.path}") from exc
            resumed = part.exists() and part.stat().st_size > before
            failures = 0 if resumed and not isinstance(exc, Retryable) else failures + 1
            if failures > retry.max_retries:
                raise HubDownloadError(
                    f"Downloading {remote.path}: gave up after {retry.max_retries} retries "
                    f"({short_reason(exc)}). Re-run the same command later: it resumes."
                ) from exc
            _wait(log_retry(f"Downloading {remote.path}", exc, max(failures, 1), retry), stop)


def _place_if_verified(
    part: Path, destination: Path, remote: RemoteFile, progress: Callable[[int], None]
) -> None:
    """Rename the complete `part` to `destination` if it hashes to `remote`'s checksum; else
    throw its bytes away and raise Retryable."""
    if file_checksum(part, remote) != remote.checksum:
        part.unlink()
        progress(-remote.size)
        raise Retryable("checksum mismatch, bytes discarded")
    destination.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, destination)


def _wait(seconds: float, stop: threading.Event | None) -> None:
    """Sleep `seconds`, or raise KeyboardInterrupt as soon as `stop` is set."""
    if stop is None:
        time.sleep(seconds)
    elif stop.wait(seconds):
        raise KeyboardInterrupt from None
