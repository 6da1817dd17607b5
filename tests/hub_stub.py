"""A local stand-in for the Hugging Face Hub, for tests that must never leave 127.0.0.1.

It serves the endpoints huggingface_hub 2.x really calls, with the answers and headers
huggingface.co sends (tests/test_hub_download.py checks them through the real client). Three
modules: tests/hub_repo.py is the repo model (StubRepo: files, refs, commit and blob ids),
tests/hub_handler.py the HTTP handler (the endpoints it answers are listed there), and this one
the server (HubStub: fault injection, the request log, rate-limit counts) and the repos the
tests serve (openwebtext_repo, gpt2_repo, ...). HubStub, StubRepo and the helpers tests use are
importable from here.

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

import hmac
import io
import json
import os
import secrets
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from hub_handler import (
    PAGE_SIZE,
    QUOTAS,
    RATE_WINDOW_S,
    Fault,
    FaultKind,
    HubHandler,
    RequestRecord,
    any_request,
    file_request,
)
from hub_repo import (  # noqa: F401  (re-exported: the names tests import from hub_stub)
    HUB_GITATTRIBUTES,
    LFS_MIN_SIZE,
    MAIN_TIME,
    StubFile,
    StubRepo,
    StubRevision,
    cloudfront_b64,
    git_blob_oid,
    lfs_patterns,
    lfs_pointer,
)

OPENWEBTEXT_REPO = "Skylion007/openwebtext"
GPT2_REPO = "gpt2"


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
        self._server = ThreadingHTTPServer(
            ("127.0.0.1", 0), type("BoundHubHandler", (HubHandler,), {"hub": self})
        )
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
        matches = any_request if on == "any" else file_request
        with self._lock:
            self.faults.append(
                Fault(kind, times, status, matches, after, dict(headers or {}), start)
            )

    def release_stalls(self) -> None:
        self._released.set()

    def wait_for_release(self, timeout: float) -> None:
        """What a "stall" fault does: wait for `release_stalls()` (or `timeout` seconds)."""
        self._released.wait(timeout)

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
        quota = QUOTAS[bucket][authenticated]
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
        return cloudfront_b64(hmac.digest(self._cdn_secret, f"{path}?{expires}".encode(), "sha256"))

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
        member.size, member.mtime = len(payload), MAIN_TIME
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
