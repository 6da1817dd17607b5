"""Validation: mean loss and bits per byte over the validation windows.

    bpb = mean loss (nats per token) x tokens / UTF-8 bytes of those tokens / ln 2

Bits per byte does not depend on the tokenizer, so runs with different tokenizers (or none of
GPT-2's) compare. The bytes of the evaluated windows are counted exactly, from each target
token's byte length (TextEncoder.token_byte_lengths; an EOS is 0 bytes).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from owt import distributed
from owt.devices import to_device
from owt.distributed import World
from owt.token_windows import TokenWindows


@dataclass(frozen=True)
class Evaluation:
    loss: float  # mean cross-entropy, nats per token
    bpb: float | None  # bits per UTF-8 byte (None without the tokens' byte lengths)
    tokens: int
    bytes: int

    def scalars(self) -> dict[str, float]:
        values = {"val/loss": self.loss, "val/perplexity": math.exp(min(self.loss, 50.0))}
        if self.bpb is not None:
            values["val/bpb"] = self.bpb
        return values


class Evaluator:
    """Evaluates a model on the validation windows, batch by batch, split over the ranks."""

    def __init__(
        self,
        windows: TokenWindows,
        batch_size: int,
        max_batches: int,
        device: torch.device,
        *,
        world: World | None = None,
        fsdp: bool = False,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        token_bytes: torch.Tensor | None = None,
    ) -> None:
        self.windows, self.batch_size, self.device = windows, batch_size, device
        starts = range(0, len(windows), batch_size)
        self.starts = starts[:max_batches] if max_batches else starts
        self.world, self.fsdp, self.autocast = world or World(), fsdp, autocast
        self.token_bytes = None if token_bytes is None else token_bytes.to(device)

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> Evaluation:
        was_training = model.training
        model.eval()
        # Per batch: (sum of token losses, tokens, bytes) in fp32 on the device; summed exactly
        # in Python floats at the end (MPS has no fp64; one host sync per evaluation), then
        # over the ranks.
        parts = []
        mine = self.starts[self.world.rank :: self.world.size]
        # FSDP all-gathers parameters inside forward, so every rank must run as many forwards:
        # a rank with one batch fewer runs the first batch again and does not count it.
        rounds = math.ceil(len(self.starts) / self.world.size) if self.fsdp else len(mine)
        for i in range(rounds):
            start = mine[i] if i < len(mine) else self.starts[0]
            batch = range(start, min(len(self.windows), start + self.batch_size))
            x, y = to_device(self.device, *self.windows.batch(batch))
            with self.autocast():
                _, loss = model(x, y)
            if i < len(mine):
                tokens = loss.new_tensor(y.numel(), dtype=torch.float32)
                counted = tokens.new_zeros(())
                if self.token_bytes is not None:
                    counted = self.token_bytes[y].sum().float()
                parts.append(torch.stack([loss.float() * tokens, tokens, counted]))
        rows = torch.stack(parts).tolist() if parts else []
        total = [math.fsum(column) for column in zip(*rows, strict=True)] or [0.0, 0.0, 0.0]
        if self.world.size > 1:
            summed = torch.tensor(total, dtype=torch.float64, device=self.device)
            total = distributed.sum_over_ranks(summed, self.world).tolist()
        model.train(was_training)
        loss_sum, tokens, num_bytes = total
        bpb = None
        if self.token_bytes is not None and num_bytes > 0:
            bpb = loss_sum / num_bytes / math.log(2)
        return Evaluation(loss_sum / tokens, bpb, int(tokens), int(num_bytes))
