"""A local stand-in for the Hugging Face Hub, for tests that must never leave 127.0.0.1.

It implements the endpoints huggingface_hub 2.x really calls, with the answers and headers
huggingface.co sends (as recorded from the live hub in 2026; tests/test_hub_download.py checks
them through the real client):

    GET  /api/{models,datasets}/REPO[/revision/REV]   repo info at REV: "sha", "siblings",
                                                     "cardData" (the README's YAML front matter)
    GET  /api/{models,datasets}/REPO/tree/REV[/PATH]  listing, at most `page_size` entries per
                                                     answer, then a `Link: <...cursor=...>;
                                                     rel="next"` header; LFS files carry
                                                     lfs.oid = sha256 and a xetHash
    POST /api/{models,datasets}/REPO/paths-info/REV  the same entries, for the given paths
    GET  /api/{models,datasets}/REPO/refs            branches, converts, tags (+ pullRequests
                                                     with ?include_prs=1)
    HEAD|GET /[datasets/]REPO/resolve/REV/PATH       git files: 200 + ETag + X-Repo-Commit;
                                                     LFS files: 302 to the "CDN" + X-Linked-Etag,
                                                     X-Linked-Size, X-Repo-Commit
    HEAD|GET /cdn/xet-bridge-us/ID/XETHASH?...       the LFS bytes at a signed URL; Range -> 206

A revision is `main`, any ref of `StubRepo.refs` ("refs/pr/1", "refs/convert/parquet", a branch
or tag by its short name) or the commit id of any of them; huggingface_hub sends it quoted with
`quote(rev, safe="")`, so each path segment is unquoted only after the path is split on "/".

The "CDN" is the same server reached as http://localhost:PORT while the hub is http://127.0.0.1:PORT,
so, as on the real hub, the redirect crosses origins and the client drops the Authorization header.

Not served: the Xet protocol. The real hub's 302 also carries `X-Xet-Hash` and a `Link` with
rel="xet-auth"/"xet-reconstruction-info"; with hf_xet installed huggingface_hub would then fetch
the file through Xet instead of following the redirect, so those headers are left out and every
client takes the LFS route. Tree entries do carry `xetHash`, as on the hub: note that
`snapshot_download` caches the tree and a later `hf_hub_download` pinned to that commit then goes
the Xet way, which this stand-in cannot answer.

Faults are injected with `HubStub.inject`: an HTTP status (e.g. 503, or 429 with Retry-After)
for the next N matching requests, a connection closed half-way through a file body, a body of the
right size with corrupted bytes, a body that stalls half-way (until `release_stalls()`), or a 206
answer to a Range request that starts elsewhere than asked. Every request is appended to
`HubStub.requests`.

Use it as a context manager (`with HubStub([repo, ...]) as hub:`) or through the `hub` fixture
below: import it into a test module with `from hub_stub import hub_fixture  # noqa: F401`, then
take a `hub` argument (or add "hub_stub" to conftest.py's `pytest_plugins`).
"""

from __future__ import annotations

import base64
import bisect
import fnmatch
import hashlib
import hmac
import io
import json
import mimetypes
import os
import secrets
import socket
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, parse_qsl, quote, unquote, urlencode, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from huggingface_hub.repocard import REGEX_YAML_BLOCK

OPENWEBTEXT_REPO = "Skylion007/openwebtext"
GPT2_REPO = "gpt2"
LFS_MIN_SIZE = 10 * 1024 * 1024  # the hub refuses larger files outside LFS (Xet)
PAGE_SIZE = 1000  # tree entries per answer on the hub ...
EXPAND_PAGE_SIZE = 50  # ... and with expand=true (see HfApi.list_repo_tree)
RATE_WINDOW_S = 300  # the hub's fixed rate-limit window
CREATED_AT = "2022-03-02T23:29:22.000Z"  # the hub's earliest stored creation date
CDN_KEY_PAIR_ID = "K3RPWS32NSSJCE"
_QUOTAS = {"api": (500, 1000), "resolvers": (3000, 5000)}  # per window: anonymous, with a token

# The .gitattributes the hub commits into every new repo (its LFS patterns decide which files
# are LFS, together with size and binary content).
HUB_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib",
        "*.lfs.*", "*.lz4", "*.mds", "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz",
        "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar",
        "*.safetensors", "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm",
        "*.xz", "*.zip", "*.zst", "*tfevents*",
    )
).encode()  # fmt: skip


def git_blob_oid(data: bytes) -> str:
    """The git object id of a blob: what the hub reports as `oid` for a file stored in git."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    """The Git LFS pointer git stores for an LFS file (its size is the hub's `pointerSize`)."""
    sha256 = hashlib.sha256(data).hexdigest()
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n"
    ).encode()


def lfs_patterns(gitattributes: bytes) -> list[str]:
    """The patterns a .gitattributes file marks `filter=lfs`."""
    patterns = []
    for line in gitattributes.decode(errors="replace").splitlines():
        words = line.split()
        if len(words) > 1 and not words[0].startswith("#") and "filter=lfs" in words[1:]:
            patterns.append(words[0])
    return patterns


def _matches_gitattributes(path: str, pattern: str) -> bool:
    # A pattern without "/" matches the file name at any depth; one with "/" the whole path.
    if "/" not in pattern:
        return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)
    return fnmatch.fnmatchcase(path, pattern.lstrip("/").replace("**/", "*"))


