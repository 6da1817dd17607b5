"""Export to transformers and generation: parity with transformers, KV cache, sampling, CLI.

One tiny random model (real GPT-2 tokenizer, hidden 64, 2 layers) is exported once per module.
Its weights are scaled so greedy decoding wanders instead of repeating one token, and its norm
gains are random so a swapped or missing norm would change the logits.
"""

from __future__ import annotations

import logging
import subprocess
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import generate
from model import KVCache, LlamaForTraining, ModelConfig
from owt.checkpointing import model_from_checkpoint, save_checkpoint
from owt.sampling import (
    TextStream,
    check_sampling_args,
    generate_ids,
    pick_token,
    sample_text,
    unwrap_model,
)
from scripts import run_script

REPO = Path(__file__).resolve().parents[1]
PROMPT = "The quick brown fox"
CONFIG = ModelConfig(
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    max_position_embeddings=128,
    # Non-defaults, so the test fails if export drops any of them.
    intermediate_size=160,
    rope_theta=5000.0,
    rms_norm_eps=1e-5,
)


def run_ok(script: str, *args: object) -> subprocess.CompletedProcess:
    """Run train/<script>, failing the test with its stderr if it fails."""
    done = run_script(script, *args, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, gpt2_tokenizer_dir: Path) -> Path:
    torch.manual_seed(0)
    model = LlamaForTraining(CONFIG)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif "embed_tokens" in name:
                p.copy_(0.3 * torch.randn_like(p))
            else:
                p.copy_(2.0 * torch.randn_like(p) / p.size(1) ** 0.5)
    state = {
        "model": model.state_dict(),
        "model_config": CONFIG.to_dict(),
        "tokenizer_name": str(gpt2_tokenizer_dir),
        "step": 0,
        "epoch": 0,
        "val_loss": None,
    }
    return save_checkpoint(state, tmp_path_factory.mktemp("ckpt") / "checkpoint_best.pt")


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> LlamaForTraining:
    return model_from_checkpoint(checkpoint)[0]


@pytest.fixture(scope="module")
def tokenizer(gpt2_tokenizer_dir: Path):
    return AutoTokenizer.from_pretrained(gpt2_tokenizer_dir)


@pytest.fixture(scope="module")
def exported(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hf")
    run_ok("export_hf.py", "--checkpoint", str(checkpoint), "--output_dir", str(out))
    return out


@pytest.fixture(scope="module")
def hf_model(exported: Path):
    return AutoModelForCausalLM.from_pretrained(exported).eval()


def test_export_writes_a_clean_standard_llama_folder(exported: Path, gpt2_tokenizer_dir: Path):
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json"):
        assert (exported / name).is_file(), name

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logging.getLogger("transformers").addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hf, info = AutoModelForCausalLM.from_pretrained(exported, output_loading_info=True)
            tok = AutoTokenizer.from_pretrained(exported)
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert [r.getMessage() for r in records] == []
    assert [str(w.message) for w in caught] == []
    assert all(not keys for keys in info.values()), info

    assert type(hf).__name__ == "LlamaForCausalLM" and hf.dtype == torch.float32
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()  # tied
    c = hf.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads) == (64, 2, 4)
    assert (c.num_key_value_heads, c.intermediate_size, c.max_position_embeddings) == (4, 160, 128)
    assert (c.rope_parameters["rope_theta"], c.rms_norm_eps) == (5000.0, 1e-5)
    assert c.eos_token_id == c.bos_token_id == 50256

    original = AutoTokenizer.from_pretrained(gpt2_tokenizer_dir)
    text = "Exported tokenizers encode naïve café text the same way."
    assert tok(text)["input_ids"] == original(text)["input_ids"]
    assert hf.generation_config.eos_token_id == 50256


def test_exported_logits_equal_ours(model: LlamaForTraining, hf_model):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, CONFIG.vocab_size, (2, CONFIG.max_position_embeddings), generator=g)
    with torch.no_grad():
        ours, _ = model(ids)
        theirs = hf_model(ids).logits
    assert ours.std() > 1  # logits of a realistic size, so 1e-4 is a meaningful bound
    assert (ours - theirs).abs().max() < 1e-4


def test_kv_cache_forward_equals_full_forward(model: LlamaForTraining):
    ids = torch.randint(0, CONFIG.vocab_size, (2, 40))
    cache = KVCache(CONFIG, batch_size=2, max_len=40)
    with torch.no_grad():
        full, _ = model(ids)
        # A prefill, single tokens, and a multi-token chunk at an offset (the masked case).
        chunks = [(0, 7), (7, 8), (8, 20), (20, 21), (21, 40)]
        pieces = [model(ids[:, a:b], kv_cache=cache)[0] for a, b in chunks]
    assert cache.length == 40
    assert (torch.cat(pieces, dim=1) - full).abs().max() < 1e-4  # fp32 rounding, logits ~ 10
    with pytest.raises(ValueError, match="max_len"):
        model(ids[:, :1], kv_cache=cache)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        KVCache(CONFIG, 1, CONFIG.max_position_embeddings + 1)


