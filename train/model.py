"""A Llama-style decoder-only transformer in plain PyTorch.

token embedding -> N x [RMSNorm -> causal attention with RoPE -> +residual,
                        RMSNorm -> SwiGLU MLP -> +residual] -> RMSNorm -> LM head (tied)

Parameter names follow transformers' LlamaForCausalLM, so a state dict loads there unchanged.
Passing a KVCache to forward() decodes incrementally: each call runs only the new tokens.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from owt import cpu_attention
from owt.lm_loss import linear_cross_entropy


@dataclass
class ModelConfig:
    vocab_size: int = 50257
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    max_position_embeddings: int = 1024
    intermediate_size: int = 0  # 0 = derived from hidden_size the way Llama does
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if not self.intermediate_size:
            # Llama: 2/3 of 4*hidden (SwiGLU has three matrices), rounded up to a multiple of 256.
            self.intermediate_size = 256 * math.ceil(int(8 * self.hidden_size / 3) / 256)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        """The config `to_dict` wrote, key for key. An unknown key (a model this code does not
        build) or a missing one raises ValueError: a default in its place would build another
        model than the one saved."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        missing = [name for name in known if name not in values]
        problems = [f"unknown keys ({', '.join(unknown)})"] if unknown else []
        problems += [f"no {', '.join(missing)}"] if missing else []
        if problems:
            raise ValueError(f"model config has {' and '.join(problems)}")
        return cls(**values)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics in fp32, for stability under bf16 autocast, as Llama does; the gain goes
        # into F.rms_norm, so backends with a fused kernel (MPS, CPU) apply it in the same pass.
        return F.rms_norm(x.float(), (x.size(-1),), self.weight, self.eps).type_as(x)


def rope_cos_sin(config: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE tables of shape (max_position_embeddings, head_dim): cos with its halves duplicated
    (Llama's layout) and sin with the first half negated, the form apply_rope takes."""
    d = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    angles = torch.outer(torch.arange(config.max_position_embeddings).float(), inv_freq)
    return torch.cat((angles, angles), dim=-1).cos(), torch.cat((-angles, angles), dim=-1).sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, heads, T, head_dim) by position, Llama's 'rotate half' layout:
    x * cos + cat(-x2, x1) * sin, written as x * cos + roll(x, half) * signed_sin so that it
    is three passes over q and k, not five (no neg, no cat), forward and backward."""
    return torch.addcmul(x * cos, x.roll(x.size(-1) // 2, dims=-1), signed_sin).type_as(x)


def causal_self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention over whole (B, heads, T, head_dim) sequences: cpu_attention where it is
    faster (CPU training up to T=512; benchmarks/README.md), else torch's fused kernel."""
    if cpu_attention.suits(q):
        return cpu_attention.causal_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


class KVCache:
    """Keys and values of the positions already run, so decoding a token runs only that token.

    Preallocated for `max_len` positions (writes in place, no concatenation per step); `length`
    is how many are filled, which is also the position of the next token fed to the model.
    """

    def __init__(
        self,
        config: ModelConfig,
        batch_size: int,
        max_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if max_len > config.max_position_embeddings:
            raise ValueError(
                f"KVCache max_len {max_len} > max_position_embeddings "
                f"{config.max_position_embeddings}; shorten the prompt or generate fewer tokens."
            )
        shape = (config.num_layers, 2, batch_size, config.num_heads, max_len, config.head_dim)
        self.kv = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        h, self.num_heads, self.head_dim = config.hidden_size, config.num_heads, config.head_dim
        self.q_proj = nn.Linear(h, h, bias=False)
        self.k_proj = nn.Linear(h, h, bias=False)
        self.v_proj = nn.Linear(h, h, bias=False)
        self.o_proj = nn.Linear(h, h, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv: torch.Tensor | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (
            proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv is None:  # full sequence
            y = causal_self_attention(q, k, v)
        else:  # decoding: append to this layer's (2, B, heads, max_len, head_dim) cache
            end = start + T
            kv[0, :, :, start:end], kv[1, :, :, start:end] = k, v
            mask = None  # one new token may attend to every cached position
            if T > 1:  # is_causal aligns top-left, but query i sits at position start + i
                mask = torch.ones(T, end, dtype=torch.bool, device=x.device).tril(start)
            # Contiguous copies (small: one token's queries, the cache so far): MPS attention
            # kernels have returned wrong values for strided queries and KV slices
            # (pytorch#163597, #170874, #181133).
            keys, values = kv[0, :, :, :end].contiguous(), kv[1, :, :, :end].contiguous()
            y = F.scaled_dot_product_attention(q.contiguous(), keys, values, attn_mask=mask)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        h, m = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(h, m, bias=False)
        self.up_proj = nn.Linear(h, m, bias=False)
        self.down_proj = nn.Linear(m, h, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv: torch.Tensor | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, kv, start)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """The trunk; named `model` inside LlamaForTraining to match transformers' key names."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaForTraining(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.lm_head.weight = self.model.embed_tokens.weight  # tied
        cos, signed_sin = rope_cos_sin(config)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", signed_sin, persistent=False)  # first half negated
        # Recompute each block in backward instead of storing its activations (less memory,
        # one extra forward); the numbers are the same.
        self.gradient_checkpointing = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.config.init_std
        for name, p in self.named_parameters():
            if p.dim() < 2:
                nn.init.ones_(p)  # RMSNorm gains
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                # Each block adds two residual writes: keep the stream's variance flat with depth.
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.config.num_layers))
            else:
                nn.init.normal_(p, 0.0, std)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # the tied weight counts once

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Return (logits, None) without targets; (None, loss) with them.

        loss is the mean next-token cross-entropy; with targets the logits are never kept
        (lm_loss.linear_cross_entropy: less memory and time). With `kv_cache`, `input_ids`
        continue the sequence the cache holds (positions start at kv_cache.length), attend to
        it, and are appended to it.
        """
        T = input_ids.size(1)
        start = 0 if kv_cache is None else kv_cache.length
        limit = self.config.max_position_embeddings if kv_cache is None else kv_cache.max_len
        if start + T > limit:
            what = "max_position_embeddings" if kv_cache is None else "the KVCache's max_len"
            raise ValueError(f"sequence length {start + T} > {what}")
        cos, sin = self.rope_cos[start : start + T], self.rope_sin[start : start + T]
        x = self.model.embed_tokens(input_ids)
        recompute = (
            self.gradient_checkpointing
            and self.training
            and torch.is_grad_enabled()
            and kv_cache is None
        )
        for i, block in enumerate(self.model.layers):
            if recompute:
                x = checkpoint(block, x, cos, sin, use_reentrant=False)
            else:
                x = block(x, cos, sin, None if kv_cache is None else kv_cache.kv[i], start)
        if kv_cache is not None:
            kv_cache.length += T
        x = self.model.norm(x)
        if targets is not None:
            return None, linear_cross_entropy(x, self.lm_head.weight, targets)
        return self.lm_head(x), None
