"""The training budget and the learning-rate schedule fitted to it.

A run ends at the first of: its epochs, --max_steps, --max_tokens, --max_time. The schedule
is a function of how much of that budget is spent, p in [0, 1]: steps / step limit, or elapsed
training time / --max_time, whichever is further along. So warmup and the final decay land where
they should whatever the budget and however fast the machine is.

    cosine  linear warmup, then cosine from the peak to min_lr_ratio x peak at p = 1
    wsd     linear warmup, constant, then over the last cooldown_fraction of the budget a
            1 - sqrt decay to min_lr_ratio x peak (Hägele et al. 2024, "Scaling Laws and
            Compute-Optimal Training Beyond Fixed Training Durations"); the constant phase does
            not depend on the budget, so a run can be continued with a larger one

Warmup: --warmup_steps if given, else 5% of the step limit, at most 2000 steps; under a time
budget without a step limit below it, the first 5% of --max_time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from owt.config import TrainConfig

MAX_AUTO_WARMUP = 2000
AUTO_WARMUP_FRACTION = 0.05


def warmup_steps_for(total_steps: int, requested: int = -1) -> int:
    """`--warmup_steps`, or for -1: 5% of all steps, at most 2000 (nanoGPT's 2000 at 600k)."""
    return requested if requested >= 0 else min(MAX_AUTO_WARMUP, total_steps // 20)


@dataclass(frozen=True)
class Budget:
    """When training ends: `step_limit` (the epochs, --max_steps or --max_tokens, whichever
    comes first; `limited_by` names it) or `max_time` seconds of training (0 = none)."""

    step_limit: int
    limited_by: str  # "epochs", "max_steps" or "max_tokens"
    max_time: float = 0.0

    @classmethod
    def of(
        cls,
        epoch_steps: int,
        max_steps: int,
        max_tokens: int,
        tokens_per_step: int,
        max_time: float,
    ) -> Budget:
        limits = [(epoch_steps, "epochs")]
        if max_steps:
            limits.append((max_steps, "max_steps"))
        if max_tokens:
            limits.append((math.ceil(max_tokens / tokens_per_step), "max_tokens"))
        step_limit, limited_by = min(limits, key=lambda limit: limit[0])
        return cls(step_limit, limited_by, max_time)

    def progress(self, step: int, elapsed: float) -> float:
        """How much of the budget is spent, in [0, 1]."""
        spent = step / max(1, self.step_limit)
        if self.max_time:
            spent = max(spent, elapsed / self.max_time)
        return min(1.0, spent)

    def ended_by(self, step: int, elapsed: float) -> str | None:
        """Which limit has been reached (None while training goes on)."""
        if step >= self.step_limit:
            return self.limited_by
        if self.max_time and elapsed >= self.max_time:
            return "max_time"
        return None

    @property
    def time_bound(self) -> bool:
        """Whether the time budget, not the step limit, sets the pace of the schedule."""
        return self.max_time > 0


@dataclass(frozen=True)
class Schedule:
    """The learning rate of each step as a fraction of the peak (see the module docstring)."""

    kind: str  # "cosine" or "wsd"
    budget: Budget
    warmup_steps: int | None  # None: warm up over the first 5% of the time budget
    min_lr_ratio: float = 0.1
    cooldown_fraction: float = 0.2

    @classmethod
    def of(
        cls, kind: str, budget: Budget, warmup: int, min_lr_ratio: float, cooldown: float
    ) -> Schedule:
        if warmup < 0 and budget.time_bound:
            steps = None  # the time budget decides, not an unknown number of steps
        else:
            steps = warmup_steps_for(budget.step_limit, warmup)
        return cls(kind, budget, steps, min_lr_ratio, cooldown)

    def warmup_end(self) -> float:
        """Where warmup ends, as a fraction of the budget."""
        if self.warmup_steps is None:
            return AUTO_WARMUP_FRACTION
        return min(1.0, self.warmup_steps / max(1, self.budget.step_limit))

    def factor(self, step: int, elapsed: float = 0.0) -> float:
        """The learning rate of optimizer step `step` (0-based) over the peak."""
        if self.warmup_steps is not None:
            if step < self.warmup_steps:
                return (step + 1) / self.warmup_steps
        elif elapsed < AUTO_WARMUP_FRACTION * self.budget.max_time:
            return max(elapsed / (AUTO_WARMUP_FRACTION * self.budget.max_time), 1e-3)
        p, floor = self.budget.progress(step, elapsed), self.min_lr_ratio
        if self.kind == "wsd":
            start = 1.0 - self.cooldown_fraction
            if p <= start:
                return 1.0
            return floor + (1 - floor) * (1 - math.sqrt((p - start) / self.cooldown_fraction))
        begin = self.warmup_end()
        q = min(1.0, max(0.0, (p - begin) / max(1e-12, 1 - begin)))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * q))


def cosine_lr(
    step: int, peak: float, warmup_steps: int, total_steps: int, min_lr_ratio: float
) -> float:
    """Linear warmup to `peak` over `warmup_steps`, then cosine decay to `min_lr_ratio * peak`
    at `total_steps` (and flat after it): the step-budget cosine of `Schedule`."""
    budget = Budget(total_steps, "epochs")
    return peak * Schedule("cosine", budget, warmup_steps, min_lr_ratio).factor(step)


def plan(
    config: TrainConfig, steps_per_epoch: int, tokens_per_step: int
) -> tuple[Budget, Schedule]:
    """The step budget the flags set (epochs, steps, tokens, time) and the learning-rate
    schedule fitted to it."""
    budget = Budget.of(
        steps_per_epoch * config.num_epochs, config.max_steps, config.max_tokens,
        tokens_per_step, config.max_time,
    )  # fmt: skip
    schedule = Schedule.of(
        config.lr_schedule, budget, config.warmup_steps, config.min_lr_ratio,
        config.cooldown_fraction,
    )  # fmt: skip
    return budget, schedule