def _iso(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _b64(data: bytes) -> str:
    """CloudFront's URL-safe base64 (+ = / become - _ ~)."""
    return base64.b64encode(data).decode().translate(str.maketrans("+=/", "-_~"))


@dataclass
class StubFile:
    data: bytes
    lfs: bool

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def etag(self) -> str:
        """What huggingface_hub takes as the file's etag: sha256 for LFS, else the blob id."""
        return self.sha256 if self.lfs else git_blob_oid(self.data)

    @cached_property
    def oid(self) -> str:
        """The git object id the hub lists: of the LFS pointer for an LFS file."""
        return git_blob_oid(lfs_pointer(self.data) if self.lfs else self.data)

    @property
    def pointer_size(self) -> int:
        return len(lfs_pointer(self.data))

    @cached_property
    def xet_hash(self) -> str:
        """A stand-in for the file's Xet hash: 64 hex digits, as the hub lists (not the real
        Xet merkle hash, which nothing here checks)."""
        return hashlib.sha256(b"xet\0" + bytes.fromhex(self.sha256)).hexdigest()


RefKind = Literal["branch", "tag", "convert", "pr"]
_REF_KINDS: dict[str, RefKind] = {
    "refs/heads/": "branch",
    "refs/tags/": "tag",
    "refs/convert/": "convert",
    "refs/pr/": "pr",
}


@dataclass
class StubRevision:
    """One ref of a repo and the commit it points to: its files, git tree and commit ids."""

    ref: str  # full ref name: "refs/heads/main", "refs/pr/1", "refs/convert/parquet"
    entries: dict[str, StubFile]
    commit: str
    timestamp: int
    title: str
    folder_oids: dict[str, str]  # folder path -> git tree id ("" = the root)

    @property
    def kind(self) -> RefKind:
        return next(kind for prefix, kind in _REF_KINDS.items() if self.ref.startswith(prefix))

    @property
    def name(self) -> str:
        """The name the refs API shows: "main", "parquet", "1"."""
        return self.ref.split("/", 2)[2]

    @property
    def last_modified(self) -> str:
        return _iso(self.timestamp)

    def folders(self) -> set[str]:
        return set(self.folder_oids) - {""}

    def paths(self) -> list[str]:
        """Every file and folder, sorted: the order of the tree listing."""
        return sorted([*self.folders(), *self.entries])

    def tree_entry(self, path: str, expand: bool = False) -> dict:
        if path in self.entries:
            entry = self.entries[path]
            info: dict = {"type": "file", "oid": entry.oid, "size": len(entry.data), "path": path}
            if entry.lfs:
                info["lfs"] = {
                    "oid": entry.sha256,
                    "size": len(entry.data),
                    "pointerSize": entry.pointer_size,
                }
                info["xetHash"] = entry.xet_hash
        else:
            info = {"type": "directory", "oid": self.folder_oids[path], "size": 0, "path": path}
        if expand:
            info["lastCommit"] = {
                "id": self.commit,
                "title": self.title,
                "date": self.last_modified,
            }
            if info["type"] == "file":
                info["securityFileStatus"] = {
                    "status": "safe",
                    "filename": path,
                    "avScan": {"virusFound": False, "virusNames": None},
                    "pickleImportScan": None,
                }
        return info

    def card_data(self) -> dict | None:
        """The YAML front matter of README.md, as the hub serves it in `cardData`."""
        readme = self.entries.get("README.md")
        if readme is None:
            return None
        match = REGEX_YAML_BLOCK.search(readme.data.decode("utf-8-sig", errors="replace"))
        if match is None:
            return None
        try:
            data = yaml.safe_load(match.group(2))
        except yaml.YAMLError:
            return None
        return data if isinstance(data, dict) else None

    def card_text(self) -> str:
        readme = self.entries.get("README.md")
        if readme is None:
            return ""
        text = readme.data.decode("utf-8-sig", errors="replace")
        match = REGEX_YAML_BLOCK.search(text)
        return text[match.end() :] if match else text


def _entries(files: dict[str, bytes]) -> dict[str, StubFile]:
    patterns = lfs_patterns(files.get(".gitattributes", HUB_GITATTRIBUTES))

    def is_lfs(path: str, data: bytes) -> bool:
        return (
            len(data) >= LFS_MIN_SIZE
            or b"\0" in data[:8000]  # binary content goes to LFS, as the hub's pre-upload says
            or any(_matches_gitattributes(path, p) for p in patterns)
        )

    return {path: StubFile(data, is_lfs(path, data)) for path, data in sorted(files.items())}


def _tree_oids(entries: dict[str, StubFile]) -> dict[str, str]:
    """The git tree id of every folder (and of the root, ""), computed as git does."""
    children: dict[str, dict[str, tuple[str, str]]] = {"": {}}  # folder -> name -> (mode, oid)
    for path, entry in entries.items():
        parts = path.split("/")
        for depth in range(len(parts)):
            children.setdefault("/".join(parts[:depth]), {})
        children["/".join(parts[:-1])][parts[-1]] = ("100644", entry.oid)
    oids: dict[str, str] = {}
    for folder in sorted(children, key=lambda f: f.count("/") + (f != ""), reverse=True):
        # git sorts a tree's entries by name, a folder's name taken as "name/"
        items = sorted(
            children[folder].items(), key=lambda kv: kv[0] + ("/" if kv[1][0] == "40000" else "")
        )
        body = b"".join(
            f"{mode} {name}\0".encode() + bytes.fromhex(oid) for name, (mode, oid) in items
        )
        oids[folder] = hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()
        if folder:  # deepest first: the parent is written after all its sub-folders
            parent, _, name = folder.rpartition("/")
            children[parent][name] = ("40000", oids[folder])
    return oids


def _commit_oid(tree: str, parent: str | None, author: str, timestamp: int, title: str) -> str:
    parent_line = f"parent {parent}\n" if parent else ""
    who = f"{author} <{author}@users.noreply.huggingface.co> {timestamp} +0000"
    body = f"tree {tree}\n{parent_line}author {who}\ncommitter {who}\n\n{title}\n".encode()
    return hashlib.sha1(b"commit %d\0" % len(body) + body).hexdigest()


_MAIN_TIME = 1704067200  # 2024-01-01: commits are dated, so their ids are stable
_COMMIT_TITLES: dict[RefKind, str] = {
    "branch": "Upload folder using huggingface_hub",
    "tag": "Upload folder using huggingface_hub",
    "convert": "Update parquet files",
    "pr": "Convert dataset to Parquet",
}


@dataclass
class StubRepo:
    """A repo: `files` on main plus the files of other refs.

    token: if set, the repo is private and needs `Bearer <token>`.
    refs: full ref name ("refs/pr/1", "refs/convert/parquet", "refs/heads/dev", "refs/tags/v1")
        -> the files at that ref. Every revision gets a git commit id derived from its files.
    """

    repo_id: str
    files: dict[str, bytes]
    repo_type: Literal["model", "dataset"] = "dataset"
    token: str | None = None
    refs: dict[str, dict[str, bytes]] = field(default_factory=dict)
    entries: dict[str, StubFile] = field(init=False)  # main's
    commit: str = field(init=False)  # main's
    revisions: dict[str, StubRevision] = field(init=False)  # full ref name -> revision

    def __post_init__(self) -> None:
        main = self._revision("refs/heads/main", self.files, None, 0)
        self.revisions = {main.ref: main}
        for n, (ref, files) in enumerate(sorted(self.refs.items()), start=1):
            pr_number = ref.removeprefix("refs/pr/")
            if (
                ref == "refs/heads/main"
                or not ref.startswith(tuple(_REF_KINDS))
                or (ref.startswith("refs/pr/") and not pr_number.isdigit())
            ):
                wanted = "refs/heads/X (not main), refs/tags/X, refs/convert/X or refs/pr/N"
                raise ValueError(f"{ref!r}: want {wanted}")
            parent = None if ref.startswith("refs/convert/") else main.commit  # an orphan branch
            self.revisions[ref] = self._revision(ref, files, parent, n)
        self.entries = main.entries
        self.commit = main.commit

    def _revision(
        self, ref: str, files: dict[str, bytes], parent: str | None, n: int
    ) -> StubRevision:
        entries = _entries(files)
        folder_oids = _tree_oids(entries)
        kind = next(k for prefix, k in _REF_KINDS.items() if ref.startswith(prefix))
        author = "parquet-converter" if kind == "convert" else self.repo_id.partition("/")[0]
        timestamp = _MAIN_TIME + 86400 * n
        title = _COMMIT_TITLES[kind]
        commit = _commit_oid(folder_oids[""], parent, author, timestamp, title)
        return StubRevision(ref, entries, commit, timestamp, title, folder_oids)

    def revision(self, revision: str) -> StubRevision | None:
        """The revision a name resolves to, as git does: a full ref, a commit id, or the short
        name of a branch or tag (tags first); None if unknown."""
        if revision in self.revisions:
            return self.revisions[revision]
        for candidate in self.revisions.values():
            if candidate.commit == revision:
                return candidate
        for prefix in ("refs/tags/", "refs/heads/"):
            if prefix + revision in self.revisions:
                return self.revisions[prefix + revision]
        return None

    def knows_revision(self, revision: str) -> bool:
        return self.revision(revision) is not None

    def _at(self, revision: str) -> StubRevision:
        found = self.revision(revision)
        if found is None:
            raise KeyError(f"{self.repo_id} has no revision {revision!r}")
        return found

    def commit_of(self, revision: str) -> str:
        """The commit id of a revision ("main", "refs/pr/1", a branch...)."""
        return self._at(revision).commit

    def entries_at(self, revision: str) -> dict[str, StubFile]:
        """The files of a revision, by path."""
        return self._at(revision).entries

    def folders(self, revision: str = "main") -> set[str]:
        return self._at(revision).folders()

    def tree_entry(self, path: str, revision: str = "main") -> dict:
        return self._at(revision).tree_entry(path)

    @property
    def mongo_id(self) -> str:
        """The hub's `_id`: a 24-hex object id."""
        return hashlib.sha1(f"{self.repo_type}/{self.repo_id}".encode()).hexdigest()[:24]

    def used_storage(self) -> int:
        """Bytes stored for the repo: every distinct file of every revision."""
        blobs = {e.oid: len(e.data) for r in self.revisions.values() for e in r.entries.values()}
        return sum(blobs.values())

    def find_lfs(self, xet_hash: str) -> StubFile | None:
        for revision in self.revisions.values():
            for entry in revision.entries.values():
                if entry.lfs and entry.xet_hash == xet_hash:
                    return entry
        return None


@dataclass
class RequestRecord:
    method: str
    path: str  # URL path, unquoted, without the query string
    status: int
    range: str | None
    authorization: str | None
    query: str = ""  # the raw query string
    raw_path: str = ""  # the URL path as sent (revisions arrive quoted: refs%2Fpr%2F1)
    at: float = field(default_factory=time.monotonic)  # when it arrived

    @property
    def is_file_get(self) -> bool:
        """A GET that fetches file bytes (the resolve redirect or the CDN answer)."""
        return self.method == "GET" and ("/resolve/" in self.path or self.path.startswith("/cdn/"))


FaultKind = Literal["status", "drop", "corrupt", "stall", "bad_range"]


@dataclass
class Fault:
    kind: FaultKind
    times: int
    status: int
    matches: Callable[[str, str], bool]
    after: int  # matching requests to let through first
    headers: dict[str, str] = field(default_factory=dict)  # "status": sent with the answer
    start: int = 0  # "bad_range": where the answer's Content-Range starts


def _file_request(method: str, path: str) -> bool:
    return method == "GET" and ("/resolve/" in path or path.startswith("/cdn/"))


def _any_request(method: str, path: str) -> bool:
    return True


class HubStub:
    """Serve `repos` on 127.0.0.1 (port chosen by the OS) until `close()`.

    page_size: tree entries per answer (the hub's 1000; 50 with expand=true, or fewer).
    """

    def __init__(self, repos: list[StubRepo], *, page_size: int = PAGE_SIZE) -> None:
        self.repos = {(repo.repo_type, repo.repo_id): repo for repo in repos}
        self.page_size = page_size
        self.requests: list[RequestRecord] = []
        self.faults: list[Fault] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._started = time.monotonic()
        self._rate_counts: dict[tuple[str, bool, int], int] = {}
        self._cdn_secret = secrets.token_bytes(32)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.cdn_url = f"http://localhost:{self.port}/cdn"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self.release_stalls()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> HubStub:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def repo(self, repo_id: str, repo_type: str = "dataset") -> StubRepo:
        return self.repos[(repo_type, repo_id)]

    def inject(
        self,
        kind: FaultKind,
        times: int = 1,
        *,
        status: int = 503,
        on: Literal["file", "any"] = "file",
        after: int = 0,
        headers: dict[str, str] | None = None,
        start: int = 0,
    ) -> None:
        """Make the next `times` matching requests fail.

        kind: "status" answers `status` (with `headers`; a 429 carries the hub's rate-limit
        message) instead of the request; "drop" sends the headers and half the file body, then
        closes the connection; "corrupt" sends a body of the right size with different bytes;
        "stall" sends half the body, then waits for `release_stalls()` (or 60 s) and closes the
        connection; "bad_range" answers a Range request with a 206 whose Content-Range starts at
        `start` (default 0: the whole file) instead of the offset asked for (a request asking
        for `start` itself is let through). on: "file" = file GETs only; "any" = every request
        ("status" only). after: let that many matching requests through first.
        """
        matches = _any_request if on == "any" else _file_request
        with self._lock:
            self.faults.append(
                Fault(kind, times, status, matches, after, dict(headers or {}), start)
            )

    def release_stalls(self) -> None:
        self._released.set()

    def take_fault(
        self,
        kinds: tuple[FaultKind, ...],
        method: str,
        path: str,
        applies: Callable[[Fault], bool] = lambda fault: True,
    ) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if (
                    fault.kind in kinds
                    and fault.times > 0
                    and fault.matches(method, path)
                    and applies(fault)
                ):
                    if fault.after > 0:
                        fault.after -= 1
                        continue
                    fault.times -= 1
                    return fault
        return None

    def record(self, entry: RequestRecord) -> None:
        with self._lock:
            self.requests.append(entry)

    def file_gets(self) -> list[RequestRecord]:
        """Every GET that asked for file bytes so far."""
        with self._lock:
            return [r for r in self.requests if r.is_file_get]

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def rate_limit(self, bucket: str, authenticated: bool) -> tuple[str, str]:
        """The `RateLimit` and `RateLimit-Policy` headers the hub sends with every answer
        (quotas per 5-minute window as the hub's: api 500/1000, resolvers 3000/5000, anonymous
        and with a token). The quota is counted but never enforced."""
        quota = _QUOTAS[bucket][authenticated]
        elapsed = time.monotonic() - self._started
        window = int(elapsed // RATE_WINDOW_S)
        with self._lock:
            key = (bucket, authenticated, window)
            self._rate_counts[key] = self._rate_counts.get(key, 0) + 1
            used = self._rate_counts[key]
        reset = max(1, int(RATE_WINDOW_S - elapsed % RATE_WINDOW_S))
        return (
            f'"{bucket}";r={max(quota - used, 0)};t={reset}',
            f'"fixed window";"{bucket}";q={quota};w={RATE_WINDOW_S}',
        )

    def sign(self, path: str, expires: int) -> str:
        return _b64(hmac.digest(self._cdn_secret, f"{path}?{expires}".encode(), "sha256"))

    def env(self, hf_home: Path, token: str | None = None) -> dict[str, str]:
        """Environment for a subprocess that must talk to this stub and nothing else."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
        env.update(
            HF_ENDPOINT=self.url,
            HF_HOME=str(hf_home),  # no cached token or files from the developer's machine
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_UPDATE_CHECK="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
            PYTHONUNBUFFERED="1",
        )
        if token is not None:
            env["HF_TOKEN"] = token
        return env


# Headers of every hub answer (recorded from huggingface.co; CloudFront's own left out).
_HUB_HEADERS = {
    "Access-Control-Allow-Origin": "https://huggingface.co",
    "Access-Control-Expose-Headers": (
        "X-Repo-Commit,X-Request-Id,X-Error-Code,X-Error-Message,X-Total-Count,ETag,Link,"
        "Accept-Ranges,Content-Range,X-Linked-Size,X-Linked-ETag,X-Xet-Hash"
    ),
    "Vary": "Origin",
    "X-Powered-By": "huggingface-moon",
}
_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json; charset=utf-8"


def _rate_limit_message(bucket: str, authenticated: bool) -> str:
    """The hub's 429 message (as users have quoted it)."""
    quota = _QUOTAS[bucket][authenticated]
    return (
        f"We had to rate limit you, you hit the quota of {quota} {bucket} requests per 5 minutes "
        "period. Upgrade to a PRO user or Team/Enterprise organization account "
        "(https://hf.co/pricing) to get higher limits. See https://huggingface.co/docs/hub/rate-limits"
    )


def _html_error(status: int, reason: str) -> bytes:
    return (
        f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {reason}</h1></center>\r\n</body>\r\n</html>\r\n"
    ).encode()


def _parse_range(value: str, total: int) -> tuple[int, int] | None | Literal["unsatisfiable"]:
    """(start, end) of a single-range `Range` header; None if it is not one (then ignored)."""
    unit, _, spec = value.partition("=")
    if unit.strip() != "bytes" or "," in spec or "-" not in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if not first:  # suffix: the last N bytes
            count = int(last)
            return (max(total - count, 0), total - 1) if count and total else "unsatisfiable"
        start, end = int(first), int(last) if last else total - 1
    except ValueError:
        return None
    if start >= total:
        return "unsatisfiable"
    if end < start:
        return None
    return start, min(end, total - 1)


def _make_handler(hub: HubStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like the real hub; every answer has a length

        def log_message(self, format: str, *args: object) -> None:  # the request log replaces it
            pass

        def send_response(self, code: int, message: str | None = None) -> None:
            # Without http.server's "Server: BaseHTTP/..." header: the hub sends none.
            self.send_response_only(code, message)
            self.send_header("Date", self.date_time_string())

        def finish(self) -> None:
            try:
                super().finish()
            except OSError:  # the client, or a "drop" fault, already closed the connection
                pass

        def do_HEAD(self) -> None:
            self._handle()

        def do_GET(self) -> None:
            self._handle()

        def do_POST(self) -> None:
            self._handle()

        # -- plumbing -------------------------------------------------------------------------

        def _handle(self) -> None:
            url = urlsplit(self.path)
            self.raw_path = url.path
            self.raw_query = url.query
            # Split first, unquote each segment after: "refs%2Fpr%2F1" stays one segment.
            self.segments = [unquote(part) for part in url.path.strip("/").split("/")]
            self.url_path = unquote(url.path)
            self.query = parse_qs(url.query)
            length = int(self.headers.get("Content-Length") or 0)
            self.body = self.rfile.read(length) if length else b""
            self.is_cdn = self.segments[0] == "cdn"
            self.bucket = "api" if self.segments[0] == "api" else "resolvers"
            # Logged on arrival (status filled in when sent): a stalled answer is in the log
            # from the moment it was asked for.
            self.record = RequestRecord(
                self.command,
                self.url_path,
                0,
                self.headers.get("Range"),
                self.headers.get("Authorization"),
                url.query,
                url.path,
            )
            hub.record(self.record)
            fault = hub.take_fault(("status",), self.command, self.url_path)
            if fault is not None:
                self._send_fault(fault)
            else:
                self._route()

        def _send_fault(self, fault: Fault) -> None:
            status, headers = fault.status, dict(fault.headers)
            reason = self.responses.get(status, ("Error",))[0]
            if self.is_cdn or status >= 500:  # from CloudFront or the load balancer, not the app
                return self._send_bytes(
                    _html_error(status, reason), status, {"Content-Type": "text/html", **headers}
                )
            if status == 429:
                message = _rate_limit_message(self.bucket, "Authorization" in self.headers)
            else:
                message = reason
            self._send_json({"error": message}, status, {"X-Error-Message": message, **headers})

        def _start(self, status: int, headers: dict[str, str]) -> None:
            self.record.status = status
            self.send_response(status)
            if not self.is_cdn:
                ratelimit, policy = hub.rate_limit(self.bucket, "Authorization" in self.headers)
                request_id = f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)}"
                headers = {
                    **_HUB_HEADERS,
                    "RateLimit": ratelimit,
                    "RateLimit-Policy": policy,
                    "X-Request-Id": request_id,
                    **headers,
                }
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()

        def _send_bytes(self, data: bytes, status: int = 200, headers: dict | None = None) -> None:
            self._start(status, {"Content-Length": str(len(data)), **(headers or {})})
            if self.command != "HEAD":
                self.wfile.write(data)

        def _send_json(
            self, payload: object, status: int = 200, headers: dict | None = None
        ) -> None:
            body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
            digest = base64.b64encode(hashlib.sha1(body).digest()).decode()[:27]
            headers = {
                "Content-Type": _JSON,
                "ETag": f'W/"{len(body):x}-{digest}"',
                **(headers or {}),
            }
            self._send_bytes(body, status, headers)

        def _error(self, status: int, code: str, message: str, extra: dict | None = None) -> None:
            """An error as the hub's API sends it: JSON body, X-Error-Code and -Message."""
            headers = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {})}
            self._send_json({"error": message}, status, {**headers, **(extra or {})})

        def _text_error(
            self, status: int, code: str, message: str, extra: dict | None = None
        ) -> None:
            """An error as resolve/ sends it: the message as plain text."""
            headers = {"Content-Type": _TEXT, "X-Error-Message": message}
            if code:
                headers["X-Error-Code"] = code
            self._send_bytes(message.encode(), status, {**headers, **(extra or {})})

        # -- routing --------------------------------------------------------------------------

        def _route(self) -> None:
            parts = self.segments
            if parts[0] == "cdn":
                return self._cdn(parts[1:])
            if parts[0] == "api" and len(parts) >= 3 and parts[1] in ("models", "datasets"):
                return self._api(parts[1][:-1], parts[2:])
            repo_type = "model"
            if parts[0] == "datasets":
                repo_type, parts = "dataset", parts[1:]
            if "resolve" in parts:
                cut = parts.index("resolve")
                return self._resolve(repo_type, "/".join(parts[:cut]), parts[cut + 1 :])
            self._error(404, "", "Sorry, we can't find the page you are looking for.")

        def _find_repo(self, repo_type: str, parts: list[str]) -> tuple[StubRepo | None, list[str]]:
            for size in (2, 1):  # "namespace/name" before a bare "name"
                repo = hub.repos.get((repo_type, "/".join(parts[:size])))
                if repo is not None:
                    return repo, parts[size:]
            return None, parts

        def _authorized(self, repo: StubRepo) -> bool:
            if repo.token is None:
                return True
            given = self.headers.get("Authorization")
            if given is None:
                self._error(401, "RepoNotFound", "Repository not found")
                return False
            if given != f"Bearer {repo.token}":
                self._error(401, "", "Invalid credentials in Authorization header")
                return False
            return True

        def _api(self, repo_type: str, parts: list[str]) -> None:
            repo, rest = self._find_repo(repo_type, parts)
            if repo is None:
                # The hub answers 401 for a repo it will not show you, whether or not it exists.
                return self._error(401, "RepoNotFound", "Repository not found")
            if not self._authorized(repo):
                return None
            action = rest[0] if rest else "revision"
            if action == "refs" and len(rest) == 1 and self.command == "GET":
                return self._refs(repo)
            name = rest[1] if len(rest) > 1 else "main"
            revision = repo.revision(name)
            if revision is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {name}")
            if action == "revision" and len(rest) <= 2 and self.command in ("GET", "HEAD"):
                return self._send_json(self._repo_info(repo, revision))
            if action == "tree" and self.command in ("GET", "HEAD"):
                return self._tree(revision, "/".join(rest[2:]))
            if action == "paths-info" and self.command == "POST" and len(rest) == 2:
                form = parse_qs(self.body.decode())
                expand = form.get("expand", ["False"])[0].lower() in ("true", "1")
                known = set(revision.entries) | revision.folders()
                wanted = list(dict.fromkeys(p.strip("/") for p in form.get("paths", [])))
                return self._send_json(
                    [revision.tree_entry(p, expand) for p in wanted if p in known]
                )
            return self._error(404, "", "Sorry, we can't find the page you are looking for.")

        def _repo_info(self, repo: StubRepo, revision: StubRevision) -> dict:
            card = revision.card_data()
            blobs = self.query.get("blobs", ["false"])[0].lower() in ("true", "1")
            siblings = []
            for path, entry in revision.entries.items():
                sibling: dict = {"rfilename": path}
                if blobs:
                    sibling.update(blobId=entry.oid, size=len(entry.data))
                    if entry.lfs:
                        sibling["lfs"] = {
                            "sha256": entry.sha256,
                            "size": len(entry.data),
                            "pointerSize": entry.pointer_size,
                        }
                siblings.append(sibling)
            info: dict = {
                "_id": repo.mongo_id,
                "id": repo.repo_id,
                "sha": revision.commit,
                "lastModified": revision.last_modified,
                "private": repo.token is not None,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": _tags(repo, revision, card or {}),
                "siblings": siblings,
                "createdAt": CREATED_AT,
                "usedStorage": repo.used_storage(),
            }
            if "/" in repo.repo_id:
                info["author"] = repo.repo_id.split("/")[0]
            if repo.repo_type == "model":
                info.update(_model_fields(repo, revision, card or {}))
            else:
                if card is not None:
                    info["cardData"] = card
                    if card.get("paperswithcode_id"):
                        info["paperswithcode_id"] = card["paperswithcode_id"]
                description = " ".join(revision.card_text().split())[:300]
                if description:
                    info["description"] = description
            wanted = self.query.get("expand", []) + self.query.get("expand[]", [])
            if wanted:  # only what was asked for (the hub always adds _id and id)
                info = {k: v for k, v in info.items() if k in {"_id", "id", *wanted}}
            return info

        def _refs(self, repo: StubRepo) -> None:
            include_prs = self.query.get("include_prs", ["0"])[0].lower() in ("1", "true")
            group = {
                "branch": "branches",
                "convert": "converts",
                "tag": "tags",
                "pr": "pullRequests",
            }
            payload: dict[str, list[dict]] = {name: [] for name in group.values()}
            for revision in repo.revisions.values():
                payload[group[revision.kind]].append(
                    {"name": revision.name, "ref": revision.ref, "targetCommit": revision.commit}
                )
            payload["pullRequests"].sort(key=lambda ref: int(ref["name"]))
            if not include_prs:
                del payload["pullRequests"]
            self._send_json(payload)

        def _tree(self, revision: StubRevision, folder: str) -> None:
            recursive = self.query.get("recursive", ["false"])[0].lower() in ("true", "1")
            expand = self.query.get("expand", ["false"])[0].lower() in ("true", "1")
            folder = folder.strip("/")
            if folder and folder not in revision.folders():
                return self._error(
                    404, "EntryNotFound", f'{folder} does not exist on "{revision.name}"'
                )
            prefix = f"{folder}/" if folder else ""
            paths = [
                path
                for path in revision.paths()
                if path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :])
            ]
            first = 0
            cursor = self.query.get("cursor", [None])[0]
            if cursor is not None:
                try:
                    after = json.loads(base64.urlsafe_b64decode(cursor))["file_name"]
                except (ValueError, KeyError, TypeError):
                    return self._error(400, "", "Invalid cursor")
                first = bisect.bisect_right(paths, after)
            size = min(hub.page_size, EXPAND_PAGE_SIZE) if expand else hub.page_size
            page = paths[first : first + size]
            headers = {}
            if first + size < len(paths):
                token = json.dumps({"file_name": page[-1]}).encode()
                query = [(k, v) for k, v in parse_qsl(self.raw_query, True) if k != "cursor"]
                query.append(("cursor", base64.urlsafe_b64encode(token).decode()))
                headers["Link"] = f'<{hub.url}{self.raw_path}?{urlencode(query)}>; rel="next"'
            self._send_json([revision.tree_entry(path, expand) for path in page], 200, headers)

        def _resolve(self, repo_type: str, repo_id: str, rest: list[str]) -> None:
            repo = hub.repos.get((repo_type, repo_id))
            if repo is None:
                return self._error(401, "RepoNotFound", "Repository not found")
            if not self._authorized(repo):
                return None
            name, path = (rest[0], "/".join(rest[1:])) if rest else ("main", "")
            revision = repo.revision(name)
            if revision is None:
                return self._text_error(404, "RevisionNotFound", f"Invalid rev id: {name}")
            entry = revision.entries.get(path)
            commit = {"X-Repo-Commit": revision.commit, "Accept-Ranges": "bytes"}
            if entry is None:
                return self._text_error(404, "EntryNotFound", "Entry not found", commit)
            if entry.lfs:
                location = self._signed_cdn_url(repo, path, entry)
                # No ETag here (the hub sends none on this 302), and no X-Xet-Hash or xet
                # Link: with hf_xet installed huggingface_hub would switch to the Xet protocol.
                return self._send_bytes(
                    f"Found. Redirecting to {location}".encode(),
                    302,
                    {
                        "Content-Type": _TEXT,
                        "Location": location,
                        "Cache-Control": "no-store",
                        "Vary": "Origin, Accept",
                        "X-Linked-Etag": f'"{entry.sha256}"',
                        "X-Linked-Size": str(len(entry.data)),
                        **commit,
                    },
                )
            name_only = path.rsplit("/", 1)[-1]
            content_type = mimetypes.guess_type(name_only)[0] or "application/octet-stream"
            if content_type.startswith("text/") or content_type == "application/json":
                content_type += "; charset=utf-8"
            self._serve_file(
                entry,
                f'"{entry.oid}"',
                {
                    "Content-Type": content_type,
                    "Content-Disposition": _disposition(name_only),
                    "Content-Security-Policy": "default-src 'none'; sandbox",
                    **commit,
                },
            )

        def _signed_cdn_url(self, repo: StubRepo, path: str, entry: StubFile) -> str:
            cdn_path = f"/cdn/xet-bridge-us/{repo.mongo_id}/{entry.xet_hash}"
            expires = int(time.time()) + 3600
            resource = f"{hub.cdn_url.removesuffix('/cdn')}{cdn_path}"
            condition = {"DateLessThan": {"AWS:EpochTime": expires}}
            policy = {"Statement": [{"Resource": resource + "*", "Condition": condition}]}
            query = {
                "X-Xet-Cas-Uid": "public",
                "response-content-disposition": _disposition(path.rsplit("/", 1)[-1]),
                "Expires": str(expires),
                "Policy": _b64(json.dumps(policy, separators=(",", ":")).encode()),
                "Signature": hub.sign(cdn_path, expires),
                "Key-Pair-Id": CDN_KEY_PAIR_ID,
            }
            return f"{resource}?{urlencode(query)}"

        def _cdn(self, parts: list[str]) -> None:
            """A signed CloudFront URL: 403 without a valid signature or once expired."""
            query = {k: v[0] for k, v in self.query.items()}
            expires = query.get("Expires", "")
            if "Key-Pair-Id" not in query or "Signature" not in query:
                return self._cdn_denied("MissingKey", "Missing Key-Pair-Id query parameter")
            valid = expires.isdigit() and hmac.compare_digest(
                query["Signature"], hub.sign(self.raw_path, int(expires))
            )
            if not valid or int(expires) < time.time():
                return self._cdn_denied("AccessDenied", "Access denied")
            entry = None
            if len(parts) == 3 and parts[0] == "xet-bridge-us":
                repo = next((r for r in hub.repos.values() if r.mongo_id == parts[1]), None)
                entry = repo.find_lfs(parts[2]) if repo is not None else None
            if entry is None:
                return self._cdn_denied("NoSuchKey", "The specified key does not exist.", 404)
            self._serve_file(
                entry,
                f'"{entry.xet_hash}"',
                {
                    "Content-Type": "application/octet-stream",
                    "Content-Disposition": query.get("response-content-disposition", ""),
                    "Last-Modified": formatdate(_MAIN_TIME, usegmt=True),
                    "Cache-Control": "public, max-age=604800, immutable, s-maxage=604800",
                    "Via": "1.1 stub.cloudfront.net (CloudFront)",
                    "X-Cache": "Miss from cloudfront",
                },
            )

        def _cdn_denied(self, code: str, message: str, status: int = 403) -> None:
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
            ).encode()
            self._send_bytes(body, status, {"Content-Type": "text/xml"})

        def _serve_file(self, entry: StubFile, etag: str, extra: dict[str, str]) -> None:
            data, total = entry.data, len(entry.data)
            headers = {"ETag": etag, "Accept-Ranges": "bytes", **extra}
            status, start = 200, 0
            wanted = _parse_range(self.headers.get("Range") or "", total)
            if wanted == "unsatisfiable":
                headers["Content-Range"] = f"bytes */{total}"
                return self._send_bytes(b"", 416, headers)
            if wanted is not None:
                start, end = wanted
                data, status = data[start : end + 1], 206
                headers["Content-Range"] = f"bytes {start}-{end}/{total}"
            fault = None
            if self.command == "GET" and wanted is not None:
                fault = hub.take_fault(
                    ("bad_range",), self.command, self.url_path, lambda f: f.start != start
                )
            if fault is not None:  # the bytes from elsewhere, labelled as such
                data = entry.data[fault.start :]
                headers["Content-Range"] = f"bytes {fault.start}-{total - 1}/{total}"
                return self._send_bytes(data, 206, headers)
            if self.command == "GET":
                fault = hub.take_fault(("drop", "corrupt", "stall"), self.command, self.url_path)
            if fault is None:
                return self._send_bytes(data, status, headers)
            if fault.kind == "corrupt":
                middle = len(data) // 2
                bad = data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 64])
                return self._send_bytes(bad + data[middle + 64 :], status, headers)
            # "drop" and "stall": promise the whole body, send half of it, hang up (later).
            self._start(status, {"Content-Length": str(len(data)), **headers})
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            if fault.kind == "stall":
                hub._released.wait(60)
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

    return Handler


