"""The hub download code (owt/hub_*.py), in-process, against the local hub stand-in
(tests/hub_stub.py).

The endpoint is passed explicitly: in this process huggingface_hub may already have read
HF_ENDPOINT, and nothing here may reach the real hub.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import HfHubHTTPError, RevisionNotFoundError
from huggingface_hub.utils import get_session

from hub_stub import (  # noqa: F401
    GPT2_REPO,
    OPENWEBTEXT_REPO,
    HubStub,
    git_blob_oid,
    gpt2_repo,
    hub_fixture,
    lfs_pointer,
    openwebtext_history_repo,
    openwebtext_repo,
)
from owt import download_manifest
from owt.download_manifest import DownloadManifest
from owt.hub_listing import list_snapshot
from owt.hub_retry import HubDownloadError, RetryPolicy, server_wait_seconds
from owt.hub_transfer import download_file
from same_run import sha256

FAST = RetryPolicy(max_retries=3, backoff_seconds=0.0)


def test_stub_answers_the_real_client_like_the_hub(hub, documents):
    """The endpoints and headers huggingface_hub 2.x reads, as the real hub serves them."""
    repo = hub.repo(OPENWEBTEXT_REPO)
    api = HfApi(endpoint=hub.url)
    info = api.dataset_info(OPENWEBTEXT_REPO, revision="main")
    assert info.sha == repo.commit and info.id == OPENWEBTEXT_REPO and info.author == "Skylion007"
    assert (info.private, info.gated, info.disabled) == (False, False, False)
    assert info.card_data.configs == [
        {
            "config_name": "plain_text",
            "data_files": [{"split": "train", "path": "plain_text/train-*"}],
            "default": True,
        }
    ]
    assert info.card_data.license == ["cc0-1.0"]
    splits = info.card_data.dataset_info["splits"]
    assert splits[0]["num_examples"] == len(set(documents))  # duplicates dropped
    assert {s.rfilename for s in info.siblings} == set(repo.entries)

    tree = list(
        api.list_repo_tree(OPENWEBTEXT_REPO, "plain_text", recursive=True, repo_type="dataset")
    )
    assert [f.path for f in tree] == sorted(p for p in repo.entries if p.startswith("plain_text/"))
    for f in tree:
        data = repo.entries[f.path].data
        assert f.lfs.sha256 == hashlib.sha256(data).hexdigest()
        assert f.size == f.lfs.size == len(data)
        assert f.blob_id == git_blob_oid(lfs_pointer(data))  # git stores the LFS pointer
        assert f.lfs.pointer_size == len(lfs_pointer(data))
        assert re.fullmatch("[0-9a-f]{64}", f.xet_hash)
    (info,) = api.get_paths_info(OPENWEBTEXT_REPO, [tree[0].path, "missing"], repo_type="dataset")
    assert info.lfs.sha256 == tree[0].lfs.sha256

    url = hf_hub_url(OPENWEBTEXT_REPO, tree[0].path, repo_type="dataset", endpoint=hub.url)
    meta = get_hf_file_metadata(url, endpoint=hub.url)
    assert (meta.commit_hash, meta.etag, meta.size) == (
        repo.commit,
        tree[0].lfs.sha256,
        tree[0].size,
    )
    assert meta.xet_file_data is None  # no X-Xet-Hash: the client stays on the LFS route
    assert meta.location.startswith(hub.cdn_url)  # the LFS redirect, not followed by HEAD
    part = get_session().get(url, headers={"Range": "bytes=10-19"}, follow_redirects=True)
    assert part.status_code == 206 and part.content == repo.entries[tree[0].path].data[10:20]

    readme = hf_hub_url(OPENWEBTEXT_REPO, "README.md", repo_type="dataset", endpoint=hub.url)
    meta = get_hf_file_metadata(readme, endpoint=hub.url)
    assert meta.etag == git_blob_oid(repo.entries["README.md"].data) and meta.location == readme


def test_stub_redirect_and_cdn_headers_are_the_hubs(hub):
    """The LFS 302 carries the file's metadata; the CDN's answer carries none of it."""
    repo = hub.repo(OPENWEBTEXT_REPO)
    path = "plain_text/train-00001-of-00003.parquet"
    entry = repo.entries[path]
    url = hf_hub_url(OPENWEBTEXT_REPO, path, repo_type="dataset", endpoint=hub.url)
    for method in ("HEAD", "GET"):
        found = get_session().request(method, url, follow_redirects=False)
        assert found.status_code == 302
        assert found.headers["X-Linked-Etag"] == f'"{entry.sha256}"'
        assert found.headers["X-Linked-Size"] == str(len(entry.data))
        assert found.headers["X-Repo-Commit"] == repo.commit
        assert "ETag" not in found.headers  # as recorded from huggingface.co
        assert "X-Xet-Hash" not in found.headers and "Link" not in found.headers
        assert found.headers["Location"].startswith(hub.cdn_url)
    assert found.text == f"Found. Redirecting to {found.headers['Location']}"

    cdn = get_session().get(found.headers["Location"], headers={"Range": "bytes=100-"})
    assert cdn.status_code == 206 and cdn.content == entry.data[100:]
    assert cdn.headers["Content-Range"] == f"bytes 100-{len(entry.data) - 1}/{len(entry.data)}"
    for name in ("X-Repo-Commit", "X-Linked-Etag", "X-Linked-Size", "X-Xet-Hash"):
        assert name not in cdn.headers
    past = get_session().get(found.headers["Location"], headers={"Range": "bytes=999999999-"})
    assert past.status_code == 416
    unsigned = found.headers["Location"].split("?")[0]
    assert get_session().get(unsigned).status_code == 403  # a signed URL, as CloudFront's

    missing = hf_hub_url(OPENWEBTEXT_REPO, "nope.txt", repo_type="dataset", endpoint=hub.url)
    gone = get_session().head(missing)
    assert gone.status_code == 404 and gone.headers["X-Error-Code"] == "EntryNotFound"
    assert gone.headers["X-Repo-Commit"] == repo.commit


def test_stub_tree_pages_like_the_hub(documents):
    """More entries than a page: a `Link: <...cursor=...>; rel="next"` chain, each entry once."""
    repo = openwebtext_history_repo(documents)
    with HubStub([repo], page_size=4) as hub:
        api = HfApi(endpoint=hub.url)
        tree = list(api.list_repo_tree(OPENWEBTEXT_REPO, recursive=True, repo_type="dataset"))
        paths = [entry.path for entry in tree]
        assert sorted(paths) == sorted([*repo.entries, *repo.folders()])
        assert len(paths) == len(set(paths)) > 4
        pages = [r for r in hub.requests if "/tree/" in r.path]
        assert len(pages) == -(-len(paths) // 4)
        assert all("cursor=" in r.query for r in pages[1:]) and "cursor=" not in pages[0].query
        assert all("recursive=true" in r.query for r in pages)

        first = get_session().get(
            f"{hub.url}/api/datasets/{OPENWEBTEXT_REPO}/tree/main?recursive=true"
        )
        assert len(first.json()) == 4 and first.links["next"]["url"].startswith(hub.url)
        folders = list(api.list_repo_tree(OPENWEBTEXT_REPO, "subsets", repo_type="dataset"))
        assert len(folders) == 21 and all(f.path.startswith("subsets/") for f in folders)


def test_stub_serves_every_revision_by_name_or_commit(documents, tmp_path):
    """refs/pr/N and refs/convert/parquet, quoted as huggingface_hub quotes them."""
    repo = openwebtext_history_repo(documents)
    pr, convert = repo.commit_of("refs/pr/1"), repo.commit_of("refs/convert/parquet")
    assert len({repo.commit, pr, convert}) == 3 and repo.commit_of("main") == repo.commit
    with HubStub([repo]) as hub:
        api = HfApi(endpoint=hub.url)
        assert api.dataset_info(OPENWEBTEXT_REPO).card_data.get("configs") is None
        assert "openwebtext.py" in {
            s.rfilename for s in api.dataset_info(OPENWEBTEXT_REPO).siblings
        }
        for name in ("refs/pr/1", pr):
            info = api.dataset_info(OPENWEBTEXT_REPO, revision=name)
            assert info.sha == pr
        listed = api.list_repo_tree(
            OPENWEBTEXT_REPO, recursive=True, revision=pr, repo_type="dataset"
        )
        parquet = sorted(f.path for f in listed if f.path.endswith(".parquet"))
        assert parquet == ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"]
        converted = api.list_repo_tree(
            OPENWEBTEXT_REPO, "plain_text/partial-train", revision="refs/convert/parquet",
            repo_type="dataset",
        )  # fmt: skip
        assert [f.path for f in converted] == [
            "plain_text/partial-train/0000.parquet",
            "plain_text/partial-train/0001.parquet",
        ]
        local = hf_hub_download(
            OPENWEBTEXT_REPO, parquet[0], repo_type="dataset", revision="refs/pr/1",
            endpoint=hub.url, cache_dir=tmp_path,
        )  # fmt: skip
        assert sha256(Path(local)) == repo.entries_at("refs/pr/1")[parquet[0]].sha256
        assert pr in local  # cached under the commit the hub named in X-Repo-Commit
        assert any("/resolve/refs%2Fpr%2F1/" in r.raw_path for r in hub.requests)
        assert any("/revision/refs%2Fpr%2F1" in r.raw_path for r in hub.requests)

        refs = api.list_repo_refs(OPENWEBTEXT_REPO, repo_type="dataset", include_pull_requests=True)
        assert [(r.name, r.ref, r.target_commit) for r in refs.branches] == [
            ("main", "refs/heads/main", repo.commit)
        ]
        assert [(r.name, r.ref, r.target_commit) for r in refs.converts] == [
            ("parquet", "refs/convert/parquet", convert)
        ]
        assert [(r.name, r.ref, r.target_commit) for r in refs.pull_requests] == [
            ("1", "refs/pr/1", pr)
        ]
        assert api.list_repo_refs(OPENWEBTEXT_REPO, repo_type="dataset").pull_requests is None

        with pytest.raises(RevisionNotFoundError):
            api.dataset_info(OPENWEBTEXT_REPO, revision="refs/pr/2")
        with pytest.raises(RevisionNotFoundError):
            hf_hub_download(
                OPENWEBTEXT_REPO, "README.md", repo_type="dataset", revision="v9",
                endpoint=hub.url, cache_dir=tmp_path,
            )  # fmt: skip


def test_stub_data_layout_and_model_info(documents, gpt2_tokenizer_dir):
    """layout="data": shards under data/ and a card without configs; a model's info keys."""
    repo = openwebtext_repo(documents, num_shards=2, layout="data")
    assert sorted(p for p in repo.entries if p.endswith(".parquet")) == [
        "data/train-00000-of-00002.parquet",
        "data/train-00001-of-00002.parquet",
    ]
    with HubStub([repo, gpt2_repo(gpt2_tokenizer_dir)]) as hub:
        api = HfApi(endpoint=hub.url)
        card = api.dataset_info(OPENWEBTEXT_REPO).card_data
        assert card.get("configs") is None and card.license == ["cc0-1.0"]
        model = api.model_info(GPT2_REPO)
        assert model.sha == hub.repo(GPT2_REPO, "model").commit
        assert model.config["model_type"] == "gpt2" and model.library_name == "transformers"
        sizes = {
            s.rfilename: s.size for s in api.model_info(GPT2_REPO, files_metadata=True).siblings
        }
        assert sizes["tokenizer.json"] == len(
            hub.repo(GPT2_REPO, "model").entries["tokenizer.json"].data
        )


