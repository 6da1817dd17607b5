"""AdamW with decoupled weight decay on matrices only, and a warmup + cosine schedule."""

from __future__ import annotations

import math

import torch

BETAS = (0.9, 0.95)


def build_optimizer(
    model: torch.nn.Module, learning_rate: float, weight_decay: float, device_type: str
) -> torch.optim.AdamW:
    """AdamW; weight decay only on >=2-D weights (not norms); one fused kernel per step.

    torch has fused AdamW kernels for CPU, CUDA and MPS, the devices pretrain.py runs on.
    Measured at 124M on a 2-core CPU (torch 2.15): 0.05 s per step fused vs 0.17 s
    foreach, the same update up to float rounding (tests/test_perf.py).
    """
    fused = device_type in ("cpu", "cuda", "mps")
    return torch.optim.AdamW(
        param_groups(model, weight_decay), lr=learning_rate, betas=BETAS, eps=1e-8, fused=fused
    )


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: decay on matrices (>= 2-D), none on norm gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def learning_rate_at(
    step: int, peak: float, warmup_steps: int, total_steps: int, min_lr_ratio: float
) -> float:
    """Linear warmup to `peak`, then cosine decay to `min_lr_ratio * peak` at `total_steps`."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return peak * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
