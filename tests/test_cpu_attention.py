import pytest
import torch
import torch.nn.functional as F

from model import LlamaForTraining, ModelConfig
from owt import cpu_attention
from owt.cpu_attention import causal_attention


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


def test_same_result_inside_and_outside_autocast():
    torch.manual_seed(0)
    q, k, v, grad_out = (torch.randn(1, 2, 80, 16) for _ in range(4))
    with torch.autocast("cpu", torch.bfloat16):
        ours = attention_and_grads(causal_attention, *(t.bfloat16() for t in (q, k, v, grad_out)))
    outside = attention_and_grads(causal_attention, *(t.bfloat16() for t in (q, k, v, grad_out)))
    for a, b in zip(ours, outside, strict=True):
        assert torch.equal(a, b)


def test_model_layout_non_contiguous_inputs():
    """The model passes (B, T, H, D)-transposed views, not contiguous tensors."""
    torch.manual_seed(1)
    q, k, v, grad_out = (torch.randn(2, 130, 3, 16).transpose(1, 2) for _ in range(4))
    assert not q.is_contiguous()
    ours = attention_and_grads(causal_attention, q, k, v, grad_out)
    reference = attention_and_grads(sdpa, q, k, v, grad_out)
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_used_for_cpu_training_up_to_512_only():
    q = torch.zeros(1, 1, 512, 8)
    assert cpu_attention.suits(q)
    assert not cpu_attention.suits(torch.zeros(1, 1, 513, 8))
    assert not cpu_attention.suits(q.double())
    assert not cpu_attention.suits(torch.zeros(1, 1, 8, 8, device="meta"))
    with torch.no_grad():
        assert not cpu_attention.suits(q)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_model_trains_the_same_through_either_kernel(monkeypatch, checkpointing):
    """The model's loss and every gradient agree with cpu_attention on and off."""
    config = ModelConfig(
        vocab_size=300, hidden_size=64, num_layers=2, num_heads=4, max_position_embeddings=256
    )
    x, y = torch.randint(0, 300, (2, 2, 130), generator=torch.Generator().manual_seed(0))
    calls = []
    monkeypatch.setattr(
        cpu_attention, "causal_attention", lambda *a: calls.append(1) or causal_attention(*a)
    )
    results = []
    for use in (True, False):
        monkeypatch.setattr(cpu_attention, "suits", lambda q, use=use: use)
        torch.manual_seed(0)
        model = LlamaForTraining(config)
        model.gradient_checkpointing = checkpointing
        _, loss = model(x, y)
        loss.backward()
        results.append([loss.detach()] + [p.grad for p in model.parameters()])
    assert len(calls) == config.num_layers * (2 if checkpointing else 1)  # recomputed: twice
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