def test_stub_faults_rate_limit_and_misplaced_range(hub):
    """A 429 with Retry-After, as the hub's; a 206 that starts elsewhere than asked."""
    api = HfApi(endpoint=hub.url)
    hub.inject("status", status=429, headers={"Retry-After": "1"}, on="any")
    with pytest.raises(HfHubHTTPError) as caught:
        api.list_repo_refs(OPENWEBTEXT_REPO, repo_type="dataset")
    response = caught.value.response
    assert response.status_code == 429 and response.headers["Retry-After"] == "1"
    assert "rate limit" in response.json()["error"] and "rate limit" in response.headers[
        "X-Error-Message"
    ]  # fmt: skip

    path = "plain_text/train-00000-of-00003.parquet"
    data = hub.repo(OPENWEBTEXT_REPO).entries[path].data
    url = hf_hub_url(OPENWEBTEXT_REPO, path, repo_type="dataset", endpoint=hub.url)
    hub.inject("bad_range")
    bad = get_session().get(url, headers={"Range": "bytes=1000-"}, follow_redirects=True)
    assert bad.status_code == 206 and bad.content == data
    assert bad.headers["Content-Range"] == f"bytes 0-{len(data) - 1}/{len(data)}"
    good = get_session().get(url, headers={"Range": "bytes=1000-"}, follow_redirects=True)
    assert good.content == data[1000:]  # one fault, one answer