def _disposition(name: str) -> str:
    return f"inline; filename*=UTF-8''{quote(name)}; filename=\"{name}\";"


def _tags(repo: StubRepo, revision: StubRevision, card: dict) -> list[str]:
    """The hub's tags: the card's own, its metadata (datasets: "key:value"; models: library,
    language and pipeline bare, "license:X"), the data format, the region."""

    def values(key: str) -> list[str]:
        found = card.get(key) or []
        return [str(v) for v in (found if isinstance(found, list) else [found])]

    tags = values("tags")
    if repo.repo_type == "dataset":
        for key in ("task_categories", "task_ids", "language", "license", "size_categories"):
            tags += [f"{key}:{value}" for value in values(key)]
        if any(p.endswith(".parquet") for p in revision.entries):
            tags += ["format:parquet", "library:datasets"]
    else:
        tags += values("library_name") + values("pipeline_tag") + values("language")
        tags += [f"license:{value}" for value in values("license")]
    return [*dict.fromkeys(tags), "region:us"]


def _model_fields(repo: StubRepo, revision: StubRevision, card: dict) -> dict:
    """What a model's info adds (keys as recorded from the hub)."""
    config: dict = {}
    if "config.json" in revision.entries:
        try:
            full = json.loads(revision.entries["config.json"].data)
        except ValueError:
            full = {}
        config = {k: full[k] for k in ("architectures", "model_type") if k in full}
    fields = {
        "modelId": repo.repo_id,
        "cardData": card,
        "config": config,
        "model-index": card.get("model-index"),
        "spaces": [],
        "transformersInfo": {},
        "widgetData": {},
    }
    library = card.get("library_name") or ("transformers" if config else None)
    if library:
        fields["library_name"] = library
    if card.get("pipeline_tag"):
        fields["pipeline_tag"] = card["pipeline_tag"]
    return fields


