"""Training samples: non-overlapping windows over the token stream, in a seeded order.

Window i is tokens[i*(L+1) : (i+1)*(L+1)] with L = max_length: inputs are its first L tokens,
targets its last L. Each epoch visits every window once in an order fixed by (seed, epoch).

The order is consumed one optimizer step at a time: step s of an epoch takes the windows
order[s*G : (s+1)*G], G = batch_size * accumulation * world_size, and rank r keeps its own
contiguous slice of those. So the position inside an epoch is just the step number, and the
same windows make the same update whatever the micro-batch split or the number of processes.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


class TokenWindows:
    """Fixed-length windows over a 1-D token array (typically a read-only memmap)."""

    def __init__(self, tokens: np.ndarray, max_length: int) -> None:
        self.tokens = tokens
        self.window = max_length + 1
        self.num_windows = len(tokens) // self.window

    def __len__(self) -> int:
        return self.num_windows

    def batch(self, indices: np.ndarray | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) int64 tensors of shape (len(indices), max_length)."""
        rows = np.stack([self.tokens[i * self.window : (i + 1) * self.window] for i in indices])
        rows = torch.from_numpy(rows.astype(np.int64))
        return rows[:, :-1], rows[:, 1:]


class EpochSampler:
    """Which windows each optimizer step of each epoch uses, for one rank."""

    def __init__(
        self,
        num_windows: int,
        windows_per_step: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.num_windows = num_windows
        self.windows_per_step = windows_per_step  # per rank: batch_size * accumulation
        self.seed = seed
        self.rank = rank
        self.world_size = world_size

    @property
    def steps_per_epoch(self) -> int:
        # The tail that cannot fill a whole step is skipped; the shuffle varies it each epoch.
        return self.num_windows // (self.windows_per_step * self.world_size)

    def epoch_order(self, epoch: int) -> np.ndarray:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_windows, generator=generator).numpy()

    def step_windows(self, epoch: int, start_step: int = 0) -> Iterator[np.ndarray]:
        """This rank's window indices for each optimizer step of `epoch`, from `start_step`."""
        order = self.epoch_order(epoch)
        global_step = self.windows_per_step * self.world_size
        for step in range(start_step, self.steps_per_epoch):
            chunk = order[step * global_step : (step + 1) * global_step]
            yield chunk[self.rank * self.windows_per_step : (self.rank + 1) * self.windows_per_step]


def micro_batches(indices: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Split one step's windows into micro-batches of `batch_size`."""
    return [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
