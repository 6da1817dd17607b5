"""The LM head and its cross-entropy as one autograd function.

`F.cross_entropy(lm_head(h), targets)` keeps the (tokens x vocab) logits, their log-softmax and,
in backward, two more tensors of that size: at batch 4 x 1024 tokens and GPT-2's 50257 words
each is 0.8 GB, and every pass over them is memory-bound work. This computes the same loss
with one such buffer, updated in place, and two passes fewer:

    forward   z = W h^T                         (vocab x tokens) logits, one matmul
              z <- exp(z - max_v z)             in place; keep the column sums s
              loss = mean(max + log s - z_target)
    backward  with c = dloss / N and p = z / s (the softmax), never formed:
              dh = c (z^T W) / s - c W[target]
              dW = z (c h / s)  - c onehot^T h  (an index_add of h rows)

The logits are laid out (vocab x tokens), W h^T rather than h W^T: measured on a 2-core Zen 4
with torch 2.15, that matmul runs at ~190 GFLOP/s where the usual layout's output rows of 50257
floats (not a multiple of the vector width) hold it to ~160. Whole training steps of the 124M
model were ~3% faster and the peak memory of the loss ~3x smaller (benchmarks/bench_train.py).

Under autocast the matmuls run in the autocast dtype and the softmax in fp32, as they would
through torch.autocast with F.linear and F.cross_entropy. Every target must be a real token id
(no ignore index: the training windows have no padding).
"""

from __future__ import annotations

import torch


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, compute_dtype):  # noqa: ANN001 (autograd API)
        h, w = hidden.to(compute_dtype), weight.to(compute_dtype)
        z = torch.mm(w, h.t()).float()  # (vocab, tokens); .float() is a no-op in fp32
        target_logit = z.gather(0, targets[None]).squeeze(0)
        z_max = z.amax(0)
        z.sub_(z_max).exp_()  # in place: the only (vocab x tokens) buffer
        sums = z.sum(0)
        loss = (z_max + sums.log() - target_logit).mean()
        ctx.save_for_backward(h, w, targets, z, sums)
        ctx.input_dtypes = hidden.dtype, weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):  # noqa: ANN001
        h, w, targets, z, sums = ctx.saved_tensors
        scale = grad_loss.float() / h.size(0)
        row_scale = (scale / sums)[:, None]  # (tokens, 1): c / s
        z = z.to(h.dtype)  # no-op in fp32; the matmuls' dtype under autocast
        grad_hidden = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_hidden = torch.mm(z.t(), w).float() * row_scale - w[targets].float() * scale
            grad_hidden = grad_hidden.to(ctx.input_dtypes[0])
        if ctx.needs_input_grad[1]:
            grad_weight = torch.mm(z, (h.float() * row_scale).to(h.dtype)).float()
            grad_weight.index_add_(0, targets, h.float() * -scale)
            grad_weight = grad_weight.to(ctx.input_dtypes[1])
        return grad_hidden, grad_weight, None, None


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """mean cross-entropy of softmax(hidden @ weight.T) against targets, logits never kept.

    hidden: (..., d) final hidden states; weight: (vocab, d) LM head; targets: (...) token ids.
    Equal to F.cross_entropy(F.linear(hidden, weight).flatten(0, -2), targets.flatten()) up to
    float rounding, in value and in gradients for hidden and weight.
    """
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        compute_dtype = torch.get_autocast_dtype(device_type)
    else:
        compute_dtype = hidden.dtype
    return _LinearCrossEntropy.apply(
        hidden.reshape(-1, hidden.size(-1)), weight, targets.reshape(-1), compute_dtype
    )