def test_hf_hub_download_alone_accepts_same_size_corrupt_bytes(hub, tmp_path):
    """Why hub_download verifies: the library keeps a corrupt file of the right size."""
    path = "plain_text/train-00000-of-00003.parquet"
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
        patch.setattr(download_manifest, "file_checksum", lambda *a: pytest.fail("re-hashed"))
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


def test_rate_limit_wait_follows_the_hub_and_is_capped():
    from huggingface_hub.utils import httpx

    def answer(status: int, **headers: str) -> HfHubHTTPError:
        request = httpx.Request("GET", "http://127.0.0.1/api")
        return HfHubHTTPError(
            "x", response=httpx.Response(status, headers=headers, request=request)
        )

    # The hub sends RateLimit on every answer: only r=0 says why a 429 came.
    assert server_wait_seconds(answer(429, RateLimit='"api";r=0;t=7')) == 7
    assert server_wait_seconds(answer(429, RateLimit='"api";r=3;t=7')) is None
    assert server_wait_seconds(answer(429, **{"Retry-After": "2"})) == 2
    assert server_wait_seconds(answer(500, **{"Retry-After": "2"})) is None
    policy = RetryPolicy(backoff_seconds=0.0, max_rate_limit_seconds=60)
    assert policy.wait_seconds(1, answer(429, RateLimit='"api";r=0;t=3000')) == 60
    assert policy.wait_seconds(1, answer(429)) == 0.0  # no hint: the usual backoff
