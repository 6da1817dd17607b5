"""lm_loss.linear_cross_entropy gives F.cross_entropy's loss and gradients without the logits."""

import pytest
import torch
import torch.nn.functional as F

from model import LlamaForTraining, ModelConfig
from owt.lm_loss import linear_cross_entropy


def loss_and_grads(loss_fn, hidden, weight, targets, autocast_dtype=None):
    hidden = hidden.detach().requires_grad_()
    weight = weight.detach().requires_grad_()
    enabled = autocast_dtype is not None
    with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=enabled):
        loss = loss_fn(hidden, weight, targets)
    loss.backward()
    return loss.detach(), hidden.grad, weight.grad


def reference(hidden, weight, targets):
    logits = F.linear(hidden, weight).float()
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten())


@pytest.mark.parametrize("scale", [1.0, 30.0])  # 30: logits in the hundreds (max-subtraction)
def test_matches_cross_entropy_in_fp32(scale):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 50, 64, generator=g) * scale
    weight = torch.randn(1000, 64, generator=g) * 0.3
    targets = torch.randint(0, 1000, (3, 50), generator=g)
    targets[0, :10] = 7  # repeated targets: their gradient rows must add up
    ours = loss_and_grads(linear_cross_entropy, hidden, weight, targets)
    theirs = loss_and_grads(reference, hidden, weight, targets)
    assert torch.isfinite(ours[0])
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_matches_cross_entropy_under_bf16_autocast():
    g = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(2, 40, 64, generator=g), torch.randn(500, 64, generator=g) * 0.3
    targets = torch.randint(0, 500, (2, 40), generator=g)
    ours = loss_and_grads(linear_cross_entropy, hidden, weight, targets, torch.bfloat16)
    theirs = loss_and_grads(reference, hidden, weight, targets, torch.bfloat16)
    assert ours[1].dtype == ours[2].dtype == torch.float32  # grads in the inputs' dtype
    for a, b in zip(ours, theirs, strict=True):
        # bf16 has 8 mantissa bits: both paths round the same matmuls, in different places.
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2 * b.abs().max().item())


def test_model_loss_equals_cross_entropy_of_its_logits():
    torch.manual_seed(0)
    model = LlamaForTraining(ModelConfig(vocab_size=300, hidden_size=64, num_layers=2, num_heads=4))
    x, y = torch.randint(0, 300, (2, 2, 33))
    logits, none = model(x)
    no_logits, loss = model(x, y)
    assert none is None and no_logits is None
    torch.testing.assert_close(loss, F.cross_entropy(logits.flatten(0, 1), y.flatten()))
    loss.backward()  # the tied weight gets both the LM head's and the embedding's gradient
    weight = model.lm_head.weight
    ref = LlamaForTraining(model.config)
    ref.load_state_dict(model.state_dict())
    F.cross_entropy(ref(x)[0].flatten(0, 1), y.flatten()).backward()
    torch.testing.assert_close(weight.grad, ref.lm_head.weight.grad, rtol=1e-5, atol=1e-7)


def test_confident_predictions_keep_a_precise_gradient_under_bf16():
    """For a target predicted at p ~ 0.98 the hidden gradient is a small difference, sum_v p_v W_v
    - W_t: it must be formed before rounding to bf16, not as the difference of two bf16-rounded
    numbers near W_t. Hadamard weights (+-1) and hidden states in 1/8ths keep the bf16 logits
    exact, so any error left is the gradient path's."""
    vocab = 64
    weight = torch.ones(1, 1)
    while weight.size(0) < vocab:  # Sylvester's construction
        weight = torch.cat([torch.cat([weight, weight], 1), torch.cat([weight, -weight], 1)])
    targets = torch.arange(0, vocab, 4)
    hidden = weight[targets] / 8  # logits: 8 for the target, 0 for the other 63 words
    _, ours, _ = loss_and_grads(linear_cross_entropy, hidden, weight, targets, torch.bfloat16)
    _, exact, _ = loss_and_grads(reference, hidden.double(), weight.double(), targets)
    scale = exact.abs().max().item()  # ~1.3e-3; rounding the difference instead errs ~1.4e-4
    torch.testing.assert_close(ours.double(), exact, rtol=2e-3, atol=1e-2 * scale)
