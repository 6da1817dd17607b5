"""A local stand-in for the Hugging Face Hub, for tests that must never leave 127.0.0.1.

It implements the endpoints huggingface_hub 2.x really calls, with the headers it reads:

    GET  /api/{models,datasets}/REPO[/revision/REV]    repo info ("sha" = resolved commit)
    GET  /api/{models,datasets}/REPO/tree/REV[/PATH]  listing; LFS files carry lfs.oid = sha256
    POST /api/{models,datasets}/REPO/paths-info/REV   the same entries, for the given paths
    HEAD|GET /[datasets/]REPO/resolve/REV/PATH        git files: 200 + ETag + X-Repo-Commit;
                                                      LFS files: 302 to the "CDN" + X-Linked-Etag,
                                                      X-Linked-Size, X-Repo-Commit
    HEAD|GET /cdn/SHA256                              the LFS bytes; Range -> 206

The "CDN" is the same server reached as http://localhost:PORT while the hub is http://127.0.0.1:PORT,
so, as on the real hub, the redirect crosses origins and the client drops the Authorization header.

Faults are injected with `HubStub.inject`: an HTTP status (e.g. 503) for the next N matching
requests, a connection closed half-way through a file body, a body of the right size with
corrupted bytes, or a body that stalls half-way (until `release_stalls()`), for interrupting a
client mid-download. Every request is appended to `HubStub.requests`.

Use it as a context manager (`with HubStub([repo, ...]) as hub:`) or through the `hub` fixture
below: import it into a test module with `from hub_stub import hub_fixture  # noqa: F401`, then
take a `hub` argument (or add "hub_stub" to conftest.py's `pytest_plugins`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

OPENWEBTEXT_REPO = "Skylion007/openwebtext"
GPT2_REPO = "gpt2"
LFS_SUFFIXES = (".parquet", ".bin", ".safetensors")
LFS_MIN_SIZE = 1_000_000  # larger files are LFS even without a binary suffix, as on the hub


def git_blob_oid(data: bytes) -> str:
    """The git object id of a blob: what the hub reports as `oid` for every file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class StubFile:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else git_blob_oid(self.data)


@dataclass
class StubRepo:
    """One repo at one commit. `token`: if set, the repo is private and needs `Bearer <token>`."""

    repo_id: str
    files: dict[str, bytes]
    repo_type: Literal["model", "dataset"] = "dataset"
    token: str | None = None
    entries: dict[str, StubFile] = field(init=False)
    commit: str = field(init=False)

    def __post_init__(self) -> None:
        self.entries = {
            path: StubFile(data, path.endswith(LFS_SUFFIXES) or len(data) >= LFS_MIN_SIZE)
            for path, data in sorted(self.files.items())
        }
        digest = hashlib.sha1(self.repo_id.encode())
        for path, entry in self.entries.items():
            digest.update(f"{path}\0{entry.etag}\0".encode())
        self.commit = digest.hexdigest()

    def knows_revision(self, revision: str) -> bool:
        return revision in ("main", self.commit)

    def folders(self) -> set[str]:
        return {
            "/".join(path.split("/")[:depth])
            for path in self.entries
            for depth in range(1, path.count("/") + 1)
        }

    def tree_entry(self, path: str) -> dict:
        if path not in self.entries:
            return {
                "type": "directory",
                "oid": hashlib.sha1(path.encode()).hexdigest(),
                "path": path,
            }
        entry = self.entries[path]
        info: dict = {"type": "file", "oid": git_blob_oid(entry.data), "size": len(entry.data)}
        info["path"] = path
        if entry.lfs:
            info["lfs"] = {"oid": entry.sha256, "size": len(entry.data), "pointerSize": 134}
        return info


@dataclass
class RequestRecord:
    method: str
    path: str  # URL path, unquoted, without the query string
    status: int
    range: str | None
    authorization: str | None

    @property
    def is_file_get(self) -> bool:
        """A GET that fetches file bytes (the resolve redirect or the CDN answer)."""
        return self.method == "GET" and ("/resolve/" in self.path or self.path.startswith("/cdn/"))


FaultKind = Literal["status", "drop", "corrupt", "stall"]


@dataclass
class Fault:
    kind: FaultKind
    times: int
    status: int
    matches: Callable[[str, str], bool]
    after: int  # matching requests to let through first


def _file_request(method: str, path: str) -> bool:
    return method == "GET" and ("/resolve/" in path or path.startswith("/cdn/"))


