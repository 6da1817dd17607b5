"""Scoring text with any causal LM: per-token losses, and loss / bits per byte over documents.

Every model scores the same documents, each with its own tokenizer, as one stream

    EOS doc_1 EOS doc_2 EOS ... doc_n EOS

cut into windows of `length` predicted tokens that overlap by one token, so every token after
the leading EOS is predicted exactly once (the last window may be shorter). The predicted
tokens are then exactly the documents' tokens and their EOS separators, and their UTF-8 bytes
are exactly the documents' bytes, the same for every tokenizer:

    bits per byte = sum of token losses (nats) / UTF-8 bytes / ln 2

which is why bpb, unlike loss or perplexity, compares models with different tokenizers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE = -100  # target id of positions that are not scored (padding, context)

Logits = Callable[[torch.Tensor], torch.Tensor]


def token_losses(logits_of: Logits, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (nats) of each target under the model, fp32, shape (B, T); 0 where the
    target is IGNORE. Right padding is harmless: causal attention never looks ahead."""
    logits = logits_of(inputs).float()  # the log-softmax in fp32 even under autocast
    losses = F.cross_entropy(
        logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="none"
    )
    return losses.view(targets.shape)


def pad_rows(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """The rows as one int64 tensor, right-padded with `value` to the longest."""
    width = max(len(row) for row in rows)
    return torch.tensor([list(row) + [value] * (width - len(row)) for row in rows])


@dataclass(frozen=True)
class TextScore:
    """Loss over a set of documents, and what it is per byte."""

    loss_sum: float  # nats, over every predicted token
    tokens: int
    bytes: int

    @property
    def loss(self) -> float:
        return self.loss_sum / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 50.0))

    @property
    def bpb(self) -> float:
        return self.loss_sum / self.bytes / math.log(2)


def document_stream(tokenizer: object, documents: Sequence[str]) -> list[int]:
    """EOS doc_1 EOS ... doc_n EOS in `tokenizer`'s ids (special-token strings in a document
    count as text, as in the token cache)."""
    from owt.tokenization import hf_encode_batch

    eos = tokenizer.eos_token_id
    stream = [eos]
    for ids in hf_encode_batch(tokenizer, list(documents)):
        stream += ids
        stream.append(eos)
    return stream


def stream_windows(stream: Sequence[int], length: int) -> list[tuple[int, int]]:
    """(start, end) of each window: inputs stream[start:end-1], targets stream[start+1:end]."""
    return [
        (start, min(start + length + 1, len(stream))) for start in range(0, len(stream) - 1, length)
    ]


def window_batches(
    stream: Sequence[int], length: int, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, targets) batches of `batch_size` windows; a short last window's targets are
    padded with IGNORE."""
    windows = stream_windows(stream, length)
    for i in range(0, len(windows), batch_size):
        rows = [stream[start:end] for start, end in windows[i : i + batch_size]]
        inputs = pad_rows([row[:-1] for row in rows], 0)
        targets = pad_rows([row[1:] for row in rows], IGNORE)
        yield inputs, targets


def documents_within(tokenizer: object, documents: Sequence[str], max_tokens: int) -> list[str]:
    """The first documents (in order) whose tokens, EOS separators included, reach `max_tokens`
    (all of them if they hold fewer; 0 = no limit)."""
    if not max_tokens:
        return list(documents)
    from owt.tokenization import hf_encode_batch

    kept, total = [], 0
    for start in range(0, len(documents), 256):
        chunk = documents[start : start + 256]
        for text, ids in zip(chunk, hf_encode_batch(tokenizer, list(chunk)), strict=True):
            kept.append(text)
            total += len(ids) + 1
            if total >= max_tokens:
                return kept
    return kept


def utf8_bytes(documents: Sequence[str]) -> int:
    return sum(len(text.encode("utf-8")) for text in documents)


def score_stream(
    logits_of: Logits,
    stream: Sequence[int],
    length: int,
    batch_size: int,
    device: torch.device,
    num_bytes: int,
    on_batch: Callable[[int], None] = lambda tokens: None,
) -> TextScore:
    """Sum the token losses of `stream` in windows of `length` (see the module docstring);
    `on_batch(tokens)` is called after each batch (a progress bar). Sums stay on the device
    until the end: one host sync, then exact Python sums (MPS has no fp64)."""
    sums, counts = [], 0
    with torch.no_grad():
        for inputs, targets in window_batches(stream, length, batch_size):
            scored = int((targets != IGNORE).sum())  # counted on the host: no device sync
            inputs, targets = inputs.to(device), targets.to(device)
            sums.append(token_losses(logits_of, inputs, targets).sum())
            counts += scored
            on_batch(scored)
    loss_sum = math.fsum(torch.stack(sums).tolist()) if sums else 0.0
    return TextScore(loss_sum, counts, num_bytes)
