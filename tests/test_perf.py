"""Tests of train/devices.py and of the numerics of every speed trick benchmarks/bench_train.py
measures (vocab padding, fused QKV, gradient checkpointing, bf16 autocast, fused AdamW)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import measure
from model import LlamaForTraining, ModelConfig
from owt import devices
from same_run import assert_same_update
from tiny import tiny_config, tiny_model

REPO = Path(__file__).resolve().parents[1]
VOCAB = 300  # not a multiple of 64: --pad_vocab 64 pads it (to 320)


def load_bench():
    spec = importlib.util.spec_from_file_location(
        "bench_train", REPO / "benchmarks" / "bench_train.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_bench()


def batch(vocab: int = VOCAB, B: int = 2, T: int = 16, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    xy = torch.randint(0, vocab, (B, T + 1), generator=g)
    return xy[:, :-1], xy[:, 1:]


# --- tune_cpu_allocator -----------------------------------------------------------------------

RSS_PROBE = """
import sys; sys.path.insert(0, {train!r})
from owt import devices
tuned = devices.tune_cpu_allocator()
assert devices.tune_cpu_allocator() == tuned  # idempotent
before = devices.cpu_rss_bytes()
block = bytearray(256 << 20)  # 256 MiB, touched (zeroed)
del block
print(tuned, (devices.cpu_rss_bytes() - before) >> 20)
"""


def _rss_probe(env_extra: dict[str, str]) -> tuple[str, int]:
    env = {**os.environ, **env_extra}
    out = subprocess.run(
        [sys.executable, "-c", RSS_PROBE.format(train=str(REPO / "train"))],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.uname().machine not in ("x86_64", "aarch64"),
    reason="glibc allocator behaviour is Linux-specific",
)
def test_tune_cpu_allocator_keeps_freed_memory_in_the_process():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    # Default glibc: a 256 MiB block is mmap'd and munmap'd on free -> RSS falls back.
    tuned, kept = _rss_probe({"OWT_NO_MALLOC_TUNING": "1"})
    assert tuned == "False" and kept < 64
    # Tuned: served from the heap and not trimmed -> the next step reuses it without syscalls.
    tuned, kept = _rss_probe({"OWT_NO_MALLOC_TUNING": "0"})
    assert tuned == "True" and kept >= 200


THP_PROBE = """
import sys; sys.path.insert(0, {train!r})
from owt import devices
devices.tune_cpu_allocator()
import torch
block = torch.ones(64 << 18)  # 64 MiB through torch's CPU allocator, touched
rollup = open("/proc/self/smaps_rollup").read()
print(rollup.split("AnonHugePages:")[1].split()[0])
"""


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="Linux /proc only")
def test_tune_cpu_allocator_asks_for_huge_pages():
    def huge_kib(no_tuning: str) -> int:
        env = {**os.environ, "OWT_NO_MALLOC_TUNING": no_tuning}
        env.pop("THP_MEM_ALLOC_ENABLE", None)
        code = THP_PROBE.format(train=str(REPO / "train"))
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert run.returncode == 0, run.stderr
        return int(run.stdout)

    setting = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    mode = setting.read_text() if setting.exists() else "[never]"
    if "[never]" in mode:  # the kernel gives none on request either: nothing to see
        assert huge_kib("0") == 0
        return
    assert huge_kib("0") >= 32 << 10  # most of the 64 MiB block
    if "[madvise]" in mode:  # only on request: none without the tuning
        assert huge_kib("1") < 8 << 10


def test_tune_cpu_allocator_is_a_safe_no_op_elsewhere(monkeypatch):
    monkeypatch.setattr(devices, "_allocator_tuned", None)
    monkeypatch.setattr(devices.sys, "platform", "darwin")
    assert devices.tune_cpu_allocator() is False
    monkeypatch.setattr(devices, "_allocator_tuned", None)  # let a later call re-evaluate


# --- FLOPs and peak -------------------------------------------------------------------------


def test_model_flops_per_token_is_6n_plus_attention():
    config = tiny_config(vocab_size=VOCAB)
    model = LlamaForTraining(config)
    T = 32
    L, H, Q = config.num_layers, config.num_heads, config.head_dim
    expected = 6 * model.num_parameters() + 12 * L * H * Q * T  # tied weight counted once
    assert measure.model_flops_per_token(config, T) == expected
    gpt2 = ModelConfig()  # 124M shape: N = 123.55M incl. the 38.6M LM head
    assert measure.model_flops_per_token(gpt2, 1024) == pytest.approx(
        6 * 123_551_232 + 12 * 12 * 768 * 1024, rel=0
    )


def test_model_flops_match_a_flop_counter(monkeypatch):
    """The formula counts what actually runs, per torch's FLOP counter over forward + backward:
    the matmuls are exactly 6N (less the RMSNorm gains, which the formula counts as 6 FLOPs each
    and the counter not at all) and attention's forward is exactly a third of 12*L*H*Q*T. (The
    counter charges the flash backward 2.5x the forward, since it recomputes Q K^T: hardware
    FLOPs, not model FLOPs, which is why MFU uses the formula.) Through torch's attention kernel,
    which the counter knows, rather than cpu_attention's batched matmuls."""
    from torch.utils.flop_counter import FlopCounterMode

    from owt import cpu_attention

    monkeypatch.setattr(cpu_attention, "suits", lambda q: False)

    config = tiny_config(vocab_size=VOCAB)
    model = LlamaForTraining(config)
    x, y = batch(T=32)
    with FlopCounterMode(display=False) as counter:
        model(x, y)[1].backward()
    counts = {str(op): n / x.numel() for op, n in counter.get_flop_counts()["Global"].items()}
    L, H, Q, T = config.num_layers, config.num_heads, config.head_dim, 32
    norms = (2 * L + 1) * config.hidden_size
    attention = 12 * L * H * Q * T
    assert counts["aten.mm"] == measure.model_flops_per_token(config, T) - 6 * norms - attention
    sdpa_forward = [n for op, n in counts.items() if "attention" in op and "backward" not in op]
    assert sdpa_forward == [attention / 3]


