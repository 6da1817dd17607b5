"""The hub and network flags both download scripts share, and what they resolve to."""

from __future__ import annotations

import argparse

from owt.hub_listing import RepoSnapshot, list_snapshot
from owt.hub_retry import HubDownloadError, RetryPolicy

DEFAULT_REPO_ID = "Skylion007/openwebtext"


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
    """The RetryPolicy --max_retries and --backoff_seconds ask for."""
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
