import pytest
import torch

from model import LlamaForTraining, ModelConfig, apply_rope, rope_cos_sin

SMALL = ModelConfig(
    vocab_size=300, hidden_size=64, num_layers=2, num_heads=4, max_position_embeddings=64
)


def test_default_config_is_gpt2_sized():
    config = ModelConfig()
    assert config.intermediate_size == 2048
    with torch.device("meta"):
        model = LlamaForTraining(config)
    assert 123e6 <= model.num_parameters() <= 125e6


def test_logits_match_transformers_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    ours = LlamaForTraining(SMALL).eval()
    hf_config = LlamaConfig(
        vocab_size=SMALL.vocab_size,
        hidden_size=SMALL.hidden_size,
        intermediate_size=SMALL.intermediate_size,
        num_hidden_layers=SMALL.num_layers,
        num_attention_heads=SMALL.num_heads,
        num_key_value_heads=SMALL.num_heads,
        max_position_embeddings=SMALL.max_position_embeddings,
        rope_theta=SMALL.rope_theta,
        rms_norm_eps=SMALL.rms_norm_eps,
        tie_word_embeddings=True,
    )
    theirs = LlamaForCausalLM(hf_config).eval()
    result = theirs.load_state_dict(ours.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    tokens = torch.randint(0, SMALL.vocab_size, (3, 40))
    with torch.no_grad():
        diff = (ours(tokens)[0] - theirs(tokens).logits).abs().max().item()
    assert diff < 1e-4


@pytest.mark.parametrize("t", [0, 17, 38])
def test_causality(t):
    torch.manual_seed(0)
    model = LlamaForTraining(SMALL).eval()
    a = torch.randint(0, SMALL.vocab_size, (2, 40))
    b = a.clone()
    b[:, t + 1 :] = torch.randint(0, SMALL.vocab_size, (2, 40 - t - 1))
    with torch.no_grad():
        la, lb = model(a)[0], model(b)[0]
    assert torch.equal(la[:, : t + 1], lb[:, : t + 1])
    assert not torch.allclose(la[:, t + 1 :], lb[:, t + 1 :])


def test_initialisation_scales_residual_projections():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=1000, hidden_size=256, num_layers=8, num_heads=4)
    model = LlamaForTraining(config)
    block = model.model.layers[0]
    assert abs(block.self_attn.q_proj.weight.std().item() - 0.02) < 2e-3
    expected = 0.02 / (2 * config.num_layers) ** 0.5
    assert abs(block.mlp.down_proj.weight.std().item() - expected) < 1e-3
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_untrained_loss_is_near_uniform():
    torch.manual_seed(0)
    model = LlamaForTraining(SMALL)
    x, y = torch.randint(0, SMALL.vocab_size, (2, 4, 32))
    _, loss = model(x, y)
    assert abs(loss.item() - torch.log(torch.tensor(300.0)).item()) < 0.1


def test_rope_is_llamas_rotate_half():
    """apply_rope's roll + signed sin equals Llama's x*cos + cat(-x2, x1)*sin, on the model's
    non-contiguous (B, heads, T, head_dim) view."""
    config = ModelConfig(hidden_size=64, num_heads=4, max_position_embeddings=16)
    d = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2).float() / d))
    angles = torch.outer(torch.arange(16).float(), inv_freq)
    cos, sin = torch.cat((angles, angles), -1).cos(), torch.cat((angles, angles), -1).sin()
    x = torch.randn(2, 16, 4, d, generator=torch.Generator().manual_seed(0)).transpose(1, 2)
    x1, x2 = x.chunk(2, dim=-1)
    expected = x * cos + torch.cat((-x2, x1), dim=-1) * sin
    torch.testing.assert_close(apply_rope(x, *rope_cos_sin(config)), expected)
