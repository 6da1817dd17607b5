"""evaluate.py's work: score each model in turn on the validation text and HellaSwag, build the
results table, and log a run's figures to its TensorBoard.

One model is in memory at a time (loaded, scored, freed), so the peak is the largest model
plus one batch of logits (batch_size x max_length x vocab fp32: 0.8 GB at 4 x 1024 x 50257).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from owt import hellaswag
from owt.dataset_layout import TEXT_COLUMN
from owt.devices import (
    autocast,
    empty_cache,
    format_dtype,
    resolve_device,
    resolve_dtype,
    setup_backend,
)
from owt.eval_models import EvalModel, context_length_of, load_model
from owt.lm_scores import TextScore, document_stream, documents_within, score_stream, utf8_bytes
from owt.metrics import Metrics, format_duration
from owt.outputs import TENSORBOARD_DIR


class Progress:
    """A progress bar (on a terminal) and, after the first batch, one line with the ETA."""

    def __init__(self, total: int, unit: str, what: str) -> None:
        self.total, self.unit, self.what = total, unit, what
        self.done, self.start = 0, time.monotonic()
        self.bar = tqdm(total=total, unit=unit, desc=what, disable=None, file=sys.stderr)

    def update(self, n: int) -> None:
        if not self.done:
            rate = n / max(time.monotonic() - self.start, 1e-9)
            eta = format_duration((self.total - n) / rate) if rate else "?"
            self.bar.write(
                f"  {self.what}: {self.total:,} {self.unit}, about {eta} left", file=sys.stderr
            )
        self.done += n
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def read_documents(files: list[Path]) -> list[str]:
    tables = [pq.read_table(path, columns=[TEXT_COLUMN]) for path in files]
    return [text for table in tables for text in table[TEXT_COLUMN].to_pylist()]


def score_text(
    model: EvalModel, documents: list[str], num_bytes: int, length: int, batch_size: int,
    device: torch.device,
) -> TextScore:  # fmt: skip
    stream = document_stream(model.tokenizer, documents)
    progress = Progress(len(stream) - 1, "tokens", "validation text")
    try:
        return score_stream(
            model.logits, stream, length, batch_size, device, num_bytes, progress.update
        )
    finally:
        progress.close()


def score_hellaswag(
    model: EvalModel, items: list[hellaswag.Item], length: int, batch_size: int,
    device: torch.device,
) -> hellaswag.HellaSwagScore:  # fmt: skip
    progress = Progress(len(items), "items", "HellaSwag")
    try:
        return hellaswag.score_items(
            model.logits, model.tokenizer, items, device, length,
            batch_tokens=batch_size * length, on_batch=progress.update,
        )  # fmt: skip
    finally:
        progress.close()


def result_row(
    model: EvalModel, text: TextScore | None, swag: hellaswag.HellaSwagScore | None, seconds: float
) -> dict[str, Any]:
    """One model's entry of eval.json (absent figures: None)."""
    return {
        "name": model.name,
        "params": model.num_parameters,
        "val_tokens": text.tokens if text else None,
        "val_bytes": text.bytes if text else None,
        "val_loss": text.loss if text else None,
        "val_perplexity": text.perplexity if text else None,
        "val_bpb": text.bpb if text else None,
        "hellaswag_items": swag.items if swag else None,
        "hellaswag_acc": swag.acc if swag else None,
        "hellaswag_acc_norm": swag.acc_norm if swag else None,
        "seconds": round(seconds, 1),
        "step": model.step,
        "run_dir": str(model.run_dir) if model.run_dir else None,
    }


def evaluate_models(args: argparse.Namespace, files: list[Path] | None) -> dict[str, Any]:
    """Score every model of `args.models` in turn; eval.json's content."""
    device = resolve_device(args.device)
    setup_backend(device)
    dtype = resolve_dtype(device, args.dtype)
    length = args.max_length or min(context_length_of(kind, name) for kind, name in args.models)
    items = hellaswag.load_items(args.hellaswag_dir, args.limit) if args.hellaswag else None
    documents = read_documents(files) if files else None
    num_bytes = 0
    print(
        f"scoring {len(args.models)} model(s) on {device} ({format_dtype(dtype)}), windows of "
        f"{length} tokens",
        file=sys.stderr,
    )
    rows = []
    for kind, name in args.models:
        start = time.monotonic()
        model = load_model(kind, name, device, args.tokenizer_name)
        print(f"{model.name}: {model.num_parameters / 1e6:.1f}M parameters", file=sys.stderr)
        text = swag = None
        with autocast(device, dtype):
            if documents is not None:
                if not num_bytes:  # the first model's tokenizer caps the documents for all
                    documents = documents_within(model.tokenizer, documents, args.max_tokens)
                    num_bytes = utf8_bytes(documents)
                text = score_text(model, documents, num_bytes, length, args.batch_size, device)
            if items is not None:
                swag = score_hellaswag(model, items, length, args.batch_size, device)
        rows.append(result_row(model, text, swag, time.monotonic() - start))
        del model  # before the next one loads: one model in memory at a time
        gc.collect()
        empty_cache(device)
    return {
        "data_dir": args.data_dir,
        "max_length": length,
        "device": str(device),
        "dtype": format_dtype(dtype),
        "hellaswag": {"repo": hellaswag.REPO_ID, "revision": hellaswag.REVISION} if items else None,
        "models": rows,
    }


def _cell(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[dict[str, Any]]) -> str:
    """The results as an aligned text table."""
    header = ["model", "params", "val tokens", "val loss", "ppl", "val bpb",
              "hellaswag acc", "acc_norm", "items", "seconds"]  # fmt: skip
    lines = [header]
    for r in rows:
        lines.append([
            r["name"], f"{r['params'] / 1e6:.1f}M", _cell(r["val_tokens"], ","),
            _cell(r["val_loss"], ".4f"), _cell(r["val_perplexity"], ".2f"),
            _cell(r["val_bpb"], ".4f"), _cell(r["hellaswag_acc"], ".4f"),
            _cell(r["hellaswag_acc_norm"], ".4f"), _cell(r["hellaswag_items"], ","),
            f"{r['seconds']:.1f}",
        ])  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    aligned = [
        [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)]
        for line in lines
    ]
    return "\n".join("  ".join(line) for line in aligned)


EVAL_SCALARS = {
    "val_loss": "eval/val_loss",
    "val_perplexity": "eval/val_perplexity",
    "val_bpb": "eval/val_bpb",
    "hellaswag_acc": "eval/hellaswag_acc",
    "hellaswag_acc_norm": "eval/hellaswag_acc_norm",
}


def log_to_runs(rows: list[dict[str, Any]], writable: set[Path]) -> None:
    """Each checkpoint's figures into its run's TensorBoard, under eval/, at its step (runs in
    `writable` only: see evaluate.claim_run_folders)."""
    for row in rows:
        if row["run_dir"] is None or row["step"] is None or Path(row["run_dir"]) not in writable:
            continue
        values = {tag: row[key] for key, tag in EVAL_SCALARS.items() if row[key] is not None}
        metrics = Metrics(Path(row["run_dir"]) / TENSORBOARD_DIR)
        metrics.scalars(row["step"], values)
        metrics.close()