# -- repos built from test data --------------------------------------------------------------


def parquet_bytes(texts: list[str], row_group_size: int = 32) -> bytes:
    """One parquet file with a `text` column, several row groups (as real shards have)."""
    buffer = io.BytesIO()
    pq.write_table(pa.table({"text": texts}), buffer, row_group_size=row_group_size)
    return buffer.getvalue()


def parquet_shards(documents: list[str], names: list[str]) -> dict[str, bytes]:
    """`documents` (duplicates dropped) split in order across parquet files at `names`."""
    documents = list(dict.fromkeys(documents))
    per_shard = -(-len(documents) // len(names))
    return {
        name: parquet_bytes(documents[i * per_shard : (i + 1) * per_shard])
        for i, name in enumerate(names)
    }


def shard_names(folder: str, num_shards: int, split: str = "train") -> list[str]:
    """The hub's shard names: FOLDER/train-00000-of-00003.parquet, ..."""
    return [f"{folder}/{split}-{i:05d}-of-{num_shards:05d}.parquet" for i in range(num_shards)]


def partial_names(num_files: int, config: str = "plain_text", split: str = "train") -> list[str]:
    """The parquet converter's names for a dataset too big to convert whole:
    CONFIG/partial-train/0000.parquet, ..."""
    return [f"{config}/partial-{split}/{i:04d}.parquet" for i in range(num_files)]


_OPENWEBTEXT_CARD = {
    "annotations_creators": ["no-annotation"],
    "language_creators": ["found"],
    "language": ["en"],
    "license": ["cc0-1.0"],
    "multilinguality": ["monolingual"],
    "pretty_name": "OpenWebText",
    "size_categories": ["1M<n<10M"],
    "source_datasets": ["original"],
    "task_categories": ["text-generation", "fill-mask"],
    "task_ids": ["language-modeling", "masked-language-modeling"],
    "paperswithcode_id": "openwebtext",
}
_OPENWEBTEXT_TEXT = """
# Dataset Card for "openwebtext"

## Dataset Description

- **Homepage:** [https://skylion007.github.io/OpenWebTextCorpus/](https://skylion007.github.io/OpenWebTextCorpus/)

### Dataset Summary

An open-source replication of the WebText dataset from OpenAI, that was used to train GPT-2.

This distribution was created by Aaron Gokaslan and Vanya Cohen of Brown University.
(This copy is a test stand-in: its documents come from Python's documentation.)
"""


def _card(metadata: dict) -> bytes:
    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)
    return f"---\n{front}---\n{_OPENWEBTEXT_TEXT}".encode()


