"""Download one OpenWebText shard (~300 MB, ~100k documents) for the quick start.

    uv run train/download_subset.py --output_dir ./data/openwebtext_subset
    uv run train/prepare_subset.py --data_dir ./data/openwebtext_subset

The shard is saved in OUTPUT_DIR/shards/ once its sha256 matches the one the hub publishes, and
OUTPUT_DIR/download_manifest.json records where it came from (repo, resolved commit, file, size,
sha256). Transient failures (HTTP 5xx/429, timeouts, dropped connections) are retried with
exponential backoff; a dropped or interrupted download resumes where it stopped, also on a re-run.
A re-run with a verified file downloads nothing. --shard N adds another shard: prepare_subset.py
uses every shard in OUTPUT_DIR/shards/. One process writes OUTPUT_DIR at a time: a second one
refuses at once (exit status 2), naming the first.

HF_ENDPOINT selects the hub (a mirror, or a local stand-in in tests); HF_TOKEN, or a token saved by
`hf auth login`, is sent if set and is never printed or written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from owt.cli import ArgumentParser, run_main
from owt.folder_lock import hold_folder
from owt.hub_download import (
    MANIFEST_FILE,
    PARTIAL_DIR,
    DownloadManifest,
    HubDownloadError,
    add_download_arguments,
    download_all,
    format_bytes,
    snapshot_from_args,
)
from owt.layout_builder import SHARDS_DIR


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--output_dir",
        default="./data/openwebtext_subset",
        help="where shards/ and download_manifest.json go (default: %(default)s)",
    )
    p.add_argument(
        "--shard",
        type=int,
        default=0,
        help="which shard of the train split, counted from 0 in path order (default: %(default)s)",
    )
    add_download_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    hold_folder(output_dir, "--output_dir")  # before the hub is asked anything
    snapshot, retry = snapshot_from_args(args)
    if not 0 <= args.shard < len(snapshot.files):
        raise HubDownloadError(
            f"--shard {args.shard} does not exist: {args.repo_id}@{args.revision} has "
            f"{len(snapshot.files)} shards, numbered 0 to {len(snapshot.files) - 1}.",
            exit_code=2,
        )
    remote = snapshot.files[args.shard]
    local = output_dir / SHARDS_DIR / remote.name
    manifest = DownloadManifest(output_dir / MANIFEST_FILE)
    manifest.set_source(snapshot)
    print(
        f"{args.repo_id}@{args.revision} is commit {snapshot.commit}: {len(snapshot.files)} "
        f"shards ({snapshot.selection}); shard {args.shard} is {remote.path}."
    )
    download_all(
        snapshot,
        [(remote, local)],
        manifest=manifest,
        partial_dir=output_dir / PARTIAL_DIR,
        retry=retry,
        max_workers=1,
        reserve_bytes=int(args.min_free_gb * 1e9),
    )
    try:
        (output_dir / PARTIAL_DIR).rmdir()  # only if empty: another shard may be half-way
    except OSError:
        pass
    print(f"{local}: {format_bytes(remote.size)}, sha256 {remote.checksum} verified.")
    print(f"Next: uv run train/prepare_subset.py --data_dir {output_dir}")


if __name__ == "__main__":
    run_main(main)
