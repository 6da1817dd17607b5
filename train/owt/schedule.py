"""Learning-rate schedules: the learning rate of each optimizer step."""

from __future__ import annotations

import math

MAX_AUTO_WARMUP = 2000


def warmup_steps_for(total_steps: int, requested: int = -1) -> int:
    """`--warmup_steps`, or for -1: 5% of all steps, at most 2000 (nanoGPT's 2000 at 600k)."""
    return requested if requested >= 0 else min(MAX_AUTO_WARMUP, total_steps // 20)


def cosine_lr(
    step: int, peak: float, warmup_steps: int, total_steps: int, min_lr_ratio: float
) -> float:
    """Linear warmup to `peak` over `warmup_steps`, then cosine decay to `min_lr_ratio * peak`
    at `total_steps` (and flat after it). Step s of the warmup uses peak * (s + 1) / warmup."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return peak * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
