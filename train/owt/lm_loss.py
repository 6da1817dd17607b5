"""The LM head and its cross-entropy as one autograd function.

`F.cross_entropy(lm_head(h), targets)` keeps the (tokens x vocab) logits, their log-softmax and,
in backward, two more tensors of that size: at batch 4 x 1024 tokens and GPT-2's 50257 words
each is 0.8 GB, and every pass over them is memory-bound work. This computes the same loss
with one such fp32 buffer (plus its bf16 copies under autocast), updated in place:

    forward   z = W h^T                          (vocab x tokens) logits, one matmul
              z <- exp(z - max_v z)              in place; s = column sums
              loss = mean(max + log s - z_target)
              z[target] <- z[target] - s         so that z = s * (softmax - onehot)
    backward  with r = (dloss / N) / s per token:
              dh = r * (W^T z)^T,   dW = z (r h)   two matmuls, nothing else of that size

Subtracting s before any rounding to bf16 keeps the confidently predicted tokens' gradient
(softmax - 1, close to 0) as precise as F.cross_entropy's.

The logits are laid out (vocab x tokens), W h^T rather than h W^T: the usual layout's output
rows of 50257 floats are not a multiple of the vector width, which slows its matmul on a CPU.
With one such buffer instead of four, training steps of the 124M model at batch 4 x 1024 are
faster and 1.4 GB smaller (benchmarks/README.md, "lm_loss").

Under autocast the matmuls run in the autocast dtype and the softmax in fp32, as they would
through torch.autocast with F.linear and F.cross_entropy. Every target must be a real token id
(no ignore index: the training windows have no padding).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, compute_dtype):  # noqa: ANN001 (autograd API)
        h, w = hidden.to(compute_dtype), weight.to(compute_dtype)
        z = torch.mm(w, h.t()).float()  # (vocab, tokens); .float() is a no-op in fp32
        column = targets[None]
        target_logit = z.gather(0, column).squeeze(0)
        z_max = z.amax(0)
        z.sub_(z_max).exp_()  # in place: exp(logit - max)
        sums = z.sum(0)
        loss = (z_max + sums.log() - target_logit).mean()
        z.scatter_(0, column, z.gather(0, column) - sums)  # z = sums * (softmax - onehot)
        ctx.save_for_backward(h, w, z, sums)
        ctx.input_dtypes = hidden.dtype, weight.dtype
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):  # noqa: ANN001
        h, w, z, sums = ctx.saved_tensors
        row_scale = ((grad_loss.float() / h.size(0)) / sums)[:, None]  # (tokens, 1)
        z = z.to(h.dtype)  # no-op in fp32; the matmuls' dtype under autocast
        grad_hidden = grad_weight = None
        if ctx.needs_input_grad[0]:
            # (W^T z)^T, not z^T W: no matmul input is a transposed (vocab x tokens) view, which
            # MPS before macOS 15 would copy into a second buffer of that size.
            grad_hidden = torch.mm(w.t(), z).t()
            grad_hidden = (grad_hidden.float() * row_scale).to(ctx.input_dtypes[0])
        if ctx.needs_input_grad[1]:
            scaled_hidden = (h.float() * row_scale).to(h.dtype)
            grad_weight = torch.mm(z, scaled_hidden).to(ctx.input_dtypes[1])
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
