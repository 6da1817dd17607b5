"""hub_download.py, in-process, against the local hub stand-in (tests/hub_stub.py).

The endpoint is passed explicitly: in this process huggingface_hub may already have read
HF_ENDPOINT, and nothing here may reach the real hub.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.utils import get_session

import hub_download
from hub_download import (
    DownloadManifest,
    HubDownloadError,
    RetryPolicy,
    download_file,
    list_snapshot,
)
from hub_stub import OPENWEBTEXT_REPO, HubStub, hub_fixture, openwebtext_repo  # noqa: F401

FAST = RetryPolicy(max_retries=3, backoff_seconds=0.0)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_stub_answers_the_real_client_like_the_hub(hub):
    """The endpoints and headers huggingface_hub 2.x reads, as the real hub serves them."""
    repo = hub.repo(OPENWEBTEXT_REPO)
    api = HfApi(endpoint=hub.url)
    assert api.dataset_info(OPENWEBTEXT_REPO, revision="main").sha == repo.commit
    tree = list(api.list_repo_tree(OPENWEBTEXT_REPO, "data", recursive=True, repo_type="dataset"))
    assert [f.path for f in tree] == sorted(p for p in repo.entries if p.startswith("data/"))
    for f in tree:
        assert f.lfs.sha256 == hashlib.sha256(repo.entries[f.path].data).hexdigest()
        assert f.size == len(repo.entries[f.path].data)
    (info,) = api.get_paths_info(OPENWEBTEXT_REPO, [tree[0].path, "missing"], repo_type="dataset")
    assert info.lfs.sha256 == tree[0].lfs.sha256

    url = hf_hub_url(OPENWEBTEXT_REPO, tree[0].path, repo_type="dataset", endpoint=hub.url)
    meta = get_hf_file_metadata(url, endpoint=hub.url)
    assert (meta.commit_hash, meta.etag, meta.size) == (
        repo.commit,
        tree[0].lfs.sha256,
        tree[0].size,
    )
    assert meta.location.startswith(hub.cdn_url)  # the LFS redirect, not followed by HEAD
    part = get_session().get(url, headers={"Range": "bytes=10-19"}, follow_redirects=True)
    assert part.status_code == 206 and part.content == repo.entries[tree[0].path].data[10:20]


def test_hf_hub_download_alone_accepts_same_size_corrupt_bytes(hub, tmp_path):
    """Why hub_download verifies: the library keeps a corrupt file of the right size."""
    path = "data/train-00000-of-00003.parquet"
    hub.inject("corrupt")
    local = hf_hub_download(
        OPENWEBTEXT_REPO, path, repo_type="dataset", endpoint=hub.url, cache_dir=tmp_path
    )
    assert sha256(Path(local)) != hub.repo(OPENWEBTEXT_REPO).entries[path].sha256


def test_download_resumes_bytes_an_earlier_run_left(hub, tmp_path):
    snapshot = list_snapshot(OPENWEBTEXT_REPO, endpoint=hub.url, retry=FAST)
    remote = snapshot.files[0]
    data = hub.repo(OPENWEBTEXT_REPO).entries[remote.path].data
    partial_dir = tmp_path / ".partial"
    partial_dir.mkdir()
    (partial_dir / f"{remote.name}.{remote.checksum[:16]}.part").write_bytes(data[:1000])
    hub.clear_log()

    download_file(snapshot, remote, tmp_path / remote.name, retry=FAST, partial_dir=partial_dir)

    assert sha256(tmp_path / remote.name) == remote.sha256
    assert [r.range for r in hub.file_gets()] == ["bytes=1000-", "bytes=1000-"]  # hub, then CDN
    assert [r.status for r in hub.file_gets()] == [302, 206]
    assert not list(partial_dir.iterdir())


def test_download_gives_up_after_max_retries_and_keeps_no_bad_bytes(hub, tmp_path):
    snapshot = list_snapshot(OPENWEBTEXT_REPO, endpoint=hub.url, retry=FAST)
    remote = snapshot.files[0]
    hub.inject("corrupt", times=4)  # the first try and all 3 retries
    with pytest.raises(HubDownloadError, match="gave up after 3 retries"):
        download_file(
            snapshot, remote, tmp_path / remote.name, retry=FAST, partial_dir=tmp_path / "p"
        )
    assert not (tmp_path / remote.name).exists()
    assert not list((tmp_path / "p").iterdir())


def test_api_retries_transient_errors_only(hub):
    hub.inject("status", times=2, status=503, on="any")
    assert list_snapshot(OPENWEBTEXT_REPO, endpoint=hub.url, retry=FAST).files
    hub.clear_log()
    with pytest.raises(HubDownloadError, match="check --revision"):
        list_snapshot(OPENWEBTEXT_REPO, "v9", endpoint=hub.url, retry=FAST)
    with pytest.raises(HubDownloadError, match="HF_TOKEN"):
        list_snapshot("nobody/nothing", endpoint=hub.url, retry=FAST)
    assert len(hub.requests) == 2  # a 404 or 401 is not retried
    hub.inject("status", times=4, status=502, on="any")
    with pytest.raises(HubDownloadError, match="HTTP 502"):
        list_snapshot(OPENWEBTEXT_REPO, endpoint=hub.url, retry=FAST)


def test_manifest_trusts_size_and_mtime_and_rehashes_a_changed_file(hub, tmp_path, monkeypatch):
    snapshot = list_snapshot(OPENWEBTEXT_REPO, endpoint=hub.url, retry=FAST)
    remote = snapshot.files[1]
    local = tmp_path / "shards" / remote.name
    download_file(snapshot, remote, local, retry=FAST, partial_dir=tmp_path / ".partial")
    manifest = DownloadManifest(tmp_path / "download_manifest.json")
    assert manifest.is_verified(remote, local)  # no record yet: hashed once, then recorded
    assert manifest.entry(remote.path)["sha256"] == remote.sha256

    with monkeypatch.context() as patch:
        patch.setattr(hub_download, "file_checksum", lambda *a: pytest.fail("re-hashed"))
        assert DownloadManifest(manifest.path).is_verified(remote, local)

    data = bytearray(local.read_bytes())
    data[100] ^= 0xFF
    local.write_bytes(bytes(data))  # same size, new mtime, wrong bytes
    assert not DownloadManifest(manifest.path).is_verified(remote, local)


def test_private_repo_token_goes_to_the_hub_but_not_the_cdn(tmp_path, documents, monkeypatch):
    with HubStub([openwebtext_repo(documents, token="hf_secret")]) as hub:
        monkeypatch.setenv("HF_TOKEN", "hf_secret")
        snapshot = list_snapshot(OPENWEBTEXT_REPO, endpoint=hub.url, retry=FAST)
        remote = snapshot.files[0]
        download_file(snapshot, remote, tmp_path / "f", retry=FAST, partial_dir=tmp_path / "p")
        hub_get, cdn_get = hub.file_gets()
        assert hub_get.authorization == "Bearer hf_secret"
        assert cdn_get.authorization is None  # cross-origin redirect: httpx dropped it
