"""Download all of OpenWebText (80 parquet shards, ~24 GB today) and build the dataset layout.

    uv run train/download_openwebtext.py --output_dir ./data/openwebtext

The shards are the dataset's train split at the commit --revision points to when the run starts,
found as the hub's tools find them: the dataset card's configs (today plain_text/train-*), else
`datasets`' default layouts, or --data_files (never a hard-coded folder or count). Each shard is
downloaded (--max_workers at a time) with the same retries, sha256 check and resume as
download_subset.py. Before the first byte, the disk must have room for the download plus the
token cache pretrain.py builds in OUTPUT_DIR/token_cache/.

Then the layout is built without copying the dataset: shards are moved into train/, and a seeded
held-out set (--validation_documents: 4,000 by default, at most half the shard) is carved out of
the last shard into validation/ (that shard's other documents stay in train/, so no document is
in both). dataset_info.txt lists the source repo, resolved commit, shards, documents and bytes
per split and the date.

Interrupted at any point (Ctrl-C, network loss), the same command continues: verified shards are
never fetched again and a partly downloaded shard resumes. One process writes OUTPUT_DIR at a
time: a second one refuses at once (exit status 2), naming the first. Until the layout is complete,
validation/ does not exist, so pretrain.py cannot start on a half-built dataset.

HF_ENDPOINT selects the hub (a mirror, or a local stand-in in tests); HF_TOKEN, or a token saved by
`hf auth login`, is sent if set and is never printed or written.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from owt.cli import ArgumentParser, run_main
from owt.folder_lock import hold_folder
from owt.hub_download import (
    MANIFEST_FILE,
    PARTIAL_DIR,
    DownloadManifest,
    RemoteFile,
    RepoSnapshot,
    add_download_arguments,
    download_all,
    format_bytes,
    snapshot_from_args,
)
from owt.layout_builder import (
    LayoutError,
    carve_done,
    carve_validation,
    check_existing,
    fingerprint,
    open_shard,
    publish,
    start_build,
    token_cache_bytes,
)

HELDOUT_DIR = "heldout_source"  # inside the build folder: the shard validation is carved from
DEFAULT_VALIDATION_DOCUMENTS = 4000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--output_dir",
        default="./data/openwebtext",
        help="the dataset folder to create (default: %(default)s)",
    )
    p.add_argument(
        "--max_workers",
        type=int,
        default=4,
        help="parallel downloads (default: %(default)s)",
    )
    p.add_argument(
        "--validation_documents",
        type=int,
        default=None,
        help=f"documents carved out of the last shard into validation/ (default: "
        f"{DEFAULT_VALIDATION_DOCUMENTS:,}, or half the last shard if it holds fewer than "
        f"{2 * DEFAULT_VALIDATION_DOCUMENTS:,})",
    )
    p.add_argument("--seed", type=int, default=1234, help="hold-out seed (default: %(default)s)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a layout made from another commit or with other settings (its verified "
        "shards are reused, not downloaded again)",
    )
    add_download_arguments(p)
    args = p.parse_args(argv)
    if args.max_workers < 1:
        p.error("--max_workers must be >= 1")
    if args.validation_documents is not None and args.validation_documents < 1:
        p.error("--validation_documents must be >= 1")
    return args


def _reclaim_shards(
    output_dir: Path, build: Path, shards: tuple[RemoteFile, ...], manifest: DownloadManifest
) -> None:
    """With --overwrite: move the old layout's shards into the build, so verified ones are reused.

    Moving them out of train/ takes the old dataset out of service (find_dataset() sees no train
    files) until the new one is published.
    """
    for remote in shards:
        old = output_dir / "train" / remote.name
        new = build / "train" / remote.name
        if old.is_file() and not new.exists():
            new.parent.mkdir(parents=True, exist_ok=True)
            os.replace(old, new)
            manifest.relocate(remote, new)


def _info_fields(snapshot: RepoSnapshot, heldout: RemoteFile, args: argparse.Namespace) -> list:
    shard_lines = "\n".join(
        f"{f.path}  sha256={f.checksum}  {f.size:,} bytes" for f in snapshot.files
    )
    total = sum(f.size for f in snapshot.files)
    return [
        ("source", f"{snapshot.repo_id} ({snapshot.repo_type}) on the Hugging Face Hub"),
        ("revision", snapshot.revision),
        ("commit", snapshot.commit),
        ("files", snapshot.selection),
        ("shard_count", f"{len(snapshot.files)} ({total:,} bytes)"),
        ("shards", shard_lines),
        ("built_by", "download_openwebtext.py"),
        (
            "selection",
            f"validation = documents held out of {heldout.path} with seed {args.seed} "
            f"({_hold_out_rule(args)}); train = every other document of every shard",
        ),
    ]


def _hold_out_rule(args: argparse.Namespace) -> str:
    if args.validation_documents is not None:
        return f"--validation_documents {args.validation_documents:,}"
    return f"{DEFAULT_VALIDATION_DOCUMENTS:,}, at most half the shard"


def validation_count(requested: int | None, shard: Path) -> int:
    """How many documents to hold out of `shard`: `requested`, or by default 4,000 but at most
    half the shard, so that the default command works on a dataset with small shards too."""
    if requested is not None:
        return requested  # must fit: carve_validation says so in one line if it does not
    return max(1, min(DEFAULT_VALIDATION_DOCUMENTS, open_shard(shard).metadata.num_rows // 2))


def _dataset_key(snapshot: RepoSnapshot, args: argparse.Namespace) -> str:
    """What makes this dataset what it is: source commit, shards, the hold-out and its seed."""
    return fingerprint(
        {
            "recipe": "full",
            "repo_id": snapshot.repo_id,
            "commit": snapshot.commit,
            "shards": [(f.path, f.checksum) for f in snapshot.files],
            "heldout": snapshot.files[-1].path,
            "validation_documents": args.validation_documents,
            "seed": args.seed,
        }
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    hold_folder(output_dir, "--output_dir")  # before the hub is asked anything
    snapshot, retry = snapshot_from_args(args)
    shards, heldout = snapshot.files, snapshot.files[-1]
    total = sum(f.size for f in shards)
    print(
        f"{args.repo_id}@{args.revision} is commit {snapshot.commit}: "
        f"{len(shards)} shards, {format_bytes(total)}."
    )
    if len(shards) < 2:
        raise LayoutError(
            f"{args.repo_id}@{args.revision} has a single shard: use download_subset.py and "
            "prepare_subset.py, which hold out validation documents from it."
        )
    key = _dataset_key(snapshot, args)
    if check_existing(output_dir, key, overwrite=args.overwrite):
        print(f"{output_dir} already holds this dataset (same commit and settings); nothing to do.")
        print(f"Next: uv run train/pretrain.py --data_dir {output_dir}")
        return

    build = start_build(output_dir, key, keep=("train", HELDOUT_DIR))
    manifest = DownloadManifest(output_dir / MANIFEST_FILE)
    manifest.set_source(snapshot)
    if args.overwrite:
        _reclaim_shards(output_dir, build, shards, manifest)

    jobs = [(f, build / "train" / f.name) for f in shards[:-1]]
    if not carve_done(build):
        jobs.append((heldout, build / HELDOUT_DIR / heldout.name))
    cache = token_cache_bytes(total)
    download_all(
        snapshot,
        jobs,
        manifest=manifest,
        partial_dir=output_dir / PARTIAL_DIR,
        retry=retry,
        max_workers=args.max_workers,
        # Carving rewrites one shard next to its source, hence one more shard of room.
        reserve_bytes=cache + heldout.size + int(args.min_free_gb * 1e9),
        reserve_what=f"the token cache pretrain.py builds (~{format_bytes(cache)}) and working "
        f"space, keeping {args.min_free_gb:g} GB free",
    )
    if not carve_done(build):
        source = build / HELDOUT_DIR / heldout.name
        count = validation_count(args.validation_documents, source)
        print(f"Holding out {count:,} documents of {heldout.path} for validation/...")
        carve_validation(source, build, count=count, seed=args.seed)
    publish(output_dir, _info_fields(snapshot, heldout, args), key)
    for remote in shards[:-1]:
        manifest.relocate(remote, output_dir / "train" / remote.name)
    manifest.consumed(heldout, f"split into train/{heldout.name} and validation/")
    shutil.rmtree(output_dir / PARTIAL_DIR, ignore_errors=True)  # only stale bytes are left
    print(f"{output_dir}: complete. Details in {output_dir / 'dataset_info.txt'}.")
    print(f"Next: uv run train/pretrain.py --data_dir {output_dir}")


if __name__ == "__main__":
    run_main(main)