def _any_request(method: str, path: str) -> bool:
    return True


class HubStub:
    """Serve `repos` on 127.0.0.1 (port chosen by the OS) until `close()`."""

    def __init__(self, repos: list[StubRepo]) -> None:
        self.repos = {(repo.repo_type, repo.repo_id): repo for repo in repos}
        self.requests: list[RequestRecord] = []
        self.faults: list[Fault] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
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
    ) -> None:
        """Make the next `times` matching requests fail.

        kind: "status" answers `status` instead of the request; "drop" sends the headers and half
        the file body, then closes the connection; "corrupt" sends a body of the right size with
        different bytes; "stall" sends half the body, then waits for `release_stalls()` (or 60 s)
        and closes the connection. on: "file" = file GETs only; "any" = every request ("status"
        only). after: let that many matching requests through first.
        """
        matches = _any_request if on == "any" else _file_request
        with self._lock:
            self.faults.append(Fault(kind, times, status, matches, after))

    def release_stalls(self) -> None:
        self._released.set()

    def take_fault(self, kinds: tuple[FaultKind, ...], method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.kind in kinds and fault.times > 0 and fault.matches(method, path):
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


def _make_handler(hub: HubStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like the real hub; every answer has a length

        def log_message(self, format: str, *args: object) -> None:  # the request log replaces it
            pass

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
            self.url_path = unquote(url.path)
            self.query = parse_qs(url.query)
            length = int(self.headers.get("Content-Length") or 0)
            self.body = self.rfile.read(length) if length else b""
            # Logged on arrival (status filled in when sent): a stalled answer is in the log
            # from the moment it was asked for.
            self.record = RequestRecord(
                self.command,
                self.url_path,
                0,
                self.headers.get("Range"),
                self.headers.get("Authorization"),
            )
            hub.record(self.record)
            fault = hub.take_fault(("status",), self.command, self.url_path)
            if fault is not None:
                self._send_json({"error": "injected fault"}, status=fault.status)
            else:
                self._route()

        def _start(self, status: int, headers: dict[str, str]) -> None:
            self.record.status = status
            self.send_response(status)
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
            body = json.dumps(payload).encode()
            self._send_bytes(body, status, {"Content-Type": "application/json", **(headers or {})})

        def _error(self, status: int, code: str, message: str) -> None:
            self._send_json(
                {"error": message}, status, {"X-Error-Code": code, "X-Error-Message": message}
            )

        # -- routing --------------------------------------------------------------------------

        def _route(self) -> None:
            parts = self.url_path.strip("/").split("/")
            if parts[0] == "cdn" and len(parts) == 2:
                return self._cdn(parts[1])
            if parts[0] == "api" and len(parts) >= 3 and parts[1] in ("models", "datasets"):
                return self._api(parts[1][:-1], parts[2:])
            repo_type = "model"
            if parts[0] == "datasets":
                repo_type, parts = "dataset", parts[1:]
            if "resolve" in parts:
                cut = parts.index("resolve")
                return self._resolve(repo_type, "/".join(parts[:cut]), parts[cut + 1 :])
            self._error(404, "NotFound", f"No route for {self.url_path}")

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
            revision = rest[1] if len(rest) > 1 else "main"
            if not repo.knows_revision(revision):
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            if action == "revision":
                return self._send_json(self._repo_info(repo))
            if action == "tree" and self.command == "GET":
                return self._tree(repo, "/".join(rest[2:]))
            if action == "paths-info" and self.command == "POST":
                form = parse_qs(self.body.decode())
                wanted = [
                    p for p in form.get("paths", []) if p in repo.entries or p in repo.folders()
                ]
                return self._send_json([repo.tree_entry(p) for p in wanted])
            return self._error(404, "NotFound", f"No route for {self.url_path}")

        def _repo_info(self, repo: StubRepo) -> dict:
            return {
                "id": repo.repo_id,
                "sha": repo.commit,
                "private": repo.token is not None,
                "lastModified": "2024-01-01T00:00:00.000Z",
                "tags": [],
                "siblings": [{"rfilename": path} for path in repo.entries],
            }

        def _tree(self, repo: StubRepo, folder: str) -> None:
            recursive = self.query.get("recursive", ["False"])[0].lower() == "true"
            if folder and folder not in repo.folders():
                return self._error(404, "EntryNotFound", f"{folder} does not exist")
            prefix = f"{folder}/" if folder else ""
            paths = sorted(
                path
                for path in [*repo.folders(), *repo.entries]
                if path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :])
            )
            self._send_json([repo.tree_entry(path) for path in paths])

        def _resolve(self, repo_type: str, repo_id: str, rest: list[str]) -> None:
            repo = hub.repos.get((repo_type, repo_id))
            if repo is None:
                return self._error(401, "RepoNotFound", "Repository not found")
            if not self._authorized(repo):
                return None
            revision, path = (rest[0], "/".join(rest[1:])) if rest else ("main", "")
            if not repo.knows_revision(revision):
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            entry = repo.entries.get(path)
            commit = {"X-Repo-Commit": repo.commit}
            if entry is None:
                return self._send_json(
                    {"error": "Entry not found"},
                    404,
                    {
                        "X-Error-Code": "EntryNotFound",
                        "X-Error-Message": "Entry not found",
                        **commit,
                    },
                )
            if entry.lfs:
                return self._send_bytes(
                    b"",
                    302,
                    {
                        "Location": f"{hub.cdn_url}/{entry.sha256}?signature=stub",
                        "ETag": f'"{git_blob_oid(entry.data)}"',
                        "X-Linked-Etag": f'"{entry.sha256}"',
                        "X-Linked-Size": str(len(entry.data)),
                        **commit,
                    },
                )
            self._serve_file(entry, commit)

        def _cdn(self, sha256: str) -> None:
            for repo in hub.repos.values():
                for entry in repo.entries.values():
                    if entry.lfs and entry.sha256 == sha256:
                        return self._serve_file(entry, {})
            self._error(404, "", "NoSuchKey")

        def _serve_file(self, entry: StubFile, extra: dict[str, str]) -> None:
            data, total = entry.data, len(entry.data)
            headers = {"ETag": f'"{entry.etag}"', "Accept-Ranges": "bytes", **extra}
            status, start = 200, 0
            wanted = self.headers.get("Range")
            if wanted:
                start_text, _, end_text = wanted.removeprefix("bytes=").partition("-")
                start = int(start_text)
                end = int(end_text) if end_text else total - 1
                if start >= total or end < start:
                    headers["Content-Range"] = f"bytes */{total}"
                    return self._send_bytes(b"", 416, headers)
                data = data[start : end + 1]
                status = 206
                headers["Content-Range"] = f"bytes {start}-{start + len(data) - 1}/{total}"
            fault = None
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


