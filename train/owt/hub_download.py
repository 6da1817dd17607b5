"""Download files of a Hugging Face Hub repo: pinned to one commit, verified, resumable, atomic.

Shared by download_subset.py and download_openwebtext.py.

Why not `hf_hub_download`: in huggingface_hub 2.x it does not retry a 5xx answer to the file GET,
does not resume across calls, and does not check content (a same-size corrupt file is accepted and
then cached by its etag). Here every file is

* listed with its sha256 (LFS metadata from the tree API) at a commit resolved once per run,
* streamed through huggingface_hub's own HTTP session, so HF_ENDPOINT, HF_TOKEN (or a saved
  `hf auth login` token), proxies and HF_HUB_OFFLINE behave as everywhere else in the library,
* written to `DIR/.partial/`, resumed with a Range request after a dropped connection, also by a
  later run,
* retried with exponential backoff on 408/429/5xx answers, connection errors and timeouts,
* hashed once complete; a mismatch throws the bytes away and downloads the file again,
* fsynced and renamed into place only once verified, then recorded in `download_manifest.json`
  (so a re-run trusts it from size + mtime without re-hashing, and never fetches it again).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TypeVar

import httpx2
from huggingface_hub import HfApi, constants, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import (
    build_hf_headers,
    get_session,
    get_token,
    hf_raise_for_status,
    parse_ratelimit_headers,
)
from tqdm.auto import tqdm

from owt.cli import ScriptError
from owt.hub_data_files import (
    PARQUET_SUFFIX,
    DataFilesError,
    describe_revision,
    resolve_train_files,
)

DEFAULT_REPO_ID = "Skylion007/openwebtext"
MANIFEST_FILE = "download_manifest.json"
PARTIAL_DIR = ".partial"
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
CHUNK_BYTES = 1 << 20
TOKEN_HELP = (
    "set HF_TOKEN to a read token from https://huggingface.co/settings/tokens "
    "(or run `hf auth login`)"
)

T = TypeVar("T")


class HubDownloadError(ScriptError):
    """A download failed for good; the message is one line that says what to do (exit status 1,
    or 2 for a problem the user must fix first, such as disk space)."""


class _Retryable(Exception):
    """A failure worth another attempt (bad bytes, short body) that is not an HTTP error."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: `max_retries` retries per file (or API call) after the first attempt,
    waiting `backoff_seconds` * 2**k (capped at `max_backoff_seconds`, plus up to 10% jitter so
    parallel workers do not retry in lockstep)."""

    max_retries: int = 8
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 60.0
    max_rate_limit_seconds: float = 300.0  # the hub's rate-limit windows are 5 minutes

    def wait_seconds(self, failures: int, exc: BaseException | None = None) -> float:
        """Seconds before the next attempt: what the hub asked for (rate limit), else backoff."""
        asked = server_wait_seconds(exc)
        if asked is not None:
            return min(asked, self.max_rate_limit_seconds)
        base = min(self.max_backoff_seconds, self.backoff_seconds * 2 ** (failures - 1))
        return base * (1 + 0.1 * random.random())


def server_wait_seconds(exc: BaseException | None) -> float | None:
    """The wait a 429 (or 503) answer asks for: the `t=` of its `RateLimit` header when no
    request remains (`r=0`), else its `Retry-After` (seconds or an HTTP date); None if none."""
    response = exc.response if isinstance(exc, HfHubHTTPError) else None
    if response is None or response.status_code not in (429, 503):
        return None
    # The hub sends RateLimit on every answer: it explains a 429 only when no request remains.
    limit = parse_ratelimit_headers(response.headers) if response.status_code == 429 else None
    if limit is not None and limit.remaining == 0:
        return float(limit.reset_in_seconds)
    value = response.headers.get("Retry-After", "").strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class RemoteFile:
    """One file of the repo as the tree API describes it."""

    path: str
    size: int
    sha256: str | None  # LFS files only; others are checked against their git blob id
    git_oid: str

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def checksum(self) -> str:
        """What the downloaded bytes must hash to (see `file_checksum`)."""
        return self.sha256 or self.git_oid


@dataclass(frozen=True)
class RepoSnapshot:
    """The train shards of a repo at the commit `revision` pointed to when the run started."""

    repo_id: str
    repo_type: str
    revision: str
    commit: str
    files: tuple[RemoteFile, ...]
    endpoint: str | None = None  # None: HF_ENDPOINT, or https://huggingface.co
    selection: str = ""  # how the files were chosen (hub_data_files.SplitFiles.describe)

    def url(self, remote: RemoteFile) -> str:
        # Pinned to the commit: a push during a 24 GB download cannot mix two versions.
        return hf_hub_url(
            self.repo_id,
            remote.path,
            repo_type=self.repo_type,
            revision=self.commit,
            endpoint=self.endpoint,
        )


def file_checksum(path: Path, remote: RemoteFile) -> str:
    """sha256 of the file if the hub published one for `remote`, else its git blob id."""
    if remote.sha256 is not None:
        digest = hashlib.sha256()
    else:
        digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as f:
        while block := f.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


# -- talking to the hub -------------------------------------------------------------------------


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _Retryable | httpx2.TransportError):
        return not isinstance(exc, httpx2.UnsupportedProtocol | httpx2.ProxyError)
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        return exc.response.status_code in TRANSIENT_STATUS
    return False


def explain(exc: BaseException, what: str) -> HubDownloadError:
    """Turn a hub/network exception into a HubDownloadError that names the fix (never the token)."""
    if isinstance(exc, HubDownloadError):
        return exc
    if isinstance(exc, OfflineModeIsEnabled):
        return HubDownloadError(f"{what}: HF_HUB_OFFLINE is set; unset it to download.")
    if isinstance(exc, RevisionNotFoundError):
        return HubDownloadError(f"{what}: revision not found; check --revision.")
    if isinstance(exc, RemoteEntryNotFoundError):
        return HubDownloadError(f"{what}: no such file or folder in the repo at this revision.")
    status = exc.response.status_code if isinstance(exc, HfHubHTTPError) else None
    if isinstance(exc, RepositoryNotFoundError | GatedRepoError) or status in (401, 403):
        if get_token() is None:
            return HubDownloadError(
                f"{what}: the hub refused access (HTTP {status}). Check --repo_id; if the repo is "
                f"private or gated, {TOKEN_HELP}."
            )
        return HubDownloadError(
            f"{what}: the hub refused access (HTTP {status}) with the token from HF_TOKEN or "
            "your saved login. Check --repo_id, that the token can read this repo, and that "
            "you accepted the repo's terms if it is gated."
        )
    if status is not None:
        return HubDownloadError(f"{what}: the hub answered HTTP {status}. Try again later.")
    if isinstance(exc, httpx2.TransportError):
        return HubDownloadError(
            f"{what}: cannot reach {constants.ENDPOINT} ({type(exc).__name__}). Check the "
            "network (and HF_ENDPOINT if set), then re-run the same command: it resumes."
        )
    return HubDownloadError(f"{what}: {type(exc).__name__}: {exc}")


def call_with_retries(what: str, call: Callable[[], T], retry: RetryPolicy) -> T:
    """Return `call()`, retrying transient failures with backoff; others raise HubDownloadError."""
    failures = 0
    while True:
        try:
            return call()
        except Exception as exc:
            failures += 1
            if not _is_transient(exc) or failures > retry.max_retries:
                raise explain(exc, what) from exc
            time.sleep(_log_retry(what, exc, failures, retry))


def _log_retry(what: str, exc: BaseException, failures: int, retry: RetryPolicy) -> float:
    """Say what failed and how long we wait; return that wait."""
    pause = retry.wait_seconds(failures, exc)
    reason = _short_reason(exc)
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        if exc.response.status_code == 429:
            hint = "" if get_token() is not None else f"; a token raises the limit: {TOKEN_HELP}"
            reason += f" (rate limited: waiting {pause:.0f} s{hint})"
    print(f"{what}: {reason}; retry {failures}/{retry.max_retries}", file=sys.stderr, flush=True)
    return pause


def _short_reason(exc: BaseException) -> str:
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, _Retryable):
        return str(exc)
    return type(exc).__name__


def list_snapshot(
    repo_id: str,
    revision: str = "main",
    *,
    repo_type: str = "dataset",
    config_name: str | None = None,
    data_files: list[str] | None = None,
    retry: RetryPolicy = RetryPolicy(),
    endpoint: str | None = None,
) -> RepoSnapshot:
    """Resolve `revision` to a commit and find the train split's parquet shards at that commit.

    The shards are found as the hub's own tools find them (see hub_data_files.py): `data_files`
    if given, else the dataset card's configs (default config, or `config_name`), else
    `datasets`' default data-files conventions, matched against a recursive listing.

    Args:
        repo_id (`str`): e.g. "Skylion007/openwebtext".
        revision (`str`): branch, tag, commit or ref ("refs/pr/1", "refs/convert/parquet").
        repo_type (`str`): "dataset" or "model".
        config_name (`str`, *optional*): config of the dataset card to use.
        data_files (`list[str]`, *optional*): glob patterns that override the card.
        retry ([`RetryPolicy`]): for the API calls.
        endpoint (`str`, *optional*): hub URL; default HF_ENDPOINT, or https://huggingface.co.

    Returns:
        [`RepoSnapshot`] with the shards sorted by path (never empty).

    Raises:
        [`HubDownloadError`]: unreachable hub, no access, unknown revision (exit status 1), or
            no train parquet at this revision (exit status 2, saying what it holds instead).
    """
    api = HfApi(endpoint=endpoint)
    where = f"{repo_type} {repo_id}@{revision}"
    info = call_with_retries(
        f"Resolving {where}",
        lambda: api.repo_info(repo_id, repo_type=repo_type, revision=revision),
        retry,
    )
    commit = info.sha
    if not commit:
        raise HubDownloadError(f"Resolving {where}: the hub did not return a commit id.")
    listed = _list_files(api, repo_id, repo_type, commit, f"Listing {where}", retry)
    try:
        split = resolve_train_files(
            sorted(listed), getattr(info, "card_data", None),
            config_name=config_name, data_files=data_files,
        )  # fmt: skip
    except DataFilesError as exc:
        raise HubDownloadError(
            f"{where} (commit {commit[:12]}): {exc}. Pass --config_name or --data_files.",
            exit_code=2,
        ) from None
    if not split.paths:
        holds = describe_revision(sorted(listed))
        if not any(path.endswith(PARQUET_SUFFIX) for path in listed):
            holds += ", no parquet"
        raise HubDownloadError(
            f"{where} (commit {commit[:12]}): no parquet file matches the train split's "
            f"patterns ({', '.join(split.patterns) or 'none'}, from {split.origin}); the "
            f"revision holds {holds}. {_alternatives(api, repo_id, repo_type)}",
            exit_code=2,
        )
    files = tuple(listed[path] for path in split.paths)
    return RepoSnapshot(repo_id, repo_type, revision, commit, files, endpoint, split.describe())


def _list_files(
    api: HfApi, repo_id: str, repo_type: str, commit: str, what: str, retry: RetryPolicy
) -> dict[str, RemoteFile]:
    """Every file of the repo at `commit` (one recursive, paginated listing), by path."""
    entries = call_with_retries(
        what,
        lambda: list(
            api.list_repo_tree(repo_id, recursive=True, revision=commit, repo_type=repo_type)
        ),
        retry,
    )
    return {
        e.path: RemoteFile(
            path=e.path, size=e.size, sha256=e.lfs.sha256 if e.lfs else None, git_oid=e.blob_id
        )
        for e in entries
        if isinstance(e, RepoFile)
    }


def _alternatives(api: HfApi, repo_id: str, repo_type: str) -> str:
    """What to pass instead, naming the parquet refs the repo has (best effort: one call)."""
    advice = (
        "Pass --revision refs/convert/parquet (the hub's parquet conversion), a pull-request "
        "ref that holds parquet (--revision refs/pr/N), or --data_files PATTERN."
    )
    try:
        refs = api.list_repo_refs(repo_id, repo_type=repo_type, include_pull_requests=True)
    except Exception:  # the advice stands without the list
        return advice
    names = [r.ref for r in [*refs.converts, *(refs.pull_requests or [])]]
    if not names:
        return "Pass --data_files PATTERN, or a --revision that holds parquet."
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    return f"{advice} This repo has: {shown}."


# -- one file ---------------------------------------------------------------------------------


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
    timeout = httpx2.Timeout(constants.HF_HUB_DOWNLOAD_TIMEOUT)
    with session.stream(
        "GET", url, headers=headers, timeout=timeout, follow_redirects=True
    ) as response:
        if offset and response.status_code == 416:  # our bytes do not fit the file: start over
            part.unlink()
            progress(-offset)
            raise _Retryable("partial bytes do not match the file, starting over")
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
                raise _Retryable(f"the server sent bytes from {start}, not {offset}; starting over")
        elif offset and response.status_code == 200:  # the server ignored Range: take it all
            progress(-offset)
            offset = 0
        elif offset:
            raise _Retryable(f"unexpected HTTP {response.status_code} to a Range request")
        with part.open("ab" if offset else "wb") as f:
            for chunk in response.iter_bytes():  # as received: a drop loses nothing already read
                if stop is not None and stop.is_set():
                    raise KeyboardInterrupt
                f.write(chunk)
                progress(len(chunk))
                if f.tell() > remote.size:
                    raise _Retryable(f"server sent more than the {remote.size} bytes listed")
            f.flush()
            os.fsync(f.fileno())
    if part.stat().st_size != remote.size:
        raise _Retryable(f"body ended at {part.stat().st_size} of {remote.size} bytes")


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
            if file_checksum(part, remote) != remote.checksum:
                part.unlink()
                progress(-remote.size)
                raise _Retryable("checksum mismatch, bytes discarded")
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part, destination)
            return
        except Exception as exc:
            if stop is not None and stop.is_set():
                raise KeyboardInterrupt from None  # whatever broke, we were told to stop
            if not _is_transient(exc):
                raise explain(exc, f"Downloading {remote.path}") from exc
            resumed = part.exists() and part.stat().st_size > before
            failures = 0 if resumed and not isinstance(exc, _Retryable) else failures + 1
            if failures > retry.max_retries:
                raise HubDownloadError(
                    f"Downloading {remote.path}: gave up after {retry.max_retries} retries "
                    f"({_short_reason(exc)}). Re-run the same command later: it resumes."
                ) from exc
            pause = _log_retry(f"Downloading {remote.path}", exc, max(failures, 1), retry)
            if stop is not None:
                if stop.wait(pause):
                    raise KeyboardInterrupt from None
            else:
                time.sleep(pause)


# -- what has been verified ------------------------------------------------------------------


class DownloadManifest:
    """`download_manifest.json`: the source (repo, revision, resolved commit) and, per file, where
    it was saved, its size, its checksum and the mtime it had when verified.

    A file whose size and mtime still match its record is trusted without re-hashing; a file with
    no (or a stale) record is hashed once and recorded if it matches.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.data: dict = {"files": {}}
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text())
                self.data.setdefault("files", {})
            except (OSError, ValueError):
                self.data = {"files": {}}  # unreadable: re-verify everything by hashing

    def save(self) -> None:
        with self._lock:
            text = json.dumps(self.data, indent=2, sort_keys=True) + "\n"
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, self.path)

    def set_source(self, snapshot: RepoSnapshot) -> None:
        with self._lock:
            self.data.update(
                repo_id=snapshot.repo_id,
                repo_type=snapshot.repo_type,
                revision=snapshot.revision,
                commit=snapshot.commit,
            )
        self.save()

    def record(self, remote: RemoteFile, local: Path) -> None:
        """Remember that `local` holds `remote`, verified now."""
        stat = local.stat()
        with self._lock:
            self.data["files"][remote.path] = {
                "local": os.path.relpath(local, self.path.parent),
                "size": stat.st_size,
                "sha256" if remote.sha256 else "git_oid": remote.checksum,
                "mtime_ns": stat.st_mtime_ns,
                "verified_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        self.save()

    def relocate(self, remote: RemoteFile, local: Path) -> None:
        """`remote`'s verified file was renamed to `local` (a rename keeps its mtime)."""
        with self._lock:
            entry = self.data["files"].get(remote.path)
            if entry is not None:
                entry["local"] = os.path.relpath(local, self.path.parent)
        self.save()

    def consumed(self, remote: RemoteFile, note: str) -> None:
        """`remote`'s verified file was used up (e.g. split); `note` says into what."""
        with self._lock:
            entry = self.data["files"].get(remote.path)
            if entry is not None:
                entry.update(local=None, note=note)
        self.save()

    def source_of(self, local: Path) -> tuple[str, dict] | None:
        """(repo path, record) of the file recorded as saved at `local`, if any."""
        wanted = os.path.relpath(local, self.path.parent)
        with self._lock:
            for remote_path, entry in self.data["files"].items():
                if entry.get("local") == wanted:
                    return remote_path, dict(entry)
        return None

    def entry(self, remote_path: str) -> dict | None:
        with self._lock:
            return self.data["files"].get(remote_path)

    def is_verified(self, remote: RemoteFile, local: Path) -> bool:
        """Whether `local` holds exactly `remote` (hashing it only if the record cannot tell)."""
        if not local.is_file():
            return False
        stat = local.stat()
        if stat.st_size != remote.size:
            return False
        entry = self.entry(remote.path)
        if (
            entry is not None
            and entry.get("sha256", entry.get("git_oid")) == remote.checksum
            and entry.get("size") == stat.st_size
            and entry.get("mtime_ns") == stat.st_mtime_ns
            and entry.get("local") == os.path.relpath(local, self.path.parent)
        ):
            return True
        if file_checksum(local, remote) != remote.checksum:
            return False
        self.record(remote, local)
        return True


# -- many files ---------------------------------------------------------------------------------


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
    check_free_space(
        partial_dir.parent,
        total - already + reserve_bytes,
        f"the download ({format_bytes(total - already)}) plus {reserve_what} "
        f"({format_bytes(reserve_bytes)})",
    )
    print(f"Downloading {len(todo)} file(s), {format_bytes(total)}.", flush=True)
    bar = tqdm(
        total=total,
        initial=already,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=True if constants.HF_HUB_DISABLE_PROGRESS_BARS else None,  # None: only on a tty
    )
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


# -- disk space ---------------------------------------------------------------------------------


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """Raise HubDownloadError if the filesystem of `folder` has less than `needed` bytes free."""
    probe = Path(folder)
    while not probe.exists():  # the output folder may not exist yet: ask its parent's disk
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise HubDownloadError(
            f"Not enough disk space in {probe}: {what} need about {format_bytes(needed)}, "
            f"{format_bytes(free)} free. Free up {format_bytes(needed - free)} or choose "
            "another --output_dir.",
            exit_code=2,
        )


# -- command line -------------------------------------------------------------------------------


def add_download_arguments(parser: argparse.ArgumentParser) -> None:
    """The hub and network flags both download scripts share."""
    g = parser.add_argument_group("hub and network")
    g.add_argument("--repo_id", default=DEFAULT_REPO_ID, help="dataset repo (default: %(default)s)")
    g.add_argument(
        "--revision",
        default="main",
        help="branch, tag, commit or ref such as refs/pr/1 or refs/convert/parquet, resolved to "
        "one commit per run (default: %(default)s)",
    )
    g.add_argument(
        "--config_name",
        default=None,
        help="config of the dataset card whose train split to download (default: the card's "
        "default config)",
    )
    g.add_argument(
        "--data_files",
        action="append",
        metavar="PATTERN",
        help="glob of the train shards in the repo, e.g. 'plain_text/train-*' (repeatable); "
        "overrides the dataset card",
    )
    g.add_argument(
        "--max_retries",
        type=int,
        default=8,
        help="retries per file or API call after HTTP 408/429/5xx, timeouts, dropped "
        "connections or a checksum mismatch (default: %(default)s)",
    )
    g.add_argument(
        "--backoff_seconds",
        type=float,
        default=1.0,
        help="wait before the first retry, doubled for each next one, at most 60 s "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--min_free_gb",
        type=float,
        default=1.0,
        help="disk space to leave free after everything is written (default: %(default)s)",
    )


def retry_policy(args: argparse.Namespace) -> RetryPolicy:
    if args.max_retries < 0 or args.backoff_seconds < 0:
        raise HubDownloadError("--max_retries and --backoff_seconds must be >= 0.", exit_code=2)
    return RetryPolicy(max_retries=args.max_retries, backoff_seconds=args.backoff_seconds)


def snapshot_from_args(args: argparse.Namespace) -> tuple[RepoSnapshot, RetryPolicy]:
    """The train shards the hub and network flags of `add_download_arguments` point to."""
    retry = retry_policy(args)
    snapshot = list_snapshot(
        args.repo_id,
        args.revision,
        config_name=args.config_name,
        data_files=args.data_files,
        retry=retry,
    )
    return snapshot, retry
