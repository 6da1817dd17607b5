"""--dry_run: a few real optimizer steps, then what the whole run would take, before it starts.

Everything up to training runs as it would (flags, dataset, tokenizer and token cache, the
model on its device, resume), then DRY_RUN_STEPS optimizer steps. The report: tokens/s (the
first step, which compiles, is left out), peak memory against the device's limit (MPS: Metal's
recommended working set; CUDA: the card; CPU: the RAM), one step's tensors by count
(owt/memory.py), how long an epoch and the budget would take, and whether it fits. Nothing is
written to --output_dir.
"""

from __future__ import annotations

import time
from pathlib import Path

from owt.devices import (
    device_memory_bytes,
    peak_memory_bytes,
    reset_peak_memory,
    synchronize,
)
from owt.memory import training_step_peak_bytes
from owt.metrics import Metrics, StepLog
from owt.trainer import Trainer

DRY_RUN_STEPS = 4


def _hours(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 48 * 3600 else f"{seconds / 86400:.1f} days"


def dry_run(trainer: Trainer, steps: int = DRY_RUN_STEPS) -> list[str]:
    """Run `steps` optimizer steps of `trainer` (no checkpoint, no log) and return the report."""
    config, device = trainer.config, trainer.device
    quiet = Metrics(Path("."), enabled=False)
    log = StepLog(
        quiet, total_steps=steps, start_step=0, tokens_per_step=trainer.tokens_per_step,
        interval=config.log_interval, device=device, enabled=False,
    )  # fmt: skip
    reset_peak_memory(device)
    windows = trainer.sampler.step_windows(trainer.progress.epoch, trainer.progress.step_in_epoch)
    times, peak = [], 0
    for _, indices in zip(range(steps), windows, strict=False):
        start = time.perf_counter()
        trainer.optimizer_step(indices, log, quiet)
        synchronize(device)
        times.append(time.perf_counter() - start)
        peak = max(peak, peak_memory_bytes(device))
    log.close()
    timed = times[1:] or times
    seconds_per_step = sum(timed) / len(timed)
    tokens_per_second = trainer.tokens_per_step / seconds_per_step
    limit = device_memory_bytes(device)
    counted = training_step_peak_bytes(
        trainer.model.config, trainer.batch_size, config.max_length,
        dtype=trainer.dtype, gradient_checkpointing=config.gradient_checkpointing,
        on_mps=device.type == "mps",
    )  # fmt: skip
    fits = limit is None or (peak <= limit and counted.peak <= limit)
    budget = trainer.budget
    steps_in_budget, limited_by = budget.step_limit, budget.limited_by
    if budget.max_time and budget.max_time / seconds_per_step < steps_in_budget:
        steps_in_budget, limited_by = int(budget.max_time / seconds_per_step), "max_time"
    budget_seconds = steps_in_budget * seconds_per_step
    where = f"{limit / 1e9:.1f} GB" if limit else "an unknown limit"
    return [
        f"dry run: {len(times)} optimizer steps of {trainer.tokens_per_step:,} tokens on "
        f"{device} (micro-batch {trainer.batch_size} x {config.max_length})",
        f"  speed   {tokens_per_second:,.0f} tokens/s, {seconds_per_step:.2f} s per step "
        f"(first step {times[0]:.1f} s, left out: it compiles and warms up)",
        f"  memory  peak {peak / 1e9:.1f} GB measured, {counted.gb:.1f} GB of tensors counted "
        f"for one step, against {where}: {'fits' if fits else 'does NOT fit'}",
        f"  epoch   {trainer.sampler.steps_per_epoch:,} steps: "
        f"{_hours(trainer.sampler.steps_per_epoch * seconds_per_step)}",
        f"  budget  {steps_in_budget:,} steps, {steps_in_budget * trainer.tokens_per_step:,} "
        f"tokens (until {limited_by}): "
        f"{_hours(budget_seconds)}",
    ]
