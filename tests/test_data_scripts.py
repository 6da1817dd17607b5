"""The data scripts as a user runs them (subprocesses), against the local hub stand-in.

The quick start (download_subset -> prepare_subset -> pretrain) and the full path
(download_openwebtext), through what a real network does: 503s, dropped connections, same-size
corrupt bytes, Ctrl-C, a private repo, a full disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hub_stub import (  # noqa: F401
    OPENWEBTEXT_REPO,
    HubStub,
    gpt2_repo,
    hub_fixture,
    openwebtext_history_repo,
    openwebtext_repo,
    script_only_repo,
)
from owt.dataset_layout import DatasetNotFoundError, find_dataset
from owt.folder_lock import LOCK_FILE, WriterLock
from owt.layout_builder import BYTES_PER_TOKEN, choose_documents, read_info
from same_run import sha256
from scripts import (
    FP32_EAGER,
    one_line_error,
    pretrain_args,
    run_script,
    script_env,
    start_script,
    wait_until,
)

TRAIN = Path(__file__).resolve().parents[1] / "train"
FAST = ["--backoff_seconds", "0.01"]
# The real repo's layout: the card's config plain_text names plain_text/train-*.
SHARD_PATHS = [f"plain_text/train-{i:05d}-of-00003.parquet" for i in range(3)]
SHARD_NAMES = [path.rsplit("/", 1)[1] for path in SHARD_PATHS]


def served(hub: HubStub, revision: str = "main") -> dict[str, bytes]:
    """Parquet shard name -> the bytes the stand-in serves at `revision`."""
    entries = hub.repo(OPENWEBTEXT_REPO).entries_at(revision)
    return {
        path.rsplit("/", 1)[1]: e.data for path, e in entries.items() if path.endswith(".parquet")
    }


def texts(files: list[Path]) -> list[str]:
    return [t for f in files for t in pq.read_table(f).column("text").to_pylist()]


def leftovers(folder: Path) -> list[Path]:
    """Partial or temporary files: none may survive a finished (or cleanly failed) run."""
    return [p for p in folder.rglob("*") if p.is_file() and p.suffix in (".part", ".tmp")]


@pytest.fixture
def env(hub: HubStub, tmp_path: Path) -> dict[str, str]:
    return hub.env(tmp_path / "hf_home")


# -- download_subset ------------------------------------------------------------------------------


def test_download_subset_survives_503s_and_a_dropped_connection(hub, env, tmp_path):
    hub.inject("status", times=3, status=503, on="any")
    hub.inject("drop")
    out = tmp_path / "subset"

    result = run_script("download_subset.py", "--output_dir", out, *FAST, env=env)

    assert result.returncode == 0, result.stderr
    shard = out / "shards" / SHARD_NAMES[0]
    assert shard.read_bytes() == served(hub)[SHARD_NAMES[0]]
    assert [r.status for r in hub.requests[:4]] == [503, 503, 503, 200]
    resumed = [r for r in hub.file_gets() if r.range]
    assert resumed and resumed[-1].status == 206  # continued where the connection dropped
    manifest = json.loads((out / "download_manifest.json").read_text())
    assert manifest["repo_id"] == OPENWEBTEXT_REPO
    assert manifest["commit"] == hub.repo(OPENWEBTEXT_REPO).commit
    record = manifest["files"][SHARD_PATHS[0]]
    assert record["sha256"] == sha256(shard) and record["size"] == shard.stat().st_size
    assert record["local"] == f"shards/{SHARD_NAMES[0]}"
    assert not leftovers(out) and not (out / ".partial").exists()
    assert result.stdout.strip().splitlines()[-1] == (
        f"Next: uv run train/prepare_subset.py --data_dir {out}"
    )

    hub.clear_log()
    again = run_script("download_subset.py", "--output_dir", out, *FAST, env=env)
    assert again.returncode == 0, again.stderr
    assert hub.file_gets() == []
    assert "already downloaded and verified" in again.stdout


def test_download_subset_refetches_corrupt_bytes_and_never_keeps_them(hub, env, tmp_path):
    hub.inject("corrupt")
    result = run_script(
        "download_subset.py", "--output_dir", tmp_path / "a", "--shard", 1, *FAST, env=env
    )
    assert result.returncode == 0, result.stderr
    shard = tmp_path / "a" / "shards" / SHARD_NAMES[1]
    assert shard.read_bytes() == served(hub)[SHARD_NAMES[1]]
    assert len([r for r in hub.file_gets() if r.path.startswith("/cdn/")]) == 2

    hub.inject("corrupt", times=10)
    failed = run_script(
        "download_subset.py", "--output_dir", tmp_path / "b", "--max_retries", 1, *FAST, env=env
    )
    assert failed.returncode == 1
    assert "gave up after 1 retries" in failed.stderr.splitlines()[-1]
    assert not list((tmp_path / "b").rglob("*.parquet")) and not leftovers(tmp_path / "b")


def test_download_subset_interrupted_by_ctrl_c_resumes_on_rerun(hub, env, tmp_path):
    out = tmp_path / "subset"
    hub.inject("stall")  # half the body, then silence: a download in progress
    proc = start_script(
        "download_subset.py",
        "--output_dir",
        out,
        *FAST,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not any(p.stat().st_size for p in out.glob(".partial/*.part")):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)

    assert proc.returncode == 130, stderr
    assert "re-run the same command" in stderr
    assert not (out / "shards").exists()
    (part,) = out.glob(".partial/*.part")
    kept = part.stat().st_size
    assert 0 < kept < len(served(hub)[SHARD_NAMES[0]])

    hub.release_stalls()
    hub.clear_log()
    result = run_script("download_subset.py", "--output_dir", out, *FAST, env=env)
    assert result.returncode == 0, result.stderr
    assert (out / "shards" / SHARD_NAMES[0]).read_bytes() == served(hub)[SHARD_NAMES[0]]
    assert [r.range for r in hub.file_gets()] == [f"bytes={kept}-"] * 2  # hub redirect, CDN


def test_private_repo_needs_hf_token_which_is_never_shown(tmp_path, documents):
    secret = "hf_stub_secret_token_123"
    out = tmp_path / "subset"
    with HubStub([openwebtext_repo(documents, token=secret)]) as hub:
        refused = run_script("download_subset.py", "--output_dir", out, env=hub.env(tmp_path / "h"))
        assert refused.returncode == 1
        assert "HF_TOKEN" in one_line_error(refused) and "401" in refused.stderr
        wrong = run_script(
            "download_subset.py", "--output_dir", out, env=hub.env(tmp_path / "h", "hf_wrong")
        )
        assert wrong.returncode == 1 and "token" in one_line_error(wrong)
        assert not list(out.rglob("*.parquet"))
        assert {r.status for r in hub.requests} == {401}

        ok = run_script(
            "download_subset.py", "--output_dir", out, env=hub.env(tmp_path / "h", secret)
        )
        assert ok.returncode == 0, ok.stderr
    assert (out / "shards" / SHARD_NAMES[0]).is_file()
    assert secret not in ok.stdout + ok.stderr + refused.stderr + wrong.stderr
    for path in out.rglob("*"):
        assert not path.is_file() or secret.encode() not in path.read_bytes(), path


# -- where the shards are: the hub's layouts and refs -------------------------------------------


def test_data_folder_layout_without_configs_is_found_by_the_conventions(tmp_path, documents):
    out = tmp_path / "subset"
    with HubStub([openwebtext_repo(documents, layout="data")]) as hub:
        result = run_script(
            "download_subset.py", "--output_dir", out, "--shard", 2, *FAST,
            env=hub.env(tmp_path / "h"),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        shard = out / "shards" / SHARD_NAMES[2]
        assert shard.read_bytes() == served(hub)[SHARD_NAMES[2]]
    assert "3 shards (train split of the default data-files conventions: data/train-" in (
        result.stdout
    )


def test_a_revision_without_parquet_says_what_it_holds_and_what_to_pass(tmp_path, documents):
    out = tmp_path / "subset"
    with HubStub([openwebtext_history_repo(documents)]) as hub:
        result = run_script(
            "download_subset.py", "--output_dir", out, *FAST, env=hub.env(tmp_path / "h")
        )
        assert hub.file_gets() == []
    assert result.returncode == 2
    message = one_line_error(result)
    assert "holds a loading script (openwebtext.py) and 21 .tar files, no parquet." in message
    assert "Traceback" not in result.stderr
    assert "--revision refs/convert/parquet" in message and "--data_files" in message
    assert "This repo has: refs/convert/parquet, refs/pr/1." in message
    assert "no such file" not in message
    assert not out.exists() or not list(out.rglob("*.parquet"))


def test_revision_refs_pr_and_refs_convert_parquet(tmp_path, documents):
    repo = openwebtext_history_repo(documents)
    with HubStub([repo]) as hub:
        env = hub.env(tmp_path / "h")
        pr = run_script(
            "download_subset.py", "--output_dir", tmp_path / "pr", "--revision", "refs/pr/1",
            "--shard", 1, *FAST, env=env,
        )  # fmt: skip
        assert pr.returncode == 0, pr.stderr
        quoted = [r.raw_path for r in hub.requests if r.raw_path.startswith("/api/")]
        convert = run_script(
            "download_subset.py", "--output_dir", tmp_path / "convert",
            "--revision", "refs/convert/parquet", *FAST, env=env,
        )  # fmt: skip
        assert convert.returncode == 0, convert.stderr
        pr_bytes = served(hub, "refs/pr/1")["train-00001-of-00002.parquet"]
        convert_bytes = served(hub, "refs/convert/parquet")["0000.parquet"]
    assert (tmp_path / "pr" / "shards" / "train-00001-of-00002.parquet").read_bytes() == pr_bytes
    manifest = json.loads((tmp_path / "pr" / "download_manifest.json").read_text())
    assert manifest["revision"] == "refs/pr/1"
    assert manifest["commit"] == repo.commit_of("refs/pr/1") != repo.commit
    assert "/api/datasets/Skylion007/openwebtext/revision/refs%2Fpr%2F1" in quoted
    assert (tmp_path / "convert" / "shards" / "0000.parquet").read_bytes() == convert_bytes
    assert "partial-train" in convert.stdout


def test_data_files_overrides_the_card(hub, env, tmp_path):
    out = tmp_path / "subset"
    pattern = "plain_text/train-0000[12]-*"
    result = run_script(
        "download_subset.py", "--output_dir", out, "--data_files", pattern, *FAST, env=env
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (out / "shards").iterdir()) == [SHARD_NAMES[1]]  # shard 0
    assert f"2 shards (train split of --data_files: {pattern})" in result.stdout

    nothing = run_script(
        "download_subset.py", "--output_dir", out, "--data_files", "nope/*", *FAST, env=env
    )
    assert nothing.returncode == 2 and "nope/*, from --data_files" in one_line_error(nothing)
    unknown = run_script("download_subset.py", "--output_dir", out, "--config_name", "x", env=env)
    assert unknown.returncode == 2
    assert "no config 'x' (it has: plain_text)" in one_line_error(unknown)


@pytest.mark.parametrize("start", [0, 1000], ids=["from-0", "elsewhere"])
def test_a_206_that_starts_elsewhere_is_never_appended(hub, env, tmp_path, start):
    hub.inject("drop")  # leaves a partial file, so the next request asks for a range
    hub.inject("bad_range", start=start)
    out = tmp_path / "subset"
    result = run_script("download_subset.py", "--output_dir", out, *FAST, env=env)
    assert result.returncode == 0, result.stderr
    assert (out / "shards" / SHARD_NAMES[0]).read_bytes() == served(hub)[SHARD_NAMES[0]]
    if start:  # useless bytes: thrown away, the file starts over without a Range
        assert "starting over" in result.stderr
        assert hub.file_gets()[-1].range is None
    else:  # the file from byte 0: taken as a 200, no second attempt needed
        assert "checksum" not in result.stderr


def test_a_429_waits_what_the_hub_asks_then_succeeds(hub, env, tmp_path):
    hub.inject("status", status=429, headers={"Retry-After": "1"}, on="any")
    out = tmp_path / "subset"
    result = run_script("download_subset.py", "--output_dir", out, *FAST, env=env)
    assert result.returncode == 0, result.stderr
    first, second = hub.requests[:2]
    assert first.status == 429 and second.status == 200
    assert second.at - first.at >= 1.0  # the hub's 1 s, not --backoff_seconds 0.01
    assert "rate limited: waiting 1 s" in result.stderr and "HF_TOKEN" in result.stderr
    assert (out / "shards" / SHARD_NAMES[0]).is_file()


# -- prepare_subset -------------------------------------------------------------------------------


def write_shards(data_dir: Path, documents: list[str], count: int = 2) -> list[str]:
    """Shards as download_subset.py leaves them, without the hub (prepare_subset is offline)."""
    unique = list(dict.fromkeys(documents))
    for i in range(count):
        table = pa.table({"text": unique[i::count]})
        (data_dir / "shards").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, data_dir / "shards" / f"train-{i:05d}.parquet", row_group_size=32)
    return unique


def prepare_subset(data: Path, *args: object) -> subprocess.CompletedProcess:
    """prepare_subset.py --data_dir `data` `args`, offline."""
    return run_script("prepare_subset.py", "--data_dir", data, *args, env=script_env())


def prepare_fresh(
    tmp_path: Path, documents: list[str], *args: object
) -> tuple[Path, list[str], subprocess.CompletedProcess]:
    """Shards of `documents` in tmp_path/data, prepared by prepare_subset.py `args` (checked to
    succeed): (the data folder, the documents in the shards, the run)."""
    data = tmp_path / "data"
    all_docs = write_shards(data, documents)
    result = prepare_subset(data, *args)
    assert result.returncode == 0, result.stderr
    return data, all_docs, result


def splits(data_dir: Path) -> tuple[list[str], list[str]]:
    files = find_dataset(data_dir)
    return texts(files["train"]), texts(files["validation"])


def test_prepare_subset_is_seeded_disjoint_idempotent_and_guarded(tmp_path, documents):
    settings = ["--target_tokens", 20_000, "--validation_documents", 15]
    data, all_docs, first = prepare_fresh(tmp_path, documents, *settings)
    train, validation = splits(data)
    assert len(validation) == 15 and not set(train) & set(validation)
    estimate = sum(len(t.encode()) for t in train) / BYTES_PER_TOKEN
    longest = max(len(t.encode()) for t in all_docs) / BYTES_PER_TOKEN
    assert 20_000 <= estimate <= 20_000 + longest  # the last document may overshoot
    info = read_info(data / "dataset_info.txt")
    assert info["train"].startswith(f"{len(train)} documents") and info["fingerprint"]
    assert (
        first.stdout.strip().splitlines()[-1] == f"Next: uv run train/pretrain.py --data_dir {data}"
    )

    stamps = {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()}
    again = prepare_subset(data, *settings)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()} == stamps

    elsewhere = tmp_path / "copy"
    write_shards(elsewhere, documents)
    assert prepare_subset(elsewhere, *settings).returncode == 0
    assert splits(elsewhere) == (train, validation)  # same shards and seed, same dataset

    other = [*settings, "--seed", 7]
    refused = prepare_subset(data, *other)
    assert refused.returncode == 2 and "--overwrite" in one_line_error(refused)
    assert splits(data) == (train, validation)
    replaced = prepare_subset(data, *other, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    new_train, new_validation = splits(data)
    assert new_train != train and not set(new_train) & set(new_validation)
    assert not (data / ".building").exists() and not leftovers(data)


def test_prepare_subset_all_documents_with_a_validation_ratio(tmp_path, documents):
    data, all_docs, _ = prepare_fresh(
        tmp_path, documents, "--num_documents", 0, "--validation_ratio", 0.1
    )
    train, validation = splits(data)
    assert Counter(train + validation) == Counter(all_docs)
    assert len(validation) == round(len(all_docs) * 0.1 / 1.1)


def test_sample_size_follows_the_token_budget():
    """With OpenWebText-like documents (~5 KB), the 5M-token default keeps ~4,500 documents."""
    doc_bytes = np.full(100_000, 5_000)
    selection = choose_documents(doc_bytes, seed=0, validation_documents=200)
    assert len(selection.train) == round(5_000_000 * BYTES_PER_TOKEN / 5_000)
    assert len(selection.validation) == 200
    assert not set(selection.train) & set(selection.validation)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "download_subset.py --output_dir"),
        (pa.table({"body": ["a document"]}), "no 'text' column"),
        (b"PAR1 but not parquet", "Cannot read"),
    ],
)
def test_prepare_subset_input_errors_are_one_clear_line(tmp_path, content, message):
    shard = tmp_path / "data" / "shards" / "train-00000.parquet"
    shard.parent.mkdir(parents=True)
    if isinstance(content, pa.Table):
        pq.write_table(content, shard)
    elif content is not None:
        shard.write_bytes(content)
    result = prepare_subset(tmp_path / "data")
    assert result.returncode == 2
    assert message in one_line_error(result)
    assert not (tmp_path / "data" / "train").exists()


# -- download_openwebtext -------------------------------------------------------------------------


def assert_every_shard_once(hub: HubStub, out: Path) -> list[str]:
    """`out` is the finished layout of every shard the stand-in serves: the shards moved into
    train/ as downloaded (byte for byte what was served, so sha256-verified), and every document
    of every shard in train/ or validation/ exactly once. Returns the validation documents."""
    files = find_dataset(out)
    assert [f.name for f in files["train"]] == SHARD_NAMES
    for name in SHARD_NAMES[:-1]:  # moved into train/ as downloaded, not rewritten
        assert (out / "train" / name).read_bytes() == served(hub)[name]
    train, validation = texts(files["train"]), texts(files["validation"])
    assert not set(train) & set(validation)
    every_document = [
        text
        for data in served(hub).values()
        for text in pq.read_table(pa.BufferReader(data)).column("text").to_pylist()
    ]
    assert Counter(train + validation) == Counter(every_document)  # nothing lost or doubled
    return validation


def test_download_openwebtext_then_pretrain_through_faults(hub, env, tmp_path, gpt2_tokenizer_dir):
    """The full path with the default settings: the last shard holds far fewer than 4,000
    documents, so half of it is held out; then pretrain.py trains on the layout as it is."""
    out = tmp_path / "owt"
    hub.inject("status", times=2, status=503)
    hub.inject("drop")
    hub.inject("corrupt")
    args = ["--output_dir", out, "--max_workers", 2, *FAST]

    result = run_script("download_openwebtext.py", *args, env=env)

    assert result.returncode == 0, result.stderr
    validation = assert_every_shard_once(hub, out)
    last_shard = pq.read_table(pa.BufferReader(served(hub)[SHARD_NAMES[-1]]))
    held_out = last_shard.num_rows // 2
    assert f"Holding out {held_out:,} documents of {SHARD_PATHS[-1]}" in result.stdout
    assert len(validation) == held_out

    info = read_info(out / "dataset_info.txt")
    assert info["source"].startswith(OPENWEBTEXT_REPO)
    assert info["commit"] == hub.repo(OPENWEBTEXT_REPO).commit
    assert info["shard_count"].startswith("3 ")
    assert info["validation"].startswith(f"{held_out} documents") and info["created"]
    assert all(f"{p}  sha256=" in (out / "dataset_info.txt").read_text() for p in SHARD_PATHS)
    assert info["files"] == (
        "train split of config 'plain_text' of the dataset card: plain_text/train-*"
    )
    manifest = json.loads((out / "download_manifest.json").read_text())
    assert manifest["files"][SHARD_PATHS[0]]["local"] == f"train/{SHARD_NAMES[0]}"
    assert not leftovers(out)
    assert not (out / ".building").exists() and not (out / ".partial").exists()

    hub.clear_log()
    again = run_script("download_openwebtext.py", *args, env=env)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert hub.file_gets() == []

    args = pretrain_args(
        out, tmp_path / "checkpoints", gpt2_tokenizer_dir, FP32_EAGER, batch_size=8,
        eval_max_batches=2, max_steps=5,
    )  # fmt: skip
    trained = run_script("pretrain.py", *args)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "Done (max_steps, step 5," in trained.stderr  # trained on the layout as it is
    assert (tmp_path / "checkpoints" / "checkpoint_last.pt").is_file()


def test_download_openwebtext_refuses_a_hold_out_the_shard_cannot_give(hub, env, tmp_path):
    args = ["--output_dir", tmp_path / "owt", *FAST]
    refused = run_script("download_openwebtext.py", *args, "--validation_documents", 4000, env=env)
    assert refused.returncode == 2
    assert "Cannot hold out 4000 validation documents" in one_line_error(refused)
    with pytest.raises(DatasetNotFoundError):
        find_dataset(tmp_path / "owt")
    hub.clear_log()
    default = run_script("download_openwebtext.py", *args, env=env)  # nothing is downloaded again
    assert default.returncode == 0, default.stderr
    assert hub.file_gets() == []


def test_download_openwebtext_overwrite_reuses_verified_shards(hub, env, tmp_path):
    args = ["--output_dir", tmp_path / "owt", *FAST]
    assert (
        run_script(
            "download_openwebtext.py", *args, "--validation_documents", 20, env=env
        ).returncode
        == 0
    )
    refused = run_script("download_openwebtext.py", *args, "--validation_documents", 10, env=env)
    assert refused.returncode == 2 and "--overwrite" in one_line_error(refused)

    hub.clear_log()
    replaced = run_script(
        "download_openwebtext.py", *args, "--validation_documents", 10, "--overwrite", env=env
    )
    assert replaced.returncode == 0, replaced.stderr
    fetched = {r.path.rsplit("/", 1)[1] for r in hub.file_gets() if "/resolve/" in r.path}
    assert fetched == {SHARD_NAMES[-1]}  # only the shard the old validation set was carved from
    assert len(texts(find_dataset(tmp_path / "owt")["validation"])) == 10


def test_download_openwebtext_continues_after_losing_the_network(hub, env, tmp_path):
    args = ["--output_dir", tmp_path / "owt", "--validation_documents", 20, "--max_workers", 1]
    hub.inject("status", times=1, status=503, after=2)  # the first shard gets through
    lost = run_script("download_openwebtext.py", *args, "--max_retries", 0, env=env)
    assert lost.returncode == 1 and "re-run" in lost.stderr.splitlines()[-1].lower()
    with pytest.raises(DatasetNotFoundError):
        find_dataset(tmp_path / "owt")  # nothing half-built is visible to training

    hub.clear_log()
    resumed = run_script("download_openwebtext.py", *args, *FAST, env=env)
    assert resumed.returncode == 0, resumed.stderr
    fetched = {r.path.rsplit("/", 1)[1] for r in hub.file_gets() if "/resolve/" in r.path}
    assert fetched == set(SHARD_NAMES[1:])  # the verified first shard is not fetched again
    assert [f.name for f in find_dataset(tmp_path / "owt")["train"]] == SHARD_NAMES


def test_a_second_download_into_one_folder_refuses_and_the_first_completes(hub, env, tmp_path):
    """The first download_openwebtext.py is held mid-shard (the stand-in stalls the body); the
    same command in a second terminal refuses at once, before asking the hub anything, and the
    first, let go, completes with every shard verified."""
    out = tmp_path / "owt"
    args = ["--output_dir", out, "--max_workers", 1, "--validation_documents", 20, *FAST]
    hub.inject("stall")
    log = tmp_path / "first.txt"
    first = start_script(
        "download_openwebtext.py",
        *args,
        env={**env, "HF_HUB_DOWNLOAD_TIMEOUT": "120"},  # the stall lasts until released
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    wait_until(lambda: any(p.stat().st_size for p in out.glob(".partial/*.part")), first)
    asked = len(hub.requests)

    second = run_script("download_openwebtext.py", *args, env=env, timeout=120)

    assert second.returncode == 2, second.stderr
    line = one_line_error(second)
    assert line.startswith("download_openwebtext.py: error: ")
    assert f"--output_dir {out} is in use by another process (pid {first.pid} on " in line
    assert "download_openwebtext.py --output_dir" in line
    assert line.endswith("wait for it to finish, stop it, or choose another --output_dir")
    assert second.stdout == "" and len(hub.requests) == asked  # the hub was not asked
    hub.release_stalls()
    assert first.wait(timeout=120) == 0, log.read_text()
    assert_every_shard_once(hub, out)
    assert not leftovers(out) and not (out / ".partial").exists()


@pytest.mark.parametrize(
    "script, flag",
    [
        ("download_subset.py", "--output_dir"),
        ("download_openwebtext.py", "--output_dir"),
        ("prepare_subset.py", "--data_dir"),
    ],
)
def test_a_data_script_refuses_a_folder_another_process_writes(
    script, flag, hub, env, tmp_path, documents
):
    data = tmp_path / "data"
    write_shards(data, documents)  # prepare_subset's input, as download_subset leaves it
    holder = WriterLock(data / LOCK_FILE)  # this test process is the other writer
    assert holder.acquire(timeout=0)
    try:
        before = {p: p.stat().st_mtime_ns for p in data.rglob("*")}
        refused = run_script(script, flag, data, env=env)
        after = {p: p.stat().st_mtime_ns for p in data.rglob("*")}
    finally:
        holder.release()
    assert refused.returncode == 2, refused.stderr
    line = one_line_error(refused)
    assert f"{flag} {data} is in use by another process (pid {os.getpid()} on " in line
    assert line.endswith(f"wait for it to finish, stop it, or choose another {flag}")
    assert after == before and hub.requests == []


def test_download_openwebtext_checks_disk_space_before_downloading(hub, env, tmp_path):
    out = tmp_path / "owt"
    result = run_script(
        "download_openwebtext.py", "--output_dir", out, "--min_free_gb", 1e9, env=env
    )
    assert result.returncode == 2
    assert "Not enough disk space" in one_line_error(result)
    assert "token cache" in result.stderr
    assert hub.file_gets() == [] and not (out / "train").exists()


# -- the quick start, end to end ------------------------------------------------------------------


def test_quick_start_download_prepare_pretrain(hub, env, tmp_path):
    """The guide's first path on the real layout, through faults, with pretrain.py's defaults
    (the tokenizer comes from the hub too); re-runs download and rewrite nothing."""
    data, checkpoints = tmp_path / "data", tmp_path / "checkpoints"
    hub.inject("status", times=2, status=503, on="any")
    hub.inject("drop")
    hub.inject("corrupt")
    downloaded = run_script("download_subset.py", "--output_dir", data, *FAST, env=env)
    assert downloaded.returncode == 0, downloaded.stderr
    assert (data / "shards" / SHARD_NAMES[0]).read_bytes() == served(hub)[SHARD_NAMES[0]]
    assert [r.status for r in hub.file_gets() if "/resolve/" in r.path][-1] == 302  # CDN
    prepare = ["--data_dir", data, "--target_tokens", 2_000, "--validation_documents", 5]
    prepared = run_script("prepare_subset.py", *prepare, env=env)
    assert prepared.returncode == 0, prepared.stderr
    hub.clear_log()
    assert run_script("download_subset.py", "--output_dir", data, env=env).returncode == 0
    assert "nothing to do" in run_script("prepare_subset.py", *prepare, env=env).stdout
    assert hub.file_gets() == []

    trained = run_script(
        "pretrain.py",
        "--data_dir", data, "--tokenizer_name", "gpt2", "--output_dir", checkpoints,
        "--hidden_size", 64, "--num_layers", 2, "--num_heads", 2,
        "--max_length", 64, "--max_position_embeddings", 64,
        "--batch_size", 4, "--gradient_accumulation_steps", 1, "--num_epochs", 1,
        "--eval_max_batches", 5, "--device", "cpu",
        env=env,
    )  # fmt: skip

    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (checkpoints / "checkpoint_epoch_1.pt").is_file()
    assert any(r.path.startswith("/gpt2/resolve/") for r in hub.requests)  # tokenizer via the hub
