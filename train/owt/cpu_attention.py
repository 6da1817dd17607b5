"""Causal self-attention for training on the CPU: batched matmuls over blocks of queries.

torch's CPU flash-attention kernel works one (batch, head, block of queries) at a time (64
queries against up to 512 keys at T=256..767), and runs those small matmuls far from the CPU's
peak. This computes the same attention with batched matmuls (all batch x heads at once) over
blocks of 64 queries, each against only the keys it may see, so the work above the diagonal is
skipped as in flash attention:

    forward   for each query block i:  S = (q_i / sqrt(d)) K[:end_i]^T + causal mask
                                       P_i = softmax(S)       kept for backward
                                       O_i = P_i V[:end_i]
    backward  dP = dO_i V^T,   dS = P_i * (dP - rowsum(P_i * dP)),
              dV += P_i^T dO_i,   dQ_i = dS K / sqrt(d),   dK += dS^T q_i / sqrt(d)

Everything inside runs in fp32, whatever the input dtype (bf16 inputs under autocast come back
as bf16): torch has no bf16 x bf16 -> fp32 batched matmul on the CPU, and keeping P and dS in
fp32 is more precise than flash's bf16 path, which rounds them to bf16 for its matmuls. There is
no double backward (once_differentiable), as with torch's CPU kernel.

Memory: the kept probabilities cost batch x heads x ~T^2/2 floats per layer (124M model, batch 4:
8 MB at T=256, 28 MB at 512, 107 MB at 1024), plus fp32 q, k and v: for the whole 124M model at
batch 4 x 512, ~0.25 GB more than torch's kernel keeps in fp32 and ~0.4 GB more in bf16.

Up to T=512 it is faster than torch's kernel on the CPU for the attention itself and for whole
training steps in bf16 (benchmarks/README.md, "cpu_attention"); model.py uses it only there.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.autograd.function import once_differentiable

BLOCK = 64  # queries per block: 64 and 128 were fastest at T=256..1024, 64 skips more work
# Above this the gain shrinks (10% at 1024) while the kept probabilities grow as T^2: 1.3 GB
# more for the 124M model at batch 4 x 1024. Longer sequences use torch's kernel.
MAX_SEQ_LEN = 512


class _BlockCausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):  # noqa: ANN001 (autograd API)
        with torch.autocast(q.device.type, enabled=False):  # fp32 matmuls, also under autocast
            return _BlockCausalAttention._forward(ctx, q, k, v)

    @staticmethod
    def _forward(ctx, q, k, v):  # noqa: ANN001
        B, H, T, D = q.shape
        dtype = q.dtype
        # (batch*heads, T, D) in fp32; q scaled once here instead of every score block.
        q = (q.float() * (1.0 / math.sqrt(D))).reshape(B * H, T, D)
        k, v = k.float().reshape(B * H, T, D), v.float().reshape(B * H, T, D)
        out = torch.empty_like(q)
        mask = torch.full((BLOCK, BLOCK), float("-inf"), device=q.device).triu_(1)
        probs = []
        for start in range(0, T, BLOCK):
            end = min(T, start + BLOCK)
            scores = torch.bmm(q[:, start:end], k[:, :end].transpose(1, 2))
            scores[:, :, start:end] += mask[: end - start, : end - start]
            p = torch.softmax(scores, dim=-1)
            out[:, start:end] = torch.bmm(p, v[:, :end])
            probs.append(p)
        ctx.save_for_backward(q, k, v, *probs)
        ctx.shape = (B, H, T, D)
        return out.view(B, H, T, D).to(dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # noqa: ANN001
        with torch.autocast(grad_out.device.type, enabled=False):
            return _BlockCausalAttention._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out):  # noqa: ANN001
        q, k, v, *probs = ctx.saved_tensors
        BH, T, D = q.shape
        dtype = grad_out.dtype
        grad_out = grad_out.float().reshape(BH, T, D)
        grad_q = torch.empty_like(q)
        grad_k, grad_v = torch.zeros_like(k), torch.zeros_like(v)
        for p, start in zip(probs, range(0, T, BLOCK), strict=True):
            end = start + p.size(1)
            g = grad_out[:, start:end]
            # Into temporaries, then added: bmm into a strided slice would run per matrix.
            grad_v[:, :end] += torch.bmm(p.transpose(1, 2), g)
            grad_scores = torch.bmm(g, v[:, :end].transpose(1, 2))
            grad_scores = torch._softmax_backward_data(grad_scores, p, -1, p.dtype)
            grad_q[:, start:end] = torch.bmm(grad_scores, k[:, :end])
            grad_k[:, :end] += torch.bmm(grad_scores.transpose(1, 2), q[:, start:end])
        grad_q.mul_(1.0 / math.sqrt(D))  # q was scaled in forward; k's gradient used scaled q
        return tuple(g.view(ctx.shape).to(dtype) for g in (grad_q, grad_k, grad_v))


_enabled = True


@contextmanager
def disabled() -> Iterator[None]:
    """Use torch's kernel meanwhile (what other devices run, e.g. for MPS-path checks)."""
    global _enabled
    before, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = before


def suits(q: torch.Tensor) -> bool:
    """Whether to use causal_attention for these queries: CPU training in fp32 or bf16, T <= 512."""
    return (
        _enabled
        and q.device.type == "cpu"
        and q.dtype in (torch.float32, torch.bfloat16)  # fp64 would lose precision in fp32
        and torch.is_grad_enabled()
        and q.size(-2) <= MAX_SEQ_LEN
    )


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + causal mask) v for (batch, heads, T, head_dim) tensors.

    Equal to F.scaled_dot_product_attention(q, k, v, is_causal=True) up to float rounding, in
    value and gradients; returns q's dtype.
    """
    return _BlockCausalAttention.apply(q, k, v)