def test_cached_decode_equals_uncached_decode(model: LlamaForTraining, tokenizer):
    prompt = tokenizer(PROMPT)["input_ids"]
    for temperature, top_k, top_p in [(0, None, None), (0.9, 50, 0.9)]:
        runs = [
            list(
                generate_ids(
                    model,
                    prompt,
                    40,
                    temperature,
                    top_k,
                    top_p,
                    generator=torch.Generator().manual_seed(3),
                    use_cache=use_cache,
                )
            )
            for use_cache in (True, False)
        ]
        assert runs[0] == runs[1] and len(runs[0]) == 40
    assert len(set(runs[0])) > 10  # not one token repeated


def sample_ids(argv: list[str]) -> list[list[int]]:
    """generate.py in-process: the token ids of each sample it prints."""
    return generate.generate(generate.parse_args(argv))


def test_generate_greedy_equals_transformers_generate(checkpoint: Path, hf_model, tokenizer):
    ours = sample_ids(
        ["--checkpoint", str(checkpoint), "--prompt", PROMPT]
        + ["--temperature", "0", "--max_new_tokens", "20"]
    )[0]
    ids = tokenizer(PROMPT, return_tensors="pt")
    theirs = hf_model.generate(**ids, do_sample=False, max_new_tokens=20)
    new = theirs[0, ids["input_ids"].size(1) :].tolist()
    assert ours == new
    assert len(ours) == 20 and len(set(ours)) > 5  # a real continuation, not an early EOS


def test_generate_cli_streams_the_greedy_text(checkpoint: Path, hf_model, tokenizer):
    done = run_ok(
        "generate.py",
        *["--checkpoint", str(checkpoint), "--prompt", PROMPT],
        *["--temperature", "0", "--max_new_tokens", "20", "--num_samples", "2"],
    )
    ids = tokenizer(PROMPT, return_tensors="pt")
    new = hf_model.generate(**ids, do_sample=False, max_new_tokens=20)[
        0, ids["input_ids"].size(1) :
    ]
    text = PROMPT + tokenizer.decode(new, clean_up_tokenization_spaces=False)
    assert done.stdout == f"{text}\n{generate.SEPARATOR}{text}\n"
    assert "params on cpu" in done.stderr


def test_generate_stops_at_eos_and_seed_repeats(checkpoint: Path, model, tokenizer):
    prompt = tokenizer(PROMPT)["input_ids"]
    greedy = list(generate_ids(model, prompt, 10, temperature=0))
    stopped = list(generate_ids(model, prompt, 10, temperature=0, eos_token_id=greedy[3]))
    assert stopped == greedy[: greedy.index(greedy[3]) + 1]

    args = ["--checkpoint", str(checkpoint), "--prompt", PROMPT, "--max_new_tokens", "12"]
    first = sample_ids([*args, "--seed", "1", "--num_samples", "2"])
    assert first == sample_ids([*args, "--seed", "1", "--num_samples", "2"])
    assert first[0] != first[1]  # successive samples continue the generator


def test_text_stream_never_splits_a_character(tokenizer):
    text = "naïve café — 中文字符 🤖🚀 done"
    stream = TextStream(tokenizer)
    pieces = [stream.push(t) for t in tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]]
    pieces.append(stream.finish())
    assert "".join(pieces) == text  # EOS is not printed
    assert not any("\ufffd" in p for p in pieces)
    assert sum(1 for p in pieces if p) > 5  # it does stream


def test_pick_token_filters():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    g = torch.Generator().manual_seed(0)

    def draws(**kwargs) -> set[int]:
        return {pick_token(logits, generator=g, **kwargs) for _ in range(500)}

    assert draws() == {0, 1, 2, 3}
    assert draws(temperature=0) == {0}
    assert draws(top_k=1) == {0}
    assert draws(top_k=2) == {0, 1}
    assert draws(top_p=0.7) == {0, 1}  # 0.5 < 0.7 <= 0.5 + 0.3
    assert draws(top_p=0.9) == {0, 1, 2}
    assert draws(temperature=0.01) == {0}
    for bad in ({"temperature": -1}, {"top_k": -1}, {"top_p": 0.0}, {"top_p": 1.5}):
        with pytest.raises(ValueError):
            check_sampling_args(**{"temperature": 1.0, "top_k": None, "top_p": None, **bad})


def test_sample_text_is_cheap_deterministic_and_side_effect_free(model, tokenizer):
    encoder = SimpleNamespace(hf_tokenizer=tokenizer)  # what pretrain.py holds (a TextEncoder)
    model.train()
    rng = torch.get_rng_state()
    text = sample_text(model, encoder, PROMPT, max_new_tokens=8)
    assert model.training and torch.equal(rng, torch.get_rng_state())
    assert text.startswith(PROMPT) and len(text) > len(PROMPT)
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # called from inside an eval block
        assert sample_text(torch.compile(model), tokenizer, PROMPT, max_new_tokens=8) == text
    assert not model.training
    assert unwrap_model(torch.compile(model)) is model