def openwebtext_files(
    documents: list[str], num_shards: int = 3, layout: Literal["plain_text", "data"] = "plain_text"
) -> dict[str, bytes]:
    """The files of Skylion007/openwebtext's main branch (see `openwebtext_repo`)."""
    shards = parquet_shards(documents, shard_names(layout, num_shards))
    texts = list(dict.fromkeys(documents))
    num_bytes = sum(len(t.encode()) for t in texts)
    info: dict = {
        "features": [{"name": "text", "dtype": "string"}],
        "splits": [{"name": "train", "num_bytes": num_bytes, "num_examples": len(texts)}],
        "download_size": sum(len(data) for data in shards.values()),
        "dataset_size": num_bytes,
    }
    metadata = dict(_OPENWEBTEXT_CARD)
    if layout == "plain_text":
        metadata["dataset_info"] = {"config_name": "plain_text", **info}
        metadata["configs"] = [{
            "config_name": "plain_text",
            "data_files": [{"split": "train", "path": "plain_text/train-*"}],
            "default": True,
        }]  # fmt: skip
    else:  # no configs: `datasets` finds data/train-* by its conventions, as config "default"
        metadata["dataset_info"] = info
    return {".gitattributes": HUB_GITATTRIBUTES, "README.md": _card(metadata), **shards}