def test_measure_matmul_peak_is_plausible():
    flops = measure.measure_matmul_peak("cpu", torch.float32, n=256, repeats=2, min_seconds=0.01)
    assert math.isfinite(flops) and 1e8 < flops < 1e14


# --- dtype choice ---------------------------------------------------------------------------


def test_resolve_dtype(monkeypatch):
    native_bf16 = devices.cpu_supports_bf16()
    assert devices.resolve_dtype("cpu", "auto") == (
        torch.bfloat16 if native_bf16 else torch.float32
    )
    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: not native_bf16)
    assert devices.resolve_dtype("cpu", "auto") == (
        torch.float32 if native_bf16 else torch.bfloat16
    )
    assert devices.resolve_dtype("mps", "auto") == torch.float32
    assert devices.resolve_dtype("cpu", "bf16") == torch.bfloat16
    assert devices.resolve_dtype("cpu", "float32") == torch.float32
    with pytest.raises(ValueError, match="unknown dtype"):
        devices.resolve_dtype("cpu", "int8")
    assert isinstance(devices.cpu_supports_bf16(), bool)


def test_resolve_compile(monkeypatch):
    monkeypatch.setattr(devices.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(devices.sys, "platform", "linux")
    assert devices.resolve_compile("cpu") and devices.resolve_compile("cuda", "auto")
    assert not devices.resolve_compile("mps")  # unmeasured there: never on by default
    monkeypatch.setattr(devices.sys, "platform", "darwin")  # inductor would also need libomp
    assert not devices.resolve_compile("cpu") and devices.resolve_compile("cpu", "on")
    monkeypatch.setattr(devices.sys, "platform", "linux")
    assert devices.resolve_compile("mps", "on") and not devices.resolve_compile("cpu", "off")
    monkeypatch.setenv("CXX", "my-c++")
    assert devices.cxx_compiler() == "/usr/bin/my-c++"
    monkeypatch.setattr(devices.shutil, "which", lambda name: None)  # no compiler: train eagerly
    assert devices.cxx_compiler() is None and not devices.resolve_compile("cpu")
    with pytest.raises(ValueError, match="unknown --compile"):
        devices.resolve_compile("cpu", "yes")


def test_compile_flag_forms():
    from owt.config import build_parser

    parse = build_parser().parse_args
    assert parse([]).compile == "auto"
    assert parse(["--compile"]).compile == "on"  # the old bare flag still means on
    assert parse(["--compile", "off"]).compile == "off"


def test_autocast_context():
    with devices.autocast("cpu", torch.float32):
        assert not torch.is_autocast_enabled("cpu")
    with devices.autocast("cpu", torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")


def test_peak_memory_on_cpu():
    import mmap

    devices.reset_peak_memory("cpu")
    base = devices.cpu_rss_bytes()
    # 32 MiB of fresh pages, touched: a malloc'd block could reuse pages already resident
    # (after tune_cpu_allocator ran in this process, freed blocks stay in the heap).
    block = mmap.mmap(-1, 32 << 20)
    block.write(b"\1" * (32 << 20))
    peak = devices.peak_memory_bytes("cpu")
    block.close()
    assert peak >= base + (30 << 20)


# --- numerics of the speed tricks -----------------------------------------------------------


@pytest.mark.parametrize("pad_mode", ["slice", "mask"])
def test_padded_vocab_gives_the_same_loss_and_training(bench, pad_mode):
    """Pad 300 -> 320 rows: loss, grads of real rows and 3 AdamW steps match the unpadded model;
    padded rows get exactly zero gradient, so they never influence anything."""
    ref = tiny_model(vocab_size=VOCAB)
    padded = tiny_model(vocab_size=320)
    with torch.no_grad():
        for p, q in zip(ref.parameters(), padded.parameters(), strict=True):
            q[: p.size(0)].copy_(p)
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    opt_pad = torch.optim.AdamW(padded.parameters(), lr=1e-2)
    for step in range(3):
        x, y = batch(seed=step)
        loss_ref = ref(x, y)[1]
        loss_pad = bench.padded_vocab_forward(padded, x, y, real_vocab=300, pad_mode=pad_mode)
        torch.testing.assert_close(loss_pad, loss_ref, rtol=1e-6, atol=1e-6)
        loss_ref.backward()
        loss_pad.backward()
        g_pad = padded.model.embed_tokens.weight.grad
        torch.testing.assert_close(g_pad[:300], ref.model.embed_tokens.weight.grad)
        assert torch.count_nonzero(g_pad[300:]) == 0
        opt_ref.step()
        opt_pad.step()
        opt_ref.zero_grad()
        opt_pad.zero_grad()


def test_model_gradient_checkpointing_switch_gives_identical_training():
    """model.gradient_checkpointing = True changes memory, not
    numbers: same loss and gradients, and eval / no-grad forwards are unaffected."""
    a, b = tiny_model(vocab_size=VOCAB), tiny_model(vocab_size=VOCAB)
    b.gradient_checkpointing = True
    x, y = batch()
    loss_a, loss_b = a(x, y)[1], b(x, y)[1]
    assert torch.equal(loss_a, loss_b)
    loss_a.backward()
    loss_b.backward()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        assert torch.equal(a(x)[0], b(x)[0])


def test_fused_qkv_gives_the_same_loss(bench):
    a, b = tiny_model(vocab_size=VOCAB), tiny_model(vocab_size=VOCAB)
    bench.fuse_qkv(b)
    x, y = batch()
    torch.testing.assert_close(b(x, y)[1], a(x, y)[1], rtol=1e-6, atol=1e-6)


def test_fused_adamw_on_cpu_matches_foreach():
    a, b = tiny_model(vocab_size=VOCAB), tiny_model(vocab_size=VOCAB)
    start = {k: v.clone() for k, v in a.state_dict().items()}
    opt_a = torch.optim.AdamW(a.parameters(), lr=1e-2, foreach=True)
    opt_b = torch.optim.AdamW(b.parameters(), lr=1e-2, fused=True)
    for step in range(3):
        x, y = batch(seed=step)
        for m, opt in ((a, opt_a), (b, opt_b)):
            m(x, y)[1].backward()
            opt.step()
            opt.zero_grad()
    assert_same_update(b.state_dict(), a.state_dict(), start)  # rounding only (same_run.py)


def test_bf16_autocast_trains_like_fp32():  # numerics only: emulated bf16 runs it on any CPU
    """30 steps on a learnable sequence: the bf16 autocast loss curve tracks fp32's at every
    step, as README says (0.06)."""
    curves = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = tiny_model(vocab_size=64)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(0)
        curve = []
        for _ in range(30):
            start = torch.randint(0, 64, (8, 1), generator=g)
            xy = (start + 3 * torch.arange(33)) % 64  # next token = current + 3 (mod 64)
            with devices.autocast("cpu", dtype):
                loss = model(xy[:, :-1], xy[:, 1:])[1]
            loss.backward()
            opt.step()
            opt.zero_grad()
            curve.append(loss.item())
        curves[dtype] = curve
    fp32, bf16 = curves[torch.float32], curves[torch.bfloat16]
    assert fp32[-1] < 0.5 * fp32[0]  # it learns
    # README: bf16 curves within 0.06 nats of fp32's at every point (measured here: 6e-4).
    assert max(abs(b - a) for a, b in zip(fp32, bf16, strict=True)) <= 0.06


# --- the benchmark itself -------------------------------------------------------------------


def test_bench_train_runs_and_reports(bench, capsys):
    rc = bench.main(
        [
            "--shapes",
            "1x64x16x2",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--in_process",
            "--data_tokens",
            "4096",
            "--no_peak",
            "--pad_vocab",
            "64",
            "--gradient_checkpointing",
            "--compile",
            "off",
        ]
    )
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    (result,) = report["results"]
    assert result["vocab_size"] == 50304 and result["tokens_per_s"] > 0
    assert result["compile"] is False
    assert set(result["breakdown_s_median"]) == {"data", "fwd_bwd", "optimizer"}
    assert result["peak_memory_bytes"] > 0
    assert 10 < result["loss_first"] < 11.5  # ~ln(50257): padded logits are excluded
