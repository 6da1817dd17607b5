import pytest
import torch
import torch.nn.functional as F

from cpu_attention import causal_attention


def attention_and_grads(fn, q, k, v, grad_out):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    return (out, *torch.autograd.grad(out, (q, k, v), grad_out))


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


@pytest.mark.parametrize("T", [1, 40, 64, 100, 256])
def test_matches_sdpa_in_fp32(T):
    torch.manual_seed(T)
    q, k, v, grad_out = (torch.randn(2, 3, T, 16) for _ in range(4))
    ours = attention_and_grads(causal_attention, q, k, v, grad_out)
    reference = attention_and_grads(sdpa, q, k, v, grad_out)
    for a, b in zip(ours, reference, strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_is_causal():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 130, 8) for _ in range(3))
    changed_v = v.clone()
    changed_v[:, :, 70:] += 1.0  # a future position may not affect the outputs before it
    a, b = causal_attention(q, k, v), causal_attention(q, k, changed_v)
    assert torch.equal(a[:, :, :70], b[:, :, :70])
    assert not torch.allclose(a[:, :, 70:], b[:, :, 70:])


def test_bf16_inputs_are_at_least_as_precise_as_sdpa():
    """bf16 in, bf16 out, fp32 inside: no further from the fp32 result than torch's bf16 path."""
    torch.manual_seed(0)
    q, k, v, grad_out = (torch.randn(2, 4, 192, 64) * 2 for _ in range(4))
    exact = attention_and_grads(sdpa, q, k, v, grad_out)
    bf16 = [t.bfloat16() for t in (q, k, v, grad_out)]
    ours = attention_and_grads(causal_attention, *bf16)
    theirs = attention_and_grads(sdpa, *bf16)
    for a, b, ref in zip(ours, theirs, exact, strict=True):
        assert a.dtype == torch.bfloat16
        error_ours = (a.float() - ref).abs().max().item()
        error_theirs = (b.float() - ref).abs().max().item()
        assert error_ours <= error_theirs * 1.05 + 1e-3


def test_fp32_inside_autocast():
    torch.manual_seed(0)
    q, k, v, grad_out = (torch.randn(1, 2, 80, 16) for _ in range(4))
    with torch.autocast("cpu", torch.bfloat16):
        ours = attention_and_grads(causal_attention, *(t.bfloat16() for t in (q, k, v, grad_out)))
    outside = attention_and_grads(causal_attention, *(t.bfloat16() for t in (q, k, v, grad_out)))
    for a, b in zip(ours, outside, strict=True):
        assert torch.equal(a, b)