def openwebtext_repo(
    documents: list[str],
    num_shards: int = 3,
    repo_id: str = OPENWEBTEXT_REPO,
    token: str | None = None,
    layout: Literal["plain_text", "data"] = "plain_text",
    refs: dict[str, dict[str, bytes]] | None = None,
) -> StubRepo:
    """A dataset repo laid out like Skylion007/openwebtext today.

    layout "plain_text": plain_text/train-000NN-of-000MM.parquet and a README whose `configs`
    name them (config plain_text, the default) with a `dataset_info` block; "data":
    data/train-000NN-of-000MM.parquet and a README without `configs`. Duplicate documents are
    dropped, so that tests can tell documents apart by their text.
    """
    files = openwebtext_files(documents, num_shards, layout)
    return StubRepo(repo_id, files, repo_type="dataset", token=token, refs=dict(refs or {}))


def _tar(name: str, payload: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        member = tarfile.TarInfo(name)
        member.size, member.mtime = len(payload), _MAIN_TIME
        tar.addfile(member, io.BytesIO(payload))
    return buffer.getvalue()


_LOADING_SCRIPT = '''"""The Open WebText Corpus (test stand-in of the loading script)."""

import datasets

_URL = "subsets/urlsf_subset{:02d}.tar"
_N_DATA_FILES = 21


class Openwebtext(datasets.GeneratorBasedBuilder):
    BUILDER_CONFIGS = [datasets.BuilderConfig(name="plain_text", version="1.0.0")]

    def _info(self):
        return datasets.DatasetInfo(features=datasets.Features({"text": datasets.Value("string")}))

    def _split_generators(self, dl_manager):
        archives = dl_manager.download([_URL.format(i) for i in range(_N_DATA_FILES)])
        train = datasets.SplitGenerator(name="train", gen_kwargs={"archives": archives})
        return [train]
'''


def script_only_files() -> dict[str, bytes]:
    """Skylion007/openwebtext before its parquet conversion: a loading script, a card without
    `configs` and the 21 tar archives it reads (tiny stand-ins)."""
    metadata = dict(_OPENWEBTEXT_CARD)
    metadata["dataset_info"] = {
        "features": [{"name": "text", "dtype": "string"}],
        "config_name": "plain_text",
        "splits": [{"name": "train", "num_bytes": 39769494896, "num_examples": 8013769}],
        "download_size": 12880189440,
        "dataset_size": 39769494896,
    }
    files = {
        ".gitattributes": HUB_GITATTRIBUTES,
        "README.md": _card(metadata),
        "openwebtext.py": _LOADING_SCRIPT.encode(),
    }
    for i in range(21):
        name = f"urlsf_subset{i:02d}"
        files[f"subsets/{name}.tar"] = _tar(f"openwebtext/{name}-1_data.xz", b"stand-in\n")
    return files


def script_only_repo(
    repo_id: str = OPENWEBTEXT_REPO,
    refs: dict[str, dict[str, bytes]] | None = None,
    token: str | None = None,
) -> StubRepo:
    """The historic Skylion007/openwebtext: main holds only `script_only_files()`; `refs` adds
    other revisions (see `openwebtext_history_repo`)."""
    return StubRepo(repo_id, script_only_files(), "dataset", token, dict(refs or {}))


def openwebtext_history_repo(
    documents: list[str],
    pr_shards: int = 2,
    convert_files: int = 2,
    repo_id: str = OPENWEBTEXT_REPO,
) -> StubRepo:
    """The script-only repo with parquet elsewhere: refs/pr/1 = main plus
    data/train-000NN-of-000MM.parquet; refs/convert/parquet = the hub's partial conversion,
    plain_text/partial-train/0000.parquet, ... (both from `documents`)."""
    pr = {**script_only_files(), **parquet_shards(documents, shard_names("data", pr_shards))}
    convert = {
        ".gitattributes": HUB_GITATTRIBUTES,
        **parquet_shards(documents, partial_names(convert_files)),
    }
    return script_only_repo(repo_id, {"refs/pr/1": pr, "refs/convert/parquet": convert})


def gpt2_repo(tokenizer_dir: Path) -> StubRepo:
    """The `gpt2` model repo: the tokenizer files textdata.save_gpt2_tokenizer wrote."""
    files = {p.name: p.read_bytes() for p in sorted(Path(tokenizer_dir).iterdir()) if p.is_file()}
    files["config.json"] = json.dumps(
        {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": 50257}
    ).encode()
    files[".gitattributes"] = HUB_GITATTRIBUTES
    files.setdefault(
        "README.md",
        b"---\nlanguage: en\ntags:\n- exbert\nlicense: mit\n---\n\n# GPT-2 (test stand-in)\n",
    )
    return StubRepo(GPT2_REPO, files, repo_type="model")


@pytest.fixture(name="hub")
def hub_fixture(gpt2_tokenizer_dir: Path, documents: list[str]) -> Iterator[HubStub]:
    """A running stub serving a 3-shard Skylion007/openwebtext and the `gpt2` tokenizer."""
    with HubStub([openwebtext_repo(documents), gpt2_repo(gpt2_tokenizer_dir)]) as stub:
        yield stub
