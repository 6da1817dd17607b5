"""Turn the shard(s) downloaded by download_subset.py into the dataset layout for the quick start.

    uv run train/prepare_subset.py --data_dir ./data/openwebtext_subset

Reads DATA_DIR/shards/*.parquet and writes DATA_DIR/train/, DATA_DIR/validation/ and
DATA_DIR/dataset_info.txt. Works offline.

By default training gets a seeded random sample of documents worth about 5M GPT-2 tokens, sized so
that the guide's one-epoch quick start (batch 4, max_length 256, accumulation 4) takes 10-30 minutes
on an Apple-silicon Mac. Tokens are estimated, not counted: GPT-2's BPE averages about 4.5 bytes of
UTF-8 per token on English web text (OpenWebText: about 40 GB of text for about 9.0 B tokens), so
documents are taken until their UTF-8 length reaches 4.5 x --target_tokens (a shard holds about
100k documents, about 110M tokens). The validation documents are held out first, with the same
seed, so the two sets never share a document. --num_documents 0 keeps every document.

Same inputs and settings, same output: a re-run finds the layout already there and does nothing.
A layout made from other shards or settings is never replaced without --overwrite. One process
writes DATA_DIR at a time: a second one refuses (exit status 2), naming the first.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from owt.cli import ArgumentParser, run_main
from owt.disk_space import format_bytes
from owt.download_manifest import MANIFEST_FILE, DownloadManifest
from owt.folder_lock import hold_folder
from owt.layout_builder import (
    BYTES_PER_TOKEN,
    SHARDS_DIR,
    VALIDATION_FILE,
    LayoutError,
    Selection,
    check_existing,
    choose_documents,
    document_bytes,
    fingerprint,
    open_shard,
    publish,
    start_build,
    write_rows,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data_dir",
        default="./data/openwebtext_subset",
        help="folder given to download_subset.py --output_dir (default: %(default)s)",
    )
    p.add_argument(
        "--source_dir",
        default=None,
        help="where the input shards are (default: DATA_DIR/shards)",
    )
    p.add_argument(
        "--target_tokens",
        type=int,
        default=5_000_000,
        help="estimated GPT-2 tokens of the training sample (default: %(default)s)",
    )
    p.add_argument(
        "--num_documents",
        type=int,
        default=None,
        help="training documents instead of --target_tokens; 0 = all (default: by tokens)",
    )
    held_out = p.add_mutually_exclusive_group()
    held_out.add_argument(
        "--validation_documents",
        type=int,
        default=None,
        help="documents held out for validation (default: 200)",
    )
    held_out.add_argument(
        "--validation_ratio",
        type=float,
        default=None,
        help="validation documents as a fraction of the training documents, e.g. 0.02",
    )
    p.add_argument("--seed", type=int, default=1234, help="sampling seed (default: %(default)s)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing layout made from other shards or settings",
    )
    args = p.parse_args(argv)
    if args.validation_ratio is None and args.validation_documents is None:
        args.validation_documents = 200
    if args.validation_ratio is not None and not 0 < args.validation_ratio < 1:
        p.error("--validation_ratio must be between 0 and 1")
    if args.num_documents is not None and args.num_documents < 0:
        p.error("--num_documents must be >= 0 (0 = all)")
    if args.target_tokens <= 0:
        p.error("--target_tokens must be > 0")
    return args


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _provenance(data_dir: Path, shards: list[Path], hashes: dict[Path, str]) -> list[tuple]:
    """Where the shards came from, as recorded by download_subset.py (if it was used)."""
    manifest = DownloadManifest(data_dir / MANIFEST_FILE)
    lines = []
    for shard in shards:
        found = manifest.source_of(shard)
        origin = f"{found[0]} of the repo" if found else "local file"
        lines.append(f"{shard.name}  sha256={hashes[shard]}  ({origin})")
    fields = [("shards", "\n".join(lines))]
    if "repo_id" in manifest.data:
        source = f"{manifest.data['repo_id']} ({manifest.data.get('repo_type', 'dataset')})"
        fields[:0] = [
            ("source", f"{source} on the Hugging Face Hub"),
            ("revision", str(manifest.data.get("revision"))),
            ("commit", str(manifest.data.get("commit"))),
        ]
    return fields


def _describe_selection(
    args: argparse.Namespace, selection: Selection, documents: int, train_bytes: int
) -> str:
    """dataset_info.txt's `selection` line: the rule, the seed and what it chose."""
    if args.num_documents is None:
        rule = f"seeded sample worth ~{args.target_tokens:,} GPT-2 tokens"
    elif args.num_documents == 0:
        rule = "every document not held out"
    else:
        rule = f"seeded sample of {args.num_documents:,} documents"
    return (
        f"seed {args.seed}; train = {rule} "
        f"({len(selection.train):,} of {documents:,} documents, "
        f"{format_bytes(train_bytes)} of text, ~{train_bytes / BYTES_PER_TOKEN:,.0f} "
        f"tokens at {BYTES_PER_TOKEN} bytes/token); validation = "
        f"{len(selection.validation):,} held-out documents"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data_dir = Path(args.data_dir)
    source_dir = Path(args.source_dir) if args.source_dir else data_dir / SHARDS_DIR
    shards = sorted(source_dir.glob("*.parquet"))
    if not shards:
        raise LayoutError(
            f"No parquet shards in {source_dir}. Download one first: "
            f"uv run train/download_subset.py --output_dir {data_dir}"
        )
    hold_folder(data_dir, "--data_dir")  # before a crashed publish is finished or replaced
    for shard in shards:
        open_shard(shard)  # fail on a bad input before any work
    hashes = {shard: _sha256(shard) for shard in shards}
    settings = {
        "recipe": "subset",
        "shards": [(shard.name, hashes[shard]) for shard in shards],
        "seed": args.seed,
        "target_tokens": args.target_tokens,
        "num_documents": args.num_documents,
        "validation_documents": args.validation_documents,
        "validation_ratio": args.validation_ratio,
    }
    key = fingerprint(settings)
    if check_existing(data_dir, key, overwrite=args.overwrite):
        print(f"{data_dir} already holds this subset (same shards and settings); nothing to do.")
        print(f"Next: uv run train/pretrain.py --data_dir {data_dir}")
        return

    doc_bytes = document_bytes(shards)
    selection = choose_documents(
        doc_bytes,
        seed=args.seed,
        validation_documents=args.validation_documents,
        validation_ratio=args.validation_ratio,
        num_documents=args.num_documents,
        target_tokens=args.target_tokens,
    )
    build = start_build(data_dir, key)
    write_rows(shards, selection.train, build / "train" / "train-00000.parquet")
    write_rows(shards, selection.validation, build / "validation" / VALIDATION_FILE)

    train_bytes = int(doc_bytes[selection.train].sum())
    publish(
        data_dir,
        [
            *_provenance(data_dir, shards, hashes),
            ("built_by", "prepare_subset.py"),
            ("selection", _describe_selection(args, selection, len(doc_bytes), train_bytes)),
        ],
        key,
    )
    print(
        f"{data_dir}: train {len(selection.train):,} documents "
        f"(~{train_bytes / BYTES_PER_TOKEN / 1e6:.1f}M tokens), "
        f"validation {len(selection.validation):,} documents. Details in dataset_info.txt."
    )
    print(f"Next: uv run train/pretrain.py --data_dir {data_dir}")


if __name__ == "__main__":
    run_main(main)
