"""How much memory a training step needs, found without the memory: one whole optimizer step
(forward, backward, clipping, AdamW) runs on fake tensors, which have shapes but no storage,
while every tensor that comes to exist is counted until it is freed.

    peak = training_step_peak_bytes(model_config, batch_size=4, max_length=1024)

The count is what the tensors need: weights, gradients, AdamW's two moments, the activations
autograd keeps, the temporaries of each op. It is what MPS (or CUDA) must hold, less its
allocator's rounding and caching and the backend's own workspaces. Attention runs as MPS runs
it (`on_mps=True`, the default; see mps_attention), which keeps batch x heads x T x T
probabilities per layer for backward.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from model import LlamaForTraining, ModelConfig
from owt import cpu_attention
from owt.devices import autocast
from owt.optim import build_optimizer


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of every storage alive; `peak` is the most at any one time."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._seen: set[int] = set()

    def track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._seen:
            return
        self._seen.add(key)
        size = storage.nbytes()
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._release, key, size)

    def _release(self, key: int, size: int) -> None:
        self._seen.discard(key)
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, tuple | list) else (out,):
            if isinstance(value, torch.Tensor):
                self.track(value)
        return out


@dataclass(frozen=True)
class StepMemory:
    """Peak bytes of one optimizer step, and the part that stays between steps."""

    peak: int
    state: int  # weights, gradients after the first step, AdamW moments

    @property
    def gb(self) -> float:
        return self.peak / 1e9


@contextmanager
def mps_attention() -> Iterator[None]:
    """Attention as MPS runs it in training: torch's math kernel (it keeps the batch x heads
    x T x T probabilities for backward), never cpu_attention.py."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with cpu_attention.disabled(), sdpa_kernel(SDPBackend.MATH):
        yield


def training_step_peak_bytes(
    config: ModelConfig,
    batch_size: int,
    max_length: int,
    *,
    dtype: torch.dtype = torch.float32,
    gradient_checkpointing: bool = False,
    on_mps: bool = True,
) -> StepMemory:
    """The memory of one optimizer step of `config` at `batch_size` x `max_length` tokens
    (one micro-batch: accumulation does not add to the peak), counted on fake tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        model = LlamaForTraining(config)
        model.gradient_checkpointing = gradient_checkpointing
        optimizer = build_optimizer(model, 1e-3, 0.1, "cpu")
        tokens = torch.zeros(batch_size, max_length + 1, dtype=torch.long)
        counter = LiveBytes()
        for tensor in [*model.parameters(), *model.buffers()]:
            counter.track(tensor)
        with counter, mps_attention() if on_mps else contextlib.nullcontext():
            for _ in range(2):  # the second step has gradients and moments from the first
                counter.peak = counter.live
                with autocast("cpu", dtype):
                    _, loss = model(tokens[:, :-1], tokens[:, 1:])
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                del loss
                state = counter.live  # before zero_grad frees the gradients
                optimizer.zero_grad(set_to_none=True)
        return StepMemory(counter.peak, state)


def fit_advice(
    config: ModelConfig,
    batch_size: int,
    max_length: int,
    limit_bytes: int,
    *,
    dtype: torch.dtype = torch.float32,
    gradient_checkpointing: bool = False,
) -> str | None:
    """None if a training step fits in `limit_bytes` by the count; else one line saying how
    much it needs and which settings would fit (gradient checkpointing, a smaller batch)."""
    need = training_step_peak_bytes(
        config, batch_size, max_length, dtype=dtype, gradient_checkpointing=gradient_checkpointing
    )
    if need.peak <= limit_bytes:
        return None
    options = []
    if not gradient_checkpointing:
        recompute = training_step_peak_bytes(
            config, batch_size, max_length, dtype=dtype, gradient_checkpointing=True
        )
        if recompute.peak <= limit_bytes:
            options.append(f"--gradient_checkpointing ({recompute.gb:.1f} GB)")
    smaller = batch_size // 2
    while smaller >= 1:
        step = training_step_peak_bytes(
            config, smaller, max_length, dtype=dtype, gradient_checkpointing=gradient_checkpointing
        )
        if step.peak <= limit_bytes:
            factor = batch_size // smaller
            options.append(
                f"--batch_size {smaller} with {factor}x the --gradient_accumulation_steps "
                f"({step.gb:.1f} GB, same tokens per step)"
            )
            break
        smaller //= 2
    fix = " or ".join(options) if options else "a smaller --max_length or model"
    return (
        f"a training step at --batch_size {batch_size} --max_length {max_length} needs about "
        f"{need.gb:.1f} GB of tensors, more than the {limit_bytes / 1e9:.1f} GB this device may "
        f"use: try {fix}"
    )
