"""Budgets, schedules, Muon, bits per byte: the parts that run without a subprocess."""

from __future__ import annotations

import argparse
import io
import math

import numpy as np
import pytest
import torch

from model import LlamaForTraining, ModelConfig
from owt.config import parse_count, parse_duration
from owt.evaluation import Evaluator
from owt.optim import Optimizers, build_optimizer, set_learning_rates
from owt.schedule import Budget, Schedule
from owt.token_windows import TokenWindows
from owt.tokenization import load_encoder
from tiny import tiny_model


@pytest.mark.parametrize(
    ("text", "count"),
    [("500M", 500_000_000), ("2B", 2_000_000_000), ("1.5e9", 1_500_000_000), ("12k", 12_000),
     ("4096", 4096), ("1_000", 1000)],
)  # fmt: skip
def test_token_counts_parse(text, count):
    assert parse_count(text) == count


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90m", 5400), ("8h", 28800), ("1h30m", 5400), ("3600s", 3600), ("45", 45), ("1.5h", 5400),
     ("2m30s", 150)],
)  # fmt: skip
def test_durations_parse(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "soon", "1h30", "-5m", "3x"])
def test_bad_durations_are_refused(bad):
    with pytest.raises(argparse.ArgumentTypeError, match="90m"):
        parse_duration(bad)


def test_the_first_budget_reached_ends_the_run():
    budget = Budget.of(epoch_steps=1000, max_steps=300, max_tokens=0, tokens_per_step=256,
                       max_time=0)  # fmt: skip
    assert (budget.step_limit, budget.limited_by) == (300, "max_steps")
    budget = Budget.of(1000, 300, max_tokens=25_600, tokens_per_step=256, max_time=60)
    assert (budget.step_limit, budget.limited_by) == (100, "max_tokens")  # ceil(25600 / 256)
    assert budget.ended_by(99, 59.0) is None
    assert budget.ended_by(100, 1.0) == "max_tokens"
    assert budget.ended_by(50, 60.0) == "max_time"
    assert budget.progress(50, 45.0) == 0.75  # the time budget is further along


def test_wsd_is_warmup_constant_then_one_minus_sqrt_cooldown():
    budget = Budget.of(10_000, 100, 0, 256, 0)
    wsd = Schedule.of("wsd", budget, warmup=10, min_lr_ratio=0.0, cooldown=0.2)
    assert [wsd.factor(s) for s in range(3)] == [0.1, 0.2, 0.3]
    assert all(wsd.factor(s) == 1.0 for s in range(10, 81))
    for step in range(81, 100):
        assert wsd.factor(step) == pytest.approx(1 - math.sqrt((step / 100 - 0.8) / 0.2))
    assert wsd.factor(100) == pytest.approx(0.0, abs=1e-12)
    # The constant phase does not depend on the budget: a larger budget continues it.
    longer = Schedule.of("wsd", Budget.of(10_000, 400, 0, 256, 0), 10, 0.0, 0.2)
    assert [longer.factor(s) for s in range(81)] == [wsd.factor(s) for s in range(81)]


def test_cosine_fits_the_step_budget_and_the_time_budget():
    cosine = Schedule.of("cosine", Budget.of(10_000, 200, 0, 256, 0), -1, 0.1, 0.2)
    assert cosine.warmup_steps == 10  # 5% of the 200 steps the budget allows
    assert cosine.factor(9) == 1.0 and cosine.factor(200) == pytest.approx(0.1)
    assert cosine.factor(105) == pytest.approx(0.55)  # halfway through the decay
    timed = Schedule.of("cosine", Budget.of(10**9, 0, 0, 256, 1000.0), -1, 0.1, 0.2)
    assert timed.warmup_steps is None  # warm up over the first 5% of the time
    assert timed.factor(0, 25.0) == 0.5 and timed.factor(7, 50.0) == 1.0
    assert timed.factor(7, 525.0) == pytest.approx(0.55) and timed.factor(9, 1000) == 0.1


def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    model = tiny_model()
    optimizer = build_optimizer(model, 1e-3, 0.1, "cpu", "muon", 0.02)
    assert isinstance(optimizer, Optimizers)
    muon = {id(p) for g in optimizer.optimizers["muon"].param_groups for p in g["params"]}
    adamw = {id(p) for g in optimizer.optimizers["adamw"].param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        in_block = name.startswith("model.layers.")
        assert (id(p) in muon) == (in_block and p.dim() == 2), name
    assert muon.isdisjoint(adamw) and muon | adamw == {id(p) for p in model.parameters()}
    set_learning_rates(optimizer, 1e-3 * 0.5, 0.02 * 0.5)
    assert {g["lr"] for g in optimizer.optimizers["muon"].param_groups} == {0.01}
    assert {g["lr"] for g in optimizer.optimizers["adamw"].param_groups} == {5e-4}


def test_muon_state_round_trips_bit_for_bit():
    model = tiny_model()
    optimizer = build_optimizer(model, 1e-3, 0.1, "cpu", "muon", 0.02)
    x = torch.randint(0, 64, (2, 17))
    for _ in range(2):
        model(x[:, :-1], x[:, 1:])[1].backward()
        optimizer.step()
        optimizer.zero_grad()
    copy = tiny_model()
    copy.load_state_dict(model.state_dict())
    again = build_optimizer(copy, 1e-3, 0.1, "cpu", "muon", 0.02)
    saved = io.BytesIO()  # through a file, as a checkpoint: no tensor shared with `optimizer`
    torch.save(optimizer.state_dict(), saved)
    saved.seek(0)
    again.load_state_dict(torch.load(saved, weights_only=True))
    for m, opt in ((model, optimizer), (copy, again)):
        m(x[:, :-1], x[:, 1:])[1].backward()
        opt.step()
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), copy.parameters(), strict=True)
    )


def test_bits_per_byte_is_loss_times_tokens_over_bytes(gpt2_tokenizer_dir, documents):
    """val/bpb = mean loss x tokens / UTF-8 bytes / ln 2 over exactly the windows evaluated,
    the bytes counted here from the text the windows' target tokens decode to."""
    encoder = load_encoder(str(gpt2_tokenizer_dir))
    tokens = encoder.encode_documents(documents[:6], np.uint16)
    windows = TokenWindows(tokens, 32)
    torch.manual_seed(0)
    model = LlamaForTraining(ModelConfig(hidden_size=32, num_layers=1, num_heads=2,
                                         max_position_embeddings=64))  # fmt: skip
    lengths = torch.from_numpy(encoder.token_byte_lengths())
    result = Evaluator(windows, 4, 3, torch.device("cpu"), token_bytes=lengths)(model)
    _, targets = windows.batch(range(12))  # 3 batches of 4 windows
    text = encoder.tiktoken_encoding.decode_bytes(
        [t for t in targets.flatten().tolist() if t != encoder.eos_token_id]
    )
    assert result.tokens == targets.numel() and result.bytes == len(text)
    assert result.bpb == pytest.approx(result.loss * result.tokens / len(text) / math.log(2))
    assert 0 < result.bpb < result.loss  # GPT-2 tokens are several bytes each
