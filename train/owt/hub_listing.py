"""Which files to download: a repo's train shards at the one commit a revision points to.

`list_snapshot` resolves the revision once per run, lists the repo recursively (with each LFS
file's sha256) and picks the train split's parquet shards as the hub's own tools do
(hub_data_files.py). Every download URL is then pinned to that commit.
"""

from __future__ import annotations

from dataclasses import dataclass

from huggingface_hub import HfApi, hf_hub_url
from huggingface_hub.hf_api import RepoFile

from owt.download_manifest import RemoteFile
from owt.hub_data_files import (
    PARQUET_SUFFIX,
    DataFilesError,
    SplitFiles,
    describe_revision,
    resolve_train_files,
)
from owt.hub_retry import HubDownloadError, RetryPolicy, call_with_retries


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
        where = f"{where} (commit {commit[:12]})"
        raise _no_train_parquet(api, repo_id, repo_type, where, split, listed)
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


def _no_train_parquet(
    api: HfApi,
    repo_id: str,
    repo_type: str,
    where: str,
    split: SplitFiles,
    listed: dict[str, RemoteFile],
) -> HubDownloadError:
    """The error for a revision with no train parquet: what it holds and what to pass instead."""
    holds = describe_revision(sorted(listed))
    if not any(path.endswith(PARQUET_SUFFIX) for path in listed):
        holds += ", no parquet"
    return HubDownloadError(
        f"{where}: no parquet file matches the train split's patterns "
        f"({', '.join(split.patterns) or 'none'}, from {split.origin}); the revision holds "
        f"{holds}. {_alternatives(api, repo_id, repo_type)}",
        exit_code=2,
    )


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
