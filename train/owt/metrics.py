"""What a run shows: TensorBoard curves and text, the progress bar, log lines. Only the main
rank (rank 0) shows anything; the other ranks get the same objects doing nothing."""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

from owt.devices import synchronize


class Metrics:
    """Scalars and text to OUTPUT_DIR/tensorboard.

    `purge_step` drops events at or after that step left by an interrupted run, so a resumed
    run continues its curves without duplicate points.
    """

    def __init__(self, log_dir: Path, enabled: bool = True, purge_step: int | None = None) -> None:
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def text(self, step: int, tag: str, text: str) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class PhaseTimes:
    """Where a training step's time goes, for benchmarks/bench_train.py: seconds per phase of
    Trainer's micro-batch loop ("data", "fwd_bwd"), summed over the step's micro-batches.

    Each phase synchronizes the device at both ends so kernels launched asynchronously are
    charged to the phase that launched them; the step loses the overlap between phases. That is
    the benchmark's price only: in training `Trainer.phases` is None and nothing is timed.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        synchronize(self.device)
        start = time.perf_counter()
        yield
        synchronize(self.device)
        self.seconds[name] += time.perf_counter() - start

    def take(self) -> dict[str, float]:
        """The seconds counted since the last take, by phase; the counts start again at 0."""
        taken, self.seconds = dict(self.seconds), defaultdict(float)
        return taken


class StepLog:
    """The training curves: every `interval` optimizer steps, the mean loss of the steps that
    updated the weights, the learning rate, the gradient norm and tokens/s, to TensorBoard and
    the progress bar. Losses stay on the device until a point is logged (no host sync per step).
    """

    def __init__(
        self,
        metrics: Metrics,
        *,
        total_steps: int | None,
        start_step: int,
        tokens_per_step: int,
        interval: int,
        device: torch.device,
        enabled: bool,
    ) -> None:
        self.metrics, self.interval, self.tokens_per_step = metrics, interval, tokens_per_step
        self.bar = tqdm(
            total=total_steps,
            initial=start_step,
            desc="training",
            unit="step",
            disable=not enabled,
            dynamic_ncols=True,
        )
        self.postfix: dict[str, str] = {}
        self.loss_sum = torch.zeros((), device=device)
        self.updates = 0
        self.since = time.perf_counter()

    def step(
        self,
        step: int,
        loss: torch.Tensor | None,
        lr: float,
        grad_norm: torch.Tensor,
        time_left: float | None = None,
    ) -> None:
        """Optimizer step `step` is done; `loss` is None if its update was skipped;
        `time_left`: seconds of a time budget left (the bar shows it as the ETA)."""
        if loss is not None:
            self.loss_sum += loss
            self.updates += 1
        self.bar.update(1)
        if time_left is not None:
            self.postfix["left"] = format_duration(time_left)
            self.bar.set_postfix(self.postfix, refresh=False)
        if step % self.interval or not self.updates:
            return
        elapsed = time.perf_counter() - self.since
        loss_value = (self.loss_sum / self.updates).item()
        tokens_per_sec = self.tokens_per_step * self.interval / elapsed
        self.metrics.scalars(
            step,
            {
                "train/loss": loss_value,
                "train/lr": lr,
                "train/grad_norm": float(grad_norm),
                "train/tokens_per_sec": tokens_per_sec,
            },
        )
        self.postfix.update(
            loss=f"{loss_value:.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_sec:,.0f}"
        )
        self.bar.set_postfix(self.postfix)
        self.loss_sum.zero_()
        self.updates, self.since = 0, time.perf_counter()

    def close(self) -> None:
        self.bar.close()


def format_duration(seconds: float) -> str:
    """e.g. "4m05s", "1h30m"."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def log_line(message: str, enabled: bool = True) -> None:
    """A status line on stderr that does not break the progress bar."""
    if enabled:
        tqdm.write(message, file=sys.stderr)
