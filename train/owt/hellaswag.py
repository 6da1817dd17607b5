"""HellaSwag (validation split, 10,042 items): fetched from the hub, scored as llm.c scores it.

The data. `Rowan/hellaswag`'s main branch holds a loading script, which `datasets` >= 4 no
longer runs. For such a repo `datasets` reads the hub's parquet export instead
(HubDatasetModuleFactoryWithParquetExport): it resolves the revision `refs/convert/parquet` to a
commit, then reads `{config}/{split}/NNNN.parquet` at that commit. We do the same through the
project's hub code: the ref is resolved once, `default/validation/*.parquet` is downloaded at
that commit with the hub's sha256 checked (resumable), and the folder's download_manifest.json
pins the commit: later runs read the verified files without asking the hub anything.

The scoring (karpathy/llm.c, build-nanogpt): each of the 4 endings is scored as the context's
tokens followed by the tokens of " " + ending; only the ending's tokens are predicted.

    acc       the ending with the highest total log-probability (lowest summed loss)
    acc_norm  the ending with the highest mean log-probability per ending token

Published GPT-2 124M figures with this definition: acc_norm 0.2955 (llm.c); EleutherAI's
lm-evaluation-harness preprocesses the text and normalises by characters instead (0.311).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from owt.atomic_files import total_size
from owt.cli import UsageError
from owt.folder_lock import sole_builder
from owt.hub_download import (
    MANIFEST_FILE,
    PARTIAL_DIR,
    DownloadManifest,
    RetryPolicy,
    download_all,
    list_snapshot,
)
from owt.lm_scores import IGNORE, Logits, pad_rows, token_losses
from owt.tokenization import hf_encode_batch

REPO_ID = "Rowan/hellaswag"
REVISION = "refs/convert/parquet"  # the hub's parquet export (main holds a loading script)
VALIDATION_FILES = "default/validation/*.parquet"  # the export's {config}/{split}/NNNN.parquet
VALIDATION_ITEMS = 10042
DEFAULT_DIR = "./data/hellaswag"


@dataclass(frozen=True)
class Item:
    """One HellaSwag question: a context and four endings, `label` the right one."""

    ctx: str
    endings: tuple[str, ...]
    label: int


@dataclass(frozen=True)
class HellaSwagScore:
    items: int
    correct: int  # by total log-probability
    correct_norm: int  # by mean log-probability per token

    @property
    def acc(self) -> float:
        return self.correct / self.items

    @property
    def acc_norm(self) -> float:
        return self.correct_norm / self.items


def fetch_validation(folder: Path | str, retry: RetryPolicy | None = None) -> list[Path]:
    """The validation parquet files in `folder`: read from an earlier run's verified download
    if there is one (no network), else downloaded from the hub (see the module docstring)."""
    folder = Path(folder)
    cached = DownloadManifest(folder / MANIFEST_FILE).verified_files()
    if cached is not None:
        return cached
    folder.mkdir(parents=True, exist_ok=True)
    # Two evaluations started together download once: the second waits, then reads the files.
    partial = folder / PARTIAL_DIR
    with sole_builder(folder, "the HellaSwag download", lambda: total_size(partial.glob("*"))):
        manifest = DownloadManifest(folder / MANIFEST_FILE)  # as the run we waited for left it
        cached = manifest.verified_files()
        if cached is not None:
            return cached
        retry = retry or RetryPolicy()
        snapshot = list_snapshot(REPO_ID, REVISION, data_files=[VALIDATION_FILES], retry=retry)
        manifest.set_source(snapshot)
        jobs = [(remote, folder / remote.path) for remote in snapshot.files]
        download_all(
            snapshot, jobs, manifest=manifest, partial_dir=folder / PARTIAL_DIR, retry=retry,
            max_workers=1,
        )  # fmt: skip
    print(
        f"HellaSwag: {REPO_ID}@{REVISION} is commit {snapshot.commit}, saved in {folder}",
        file=sys.stderr,
    )
    return sorted(local for _, local in jobs)


def read_items(files: Sequence[Path], limit: int = 0) -> list[Item]:
    """The items of the parquet files in order (the first `limit`, if > 0)."""
    import pyarrow.parquet as pq

    items: list[Item] = []
    for path in files:
        try:
            table = pq.read_table(path, columns=["ctx", "endings", "label"])
        except Exception as exc:  # ArrowInvalid, KeyError for a missing column...
            raise UsageError(
                f"{path} is not HellaSwag's parquet ({type(exc).__name__}: {exc}); delete the "
                "folder and run again to download it afresh."
            ) from exc
        for row in table.to_pylist():
            if len(row["endings"]) != 4:
                raise UsageError(f"{path}: an item with {len(row['endings'])} endings, not 4.")
            items.append(Item(row["ctx"], tuple(row["endings"]), int(row["label"])))
            if limit and len(items) == limit:
                return items
    return items


def load_items(folder: Path | str, limit: int = 0) -> list[Item]:
    """The first `limit` validation items (all if 0), fetched into `folder` if needed."""
    return read_items(fetch_validation(folder), limit)


def item_rows(tokenizer: object, item: Item, max_length: int) -> tuple[list[list[int]], int]:
    """The 4 token rows context + " " + ending, and the context's length in each row. A row
    longer than `max_length` + 1 loses context tokens from the left."""
    context, *endings = hf_encode_batch(tokenizer, [item.ctx, *(" " + e for e in item.endings)])
    longest = max(len(e) for e in endings)
    context = context[max(0, len(context) + longest - (max_length + 1)) :]
    return [context + ending for ending in endings], len(context)


def _batches(
    tokenizer: object, items: Sequence[Item], max_length: int, batch_tokens: int
) -> Iterator[tuple[list[list[int]], list[int], int]]:
    """(rows, context lengths, items) per batch, at most `batch_tokens` padded tokens (at
    least one item)."""
    rows: list[list[int]] = []
    starts: list[int] = []
    for item in items:
        new_rows, start = item_rows(tokenizer, item, max_length)
        width = max(len(r) for r in rows + new_rows)
        if rows and width * (len(rows) + len(new_rows)) > batch_tokens:
            yield rows, starts, len(rows) // 4
            rows, starts = [], []
        rows += new_rows
        starts += [start] * len(new_rows)
    if rows:
        yield rows, starts, len(rows) // 4


def score_items(
    logits_of: Logits,
    tokenizer: object,
    items: Sequence[Item],
    device: torch.device,
    max_length: int = 1024,
    batch_tokens: int = 4096,
    on_batch: Callable[[int], None] = lambda items: None,
) -> HellaSwagScore:
    """Score `items` (see the module docstring), `batch_tokens` padded tokens per forward;
    `on_batch(items)` after each batch."""
    sums, counts = [], []
    with torch.no_grad():
        for rows, starts, done in _batches(tokenizer, items, max_length, batch_tokens):
            inputs = pad_rows([row[:-1] for row in rows], 0)
            targets = pad_rows([row[1:] for row in rows], IGNORE)
            # Predicted: the ending's tokens only, i.e. targets from position start - 1 on.
            positions = torch.arange(targets.size(1))[None]
            targets[positions < torch.tensor(starts)[:, None] - 1] = IGNORE
            counts.append((targets != IGNORE).sum(1))
            losses = token_losses(logits_of, inputs.to(device), targets.to(device))
            sums.append(losses.sum(1))
            on_batch(done)
    if not sums:
        return HellaSwagScore(0, 0, 0)
    total = torch.cat(sums).cpu().double().view(-1, 4)  # one host sync (MPS has no fp64)
    mean = total / torch.cat(counts).double().view(-1, 4)
    labels = torch.tensor([item.label for item in items])
    return HellaSwagScore(
        items=len(items),
        correct=int((total.argmin(1) == labels).sum()),
        correct_norm=int((mean.argmin(1) == labels).sum()),
    )


def describe(score: HellaSwagScore | None) -> str:
    if score is None or not score.items:
        return "-"
    return f"{score.acc:.4f} / {score.acc_norm:.4f} ({score.items})"


def validation_scalars(
    model: torch.nn.Module,
    tokenizer: object,
    items: Sequence[Item],
    device: torch.device,
    max_length: int,
    batch_tokens: int,
) -> dict[str, float]:
    """pretrain.py's --eval_hellaswag: val/hellaswag_acc and val/hellaswag_acc_norm of a model
    of ours (left in the train/eval mode it was in; autocast is the caller's)."""
    was_training = model.training
    model.eval()
    try:
        score = score_items(
            lambda ids: model(ids)[0], getattr(tokenizer, "hf_tokenizer", tokenizer), items,
            device, max_length, batch_tokens,
        )  # fmt: skip
    finally:
        model.train(was_training)
    return {"val/hellaswag_acc": score.acc, "val/hellaswag_acc_norm": score.acc_norm}