# -- repos built from test data --------------------------------------------------------------


def parquet_bytes(texts: list[str], row_group_size: int = 32) -> bytes:
    """One parquet file with a `text` column, several row groups (as real shards have)."""
    buffer = io.BytesIO()
    pq.write_table(pa.table({"text": texts}), buffer, row_group_size=row_group_size)
    return buffer.getvalue()


def openwebtext_repo(
    documents: list[str],
    num_shards: int = 3,
    repo_id: str = OPENWEBTEXT_REPO,
    token: str | None = None,
) -> StubRepo:
    """A dataset repo laid out like Skylion007/openwebtext: data/train-000NN-of-000MM.parquet.

    Duplicate documents are dropped, so that tests can tell documents apart by their text.
    """
    documents = list(dict.fromkeys(documents))
    per_shard = -(-len(documents) // num_shards)
    files = {
        f"data/train-{i:05d}-of-{num_shards:05d}.parquet": parquet_bytes(
            documents[i * per_shard : (i + 1) * per_shard]
        )
        for i in range(num_shards)
    }
    files["README.md"] = b"---\nlicense: cc0-1.0\n---\n# OpenWebText (test stand-in)\n"
    return StubRepo(repo_id, files, repo_type="dataset", token=token)


def gpt2_repo(tokenizer_dir: Path) -> StubRepo:
    """The `gpt2` model repo: the tokenizer files textdata.save_gpt2_tokenizer wrote."""
    files = {p.name: p.read_bytes() for p in sorted(Path(tokenizer_dir).iterdir()) if p.is_file()}
    files["config.json"] = json.dumps({"model_type": "gpt2", "vocab_size": 50257}).encode()
    return StubRepo(GPT2_REPO, files, repo_type="model")


@pytest.fixture(name="hub")
def hub_fixture(gpt2_tokenizer_dir: Path, documents: list[str]) -> Iterator[HubStub]:
    """A running stub serving a 3-shard Skylion007/openwebtext and the `gpt2` tokenizer."""
    with HubStub([openwebtext_repo(documents), gpt2_repo(gpt2_tokenizer_dir)]) as stub:
        yield stub
