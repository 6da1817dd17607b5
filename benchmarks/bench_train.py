"""Training-step throughput, MFU, time breakdown and peak memory of our model on this device.

    uv run benchmarks/bench_train.py                      # the three reference shapes, CPU fp32
    uv run benchmarks/bench_train.py --compile off        # the same, eager
    uv run benchmarks/bench_train.py --shapes 12x768x1024x4 --steps 3     # one custom shape
    uv run benchmarks/bench_train.py --device cuda --dtype bf16

The model is compiled or not as pretrain.py decides by default (--compile auto: torch.compile on
CUDA and on a Linux CPU with a C++ compiler); compilation happens in the untimed warmup steps.
(--loss_curves always runs eagerly.)

A shape is LAYERSxWIDTHxSEQxBATCH (heads = WIDTH/64). Each shape runs in a fresh child process
(so allocator state and peak memory of one shape never leak into the next) that

  1. measures the device's matmul peak (2048^3, in this dtype and fp32) before and after the
     run, and in this dtype after every timed step (untimed),
  2. builds the real model (train/model.py) and AdamW (decay on 2-D weights only, grad clip 1.0),
  3. times `--steps` training steps after `--warmup` steps, each split into
       data       random crops of a np.memmap of uint16 tokens -> int64 tensors on the device
                  (pinned + non_blocking on CUDA), as a memmap loader does
       fwd_bwd    forward under autocast + backward
       optimizer  grad clip + AdamW step + zero_grad
  4. prints one JSON object: tokens/s, MFU against the measured peak, per-phase medians, peak
     memory (CPU: peak RSS, also minus the RSS before the model was built).

MFU = model FLOPs/token x tokens/s / peak, with model FLOPs/token = 6N + 12*L*H*Q*T
(measure.py:model_flops_per_token: N = all weights, tied embedding counted once as the LM
head; the real vocabulary 50257 even when --pad_vocab pads it). "mfu" is the median over the
timed steps of each step's FLOP/s divided by the peak measured right after that step: a shared
VM's speed drifts by a few percent within a run (as do turbo clocks), and pairing cancels that.
"mfu_vs_best_peak" divides the median step by the best peak seen before or after the run.
Steps or peaks disturbed by other processes are left out of both (if at least 3 steps were
clean; otherwise all steps are used and the JSON says so).

Flags that try changes to model.py/pretrain.py without editing them (see --help):
--pad_vocab (with the materialised-logits loss lm_loss.py replaced), --fused_qkv,
--gradient_checkpointing, --adamw, --no_allocator_tuning, --threads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from statistics import median
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "train"))

import measure  # noqa: E402
from measure import ForeignMeter, wait_for_idle  # noqa: E402
from owt import devices  # noqa: E402  (tune the allocator before torch allocates anything large)
from owt.config import add_flags  # noqa: E402

DEFAULT_SHAPES = ["4x256x256x8", "6x384x256x8", "12x768x256x4"]
REAL_VOCAB = 50257


def parse_shape(text: str) -> dict[str, int]:
    try:
        layers, width, seq, batch = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"shape {text!r} is not LAYERSxWIDTHxSEQxBATCH") from exc
    if width % 64:
        raise argparse.ArgumentTypeError(f"width {width} is not a multiple of 64 (head dim)")
    return {"num_layers": layers, "hidden_size": width, "seq_len": seq, "batch_size": batch}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.add_argument("--dtype", default="fp32", help="fp32 | bf16 | fp16 | auto (autocast dtype)")
    add_flags(p, "compile")
    p.add_argument(
        "--compile_embedding",
        action="store_true",
        help="compile the token embedding too (faster by what this measures, not reproducible)",
    )
    p.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, help="LAYERSxWIDTHxSEQxBATCH")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument(
        "--max_steps",
        type=int,
        default=0,
        help="on a busy machine, keep stepping until --steps clean steps or this many (0: 4x)",
    )
    p.add_argument(
        "--clean_threshold",
        type=float,
        default=0.05,
        help="a step is clean if other processes used at most this share of the CPUs",
    )
    p.add_argument(
        "--pad_vocab", type=int, default=0, help="pad the vocab to a multiple of this (0: off)"
    )
    p.add_argument(
        "--pad_mode",
        choices=["slice", "mask"],
        default="slice",
        help="padded logits: slice to the real vocab, or fill them with -inf",
    )
    p.add_argument("--fused_qkv", action="store_true", help="one (3d x d) QKV matmul")
    p.add_argument("--gradient_checkpointing", action="store_true", help="recompute blocks")
    p.add_argument(
        "--adamw",
        choices=["auto", "foreach", "fused", "forloop"],
        default="auto",
        help="AdamW implementation (auto: as pretrain.py, optim.build_optimizer)",
    )
    p.add_argument(
        "--no_allocator_tuning",
        action="store_true",
        help="glibc malloc defaults, no huge pages (skip devices.tune_cpu_allocator)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: default)")
    p.add_argument("--no_peak", action="store_true", help="skip the matmul peak measurement")
    p.add_argument(
        "--wait_idle",
        type=float,
        default=0,
        help="before each shape, wait up to this many seconds for other processes to go idle",
    )
    p.add_argument(
        "--data_tokens", type=int, default=16 * 2**20, help="size of the random token memmap"
    )
    p.add_argument(
        "--loss_curves",
        type=int,
        default=0,
        metavar="STEPS",
        help="instead: train the first shape STEPS steps on real English (Python's docs, GPT-2\n"
        "tokenizer) once per --compare_dtypes and print both loss curves and step times",
    )
    p.add_argument("--compare_dtypes", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--seed", type=int, default=0, help="--loss_curves: init and batch order")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--in_process", action="store_true", help="no child processes (debugging)")
    return p


# --------------------------------------------------------------------------------------------
# Local variants of model.py, used only when a flag asks for them.


def fuse_qkv(model: Any) -> None:
    """Replace q/k/v projections by one Linear(d, 3d) per layer holding the same weights."""
    import torch
    import torch.nn as nn

    from model import apply_rope, causal_self_attention

    for block in model.model.layers:
        attn = block.self_attn
        d = attn.q_proj.in_features
        qkv = nn.Linear(d, 3 * d, bias=False).to(attn.q_proj.weight.device)
        with torch.no_grad():
            qkv.weight.copy_(
                torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
            )
        del attn.q_proj, attn.k_proj, attn.v_proj
        attn.qkv_proj = qkv

        def forward(x, cos, sin, kv=None, start=0, attn=attn):
            if kv is not None:
                raise NotImplementedError("the fused-QKV benchmark variant has no KV cache")
            B, T, C = x.shape
            q, k, v = (
                attn.qkv_proj(x).view(B, T, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
            )
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            y = causal_self_attention(q, k, v)  # the model's own, so only the projection differs
            return attn.o_proj(y.transpose(1, 2).reshape(B, T, C))

        attn.forward = forward


def padded_vocab_forward(
    model: Any, input_ids: Any, targets: Any, real_vocab: int, pad_mode: str = "slice"
) -> Any:
    """The pre-lm_loss path with a padded vocabulary: materialised logits + F.cross_entropy.

    Returns the loss only. Padded logits are sliced off (or set to -inf) before the
    cross-entropy, so the loss equals the unpadded model's for the same weights.
    """
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    T = input_ids.size(1)
    cos, sin = model.rope_cos[:T], model.rope_sin[:T]
    x = model.model.embed_tokens(input_ids)
    for block in model.model.layers:
        if model.gradient_checkpointing and torch.is_grad_enabled():
            x = checkpoint(block, x, cos, sin, use_reentrant=False)
        else:
            x = block(x, cos, sin)
    logits = model.lm_head(model.model.norm(x))
    if pad_mode == "slice":
        logits = logits[..., :real_vocab]
    else:
        logits = logits.masked_fill(
            torch.arange(logits.size(-1), device=logits.device) >= real_vocab, float("-inf")
        )
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))


# --------------------------------------------------------------------------------------------


def make_token_file(folder: Path, n_tokens: int, vocab: int, seed: int = 0) -> Path:
    import numpy as np

    path = folder / "tokens.bin"
    rng = np.random.default_rng(seed)
    mm = np.memmap(path, dtype=np.uint16, mode="w+", shape=(n_tokens,))
    mm[:] = rng.integers(0, vocab, size=n_tokens, dtype=np.uint16)
    mm.flush()
    del mm
    return path


def make_get_batch(path: Path, batch_size: int, seq_len: int, device: Any, seed: int = 0):
    """nanoGPT-style loader: re-open the memmap per batch (no leak), random crops, int64."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    pin = device.type == "cuda"

    def get_batch():
        data = np.memmap(path, dtype=np.uint16, mode="r")
        ix = rng.integers(0, len(data) - seq_len - 1, size=batch_size)
        rows = np.stack([data[i : i + seq_len + 1] for i in ix]).astype(np.int64)
        xy = torch.from_numpy(rows)
        if pin:
            xy = xy.pin_memory()
        xy = xy.to(device, non_blocking=True)
        return xy[:, :-1], xy[:, 1:]

    return get_batch


def make_optimizer(model: Any, device: Any, impl: str) -> Any:
    import torch

    from owt.optim import BETAS, build_optimizer, param_groups

    if impl == "auto":  # what pretrain.py uses
        optimizer = build_optimizer(model, 6e-4, 0.1, device.type)
        return optimizer, "fused" if optimizer.defaults["fused"] else "foreach"
    kwargs = {"fused": True} if impl == "fused" else {"foreach": impl == "foreach"}
    groups = param_groups(model, 0.1)
    return torch.optim.AdamW(groups, lr=6e-4, betas=BETAS, eps=1e-8, **kwargs), impl


def run_shape(args: argparse.Namespace, shape: dict[str, int]) -> dict[str, Any]:
    """Benchmark one shape in this process; return the result dict."""
    tuned = False if args.no_allocator_tuning else devices.tune_cpu_allocator()
    import torch

    from model import LlamaForTraining, ModelConfig

    if args.device == "auto":
        device = torch.device(
            "cuda"
            if torch.cuda.is_available()
            else "mps"
            if torch.backends.mps.is_available()
            else "cpu"
        )
    else:
        device = torch.device(args.device)
    devices.setup_backend(device, args.threads or None)
    dtype = devices.resolve_dtype(device, args.dtype)
    L, d, T, B = shape["num_layers"], shape["hidden_size"], shape["seq_len"], shape["batch_size"]
    steps = args.steps or 10

    def clean_peak(peak_dtype: Any, tries: int = 8, wanted: int = 3) -> float:
        """Best matmul peak over clean measurements (best overall if none was clean)."""
        clean, dirty = [], []
        meter = ForeignMeter()
        for _ in range(tries):
            meter.start()
            flops = measure.measure_matmul_peak(device, peak_dtype, repeats=1, min_seconds=0.3)
            (clean if meter.stop() <= args.clean_threshold else dirty).append(flops)
            if len(clean) >= wanted:
                break
        return max(clean) if clean else -max(dirty)  # negative: no clean measurement

    def peaks() -> dict[str, float]:
        out = {"fp32": clean_peak(torch.float32)}
        if dtype != torch.float32:
            out[str(dtype).removeprefix("torch.")] = clean_peak(dtype)
        return out

    peak_before = {} if args.no_peak else peaks()

    vocab = REAL_VOCAB
    if args.pad_vocab:
        vocab = -(-REAL_VOCAB // args.pad_vocab) * args.pad_vocab
    torch.manual_seed(0)
    devices.reset_peak_memory(device)
    rss_base = devices.cpu_rss_bytes()
    config = ModelConfig(
        vocab_size=vocab,
        hidden_size=d,
        num_layers=L,
        num_heads=d // 64,
        max_position_embeddings=max(T, 1024),
    )
    model = LlamaForTraining(config).to(device)
    if args.fused_qkv:
        fuse_qkv(model)
    model.train()
    model.gradient_checkpointing = args.gradient_checkpointing
    optimizer, adamw_impl = make_optimizer(model, device, args.adamw)

    def loss_fn(x, y):
        if args.pad_vocab:
            return padded_vocab_forward(model, x, y, REAL_VOCAB, args.pad_mode)
        return model(x, y)[1]

    compiled = devices.resolve_compile(device, args.compile)
    if compiled:
        # As pretrain.py compiles (the embedding eagerly), unless --compile_embedding.
        compile_step = (
            torch.compile
            if args.compile_embedding
            else partial(devices.compile_for_training, model)
        )
        loss_fn = compile_step(loss_fn)

    with tempfile.TemporaryDirectory() as tmp:
        token_file = make_token_file(Path(tmp), args.data_tokens, REAL_VOCAB)
        get_batch = make_get_batch(token_file, B, T, device)
        times: dict[str, list[float]] = {"data": [], "fwd_bwd": [], "optimizer": [], "step": []}
        foreign: list[float] = []
        step_peaks: list[float | None] = []  # matmul peak right after each timed step, if clean
        peak_wall = peak_user = peak_system = 0.0  # time spent in those, left out of totals
        losses = []
        max_steps = args.max_steps or 4 * steps
        meter = ForeignMeter()
        t_compile = time.perf_counter()
        step = 0
        while step < args.warmup + max_steps:
            if step == args.warmup:
                devices.synchronize(device)
                cpu0, wall0 = os.times(), time.perf_counter()
                if step:
                    t_compile = time.perf_counter() - t_compile
            meter.start()
            t0 = time.perf_counter()
            x, y = get_batch()
            devices.synchronize(device)
            t1 = time.perf_counter()
            with devices.autocast(device, dtype):
                loss = loss_fn(x, y)
            loss.backward()
            devices.synchronize(device)
            t2 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            devices.synchronize(device)
            t3 = time.perf_counter()
            losses.append(loss.detach())
            if step >= args.warmup:
                for k, v in (("data", t1 - t0), ("fwd_bwd", t2 - t1), ("optimizer", t3 - t2)):
                    times[k].append(v)
                times["step"].append(t3 - t0)
                foreign.append(meter.stop())
                if not args.no_peak:
                    c0, w0 = os.times(), time.perf_counter()
                    meter.start()
                    flops = measure.measure_matmul_peak(device, dtype, repeats=3, min_seconds=0.1)
                    step_peaks.append(flops if meter.stop() <= args.clean_threshold else None)
                    peak_wall += time.perf_counter() - w0
                    c1 = os.times()
                    peak_user += c1.user - c0.user
                    peak_system += c1.system - c0.system
                if sum(f <= args.clean_threshold for f in foreign) >= steps:
                    break
            step += 1
        wall = time.perf_counter() - wall0 - peak_wall
        cpu1 = os.times()

    # The real vocabulary, so --pad_vocab never inflates MFU.
    flops_per_token = measure.model_flops_per_token(replace(config, vocab_size=REAL_VOCAB), T)
    # Statistics over the clean steps if at least 3 were clean, else over all (flagged).
    clean = [i for i, f in enumerate(foreign) if f <= args.clean_threshold]
    use = clean if len(clean) >= 3 else list(range(len(foreign)))
    # Each step's FLOP/s over the peak measured right after it: numerator and denominator see
    # the same machine, so drift of a shared VM's speed during the run cancels out.
    pairs = [(times["step"][i], step_peaks[i]) for i in use if step_peaks and step_peaks[i]]
    paired_peaks = [peak for _, peak in pairs]
    paired_mfu = [B * T * flops_per_token / step_s / peak for step_s, peak in pairs]
    times = {k: [v[i] for i in use] for k, v in times.items()}

    peak_mem = devices.peak_memory_bytes(device)
    peak_after = {} if args.no_peak else peaks()
    tokens_per_step = B * T
    step_med = median(times["step"])
    tokens_per_s = tokens_per_step / step_med
    achieved = flops_per_token * tokens_per_s
    result: dict[str, Any] = {
        "shape": f"{L}x{d}x{T}x{B}",
        "num_layers": L,
        "hidden_size": d,
        "num_heads": d // 64,
        "seq_len": T,
        "batch_size": B,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "compile": compiled,
        "compile_embedding": compiled and args.compile_embedding,
        "vocab_size": vocab,
        "pad_mode": args.pad_mode,
        "fused_qkv": args.fused_qkv,
        "gradient_checkpointing": args.gradient_checkpointing,
        "adamw": adamw_impl,
        "allocator_tuned": tuned,
        "threads": torch.get_num_threads(),
        "params": model.num_parameters(),
        "steps": len(foreign),
        "clean_steps": len(clean),
        "stats_over": "clean steps" if len(use) == len(clean) else "all steps (disturbed)",
        "warmup": args.warmup,
        "tokens_per_s": round(tokens_per_s, 1),
        "tokens_per_s_mean_all_steps": round(tokens_per_step * len(foreign) / wall, 1),
        "model_flops_per_token": flops_per_token,
        "achieved_tflops": round(achieved / 1e12, 4),
        "step_s_median": round(step_med, 4),
        "step_s_min": round(min(times["step"]), 4),
        "breakdown_s_median": {k: round(median(v), 5) for k, v in times.items() if k != "step"},
        "breakdown_frac": {
            k: round(sum(v) / sum(times["step"]), 4) for k, v in times.items() if k != "step"
        },
        "cpu_system_frac": round(
            (cpu1.system - cpu0.system - peak_system)
            / max(
                1e-9,
                (cpu1.user - cpu0.user - peak_user) + (cpu1.system - cpu0.system - peak_system),
            ),
            4,
        ),
        # Share of the machine's CPU time used by other processes during the timed steps.
        "foreign_cpu_frac_median": round(median(foreign), 4),
        "foreign_cpu_frac_used_steps": round(max(foreign[i] for i in use), 4),
        "loss_first": round(losses[0].item(), 4),
        "loss_last": round(losses[-1].item(), 4),
        "peak_memory_bytes": peak_mem,
        "load_avg": os.getloadavg()[0],
    }
    if compiled and args.warmup:
        result["warmup_s_incl_compile"] = round(t_compile, 2)
    if device.type == "cpu":
        result["peak_memory_over_baseline_bytes"] = peak_mem - rss_base
    if peak_before:
        for name in peak_before:
            pair = (peak_before[name], peak_after[name])
            if max(pair) < 0:  # neither measurement was clean
                result["matmul_peak_disturbed"] = True
            peak = max(pair) if max(pair) > 0 else max(abs(v) for v in pair)
            result[f"matmul_peak_tflops_{name}"] = round(peak / 1e12, 4)
            result[f"matmul_peak_tflops_{name}_before_after"] = [
                round(abs(peak_before[name]) / 1e12, 4),
                round(abs(peak_after[name]) / 1e12, 4),
            ]
        mfu_key = str(dtype).removeprefix("torch.") if dtype != torch.float32 else "fp32"
        best = result[f"matmul_peak_tflops_{mfu_key}"] * 1e12
        # Against the best peak seen before or after the run (the yardstick before pairing).
        result["mfu_vs_best_peak"] = round(achieved / best, 4)
        result["mfu"] = result["mfu_vs_best_peak"]
        if len(paired_mfu) >= 3:  # the headline: each step against the peak measured after it
            result["mfu"] = round(median(paired_mfu), 4)
            result["mfu_stats_over"] = f"{len(paired_mfu)} steps, each against its own peak"
            result[f"matmul_peak_tflops_{mfu_key}_during_median"] = round(
                median(paired_peaks) / 1e12, 4
            )
        if dtype != torch.float32:  # also against the fp32 peak, the same yardstick as fp32 runs
            result["mfu_vs_fp32_peak"] = round(
                achieved / (result["matmul_peak_tflops_fp32"] * 1e12), 4
            )
    vendor = measure.vendor_peak_flops(device, dtype)
    if vendor:
        result["vendor_peak_tflops"] = vendor / 1e12
        result["mfu_vs_vendor_peak"] = round(achieved / vendor, 4)
    return result


def english_tokens() -> Any:
    """Python's documentation (tests/textdata.py) encoded with the real GPT-2 tokenizer."""
    import numpy as np

    sys.path.insert(0, str(REPO / "tests"))
    from transformers import AutoTokenizer

    from textdata import english_documents, save_gpt2_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = AutoTokenizer.from_pretrained(save_gpt2_tokenizer(Path(tmp)))
    ids: list[int] = []
    for doc in english_documents():
        ids += tokenizer(doc)["input_ids"] + [tokenizer.eos_token_id]
    return np.asarray(ids, dtype=np.int64)


def loss_curves(args: argparse.Namespace) -> dict[str, Any]:
    """Train the same model from the same init on the same batches once per dtype, eagerly.

    90% of the tokens train (random crops, same order for every dtype), the last 10% validate.
    AdamW lr 1e-3, 10 warmup steps then cosine to 1e-4, grad clip 1.0. Returns per-step train
    losses, validation losses every 25 steps and the median step time for each dtype.
    """
    tuned = False if args.no_allocator_tuning else devices.tune_cpu_allocator()
    import math

    import numpy as np
    import torch

    from model import LlamaForTraining, ModelConfig

    device = torch.device("cpu" if args.device == "auto" else args.device)
    devices.setup_backend(device, args.threads or None)
    shape = parse_shape(args.shapes[0] if args.shapes != DEFAULT_SHAPES else "4x256x256x8")
    L, d, T, B = shape["num_layers"], shape["hidden_size"], shape["seq_len"], shape["batch_size"]
    tokens = english_tokens()
    split = int(0.9 * len(tokens))
    train, val = torch.from_numpy(tokens[:split]), torch.from_numpy(tokens[split:])
    steps = args.loss_curves
    rng = np.random.default_rng(args.seed)
    starts = rng.integers(0, len(train) - T - 1, size=(steps, B))
    val_starts = np.arange(0, len(val) - T - 1, T)[:32]
    out: dict[str, Any] = {
        "shape": f"{L}x{d}x{T}x{B}",
        "steps": steps,
        "train_tokens": split,
        "val_tokens": len(val),
        "allocator_tuned": tuned,
        "threads": torch.get_num_threads(),
        "runs": {},
    }

    def lr_at(step: int) -> float:
        if step < 10:
            return 1e-3 * (step + 1) / 10
        progress = (step - 10) / max(1, steps - 10)
        return 1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * progress))

    for name in args.compare_dtypes:
        dtype = devices.resolve_dtype(device, name)
        torch.manual_seed(args.seed)
        config = ModelConfig(
            hidden_size=d, num_layers=L, num_heads=d // 64, max_position_embeddings=max(T, 1024)
        )
        model = LlamaForTraining(config).to(device)
        optimizer, _ = make_optimizer(model, device, args.adamw)

        def evaluate(model=model, dtype=dtype) -> float:
            model.eval()
            with torch.no_grad(), devices.autocast(device, dtype):
                xs = torch.stack([val[i : i + T + 1] for i in val_starts]).to(device)
                loss = model(xs[:, :-1], xs[:, 1:])[1].item()
            model.train()
            return loss

        losses, val_losses, step_times = [], {0: evaluate()}, []
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            t0 = time.perf_counter()
            xy = torch.stack([train[i : i + T + 1] for i in starts[step]]).to(device)
            with devices.autocast(device, dtype):
                loss = model(xy[:, :-1], xy[:, 1:])[1]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step_times.append(time.perf_counter() - t0)
            losses.append(round(loss.item(), 4))
            if (step + 1) % 25 == 0 or step + 1 == steps:
                val_losses[step + 1] = evaluate()
        out["runs"][str(dtype).removeprefix("torch.")] = {
            "train_loss": losses,
            "val_loss": {k: round(v, 4) for k, v in val_losses.items()},
            "step_s_median": round(median(step_times[5:] or step_times), 4),
            "tokens_per_s": round(B * T / median(step_times[5:] or step_times), 1),
        }
        print(
            json.dumps({name: out["runs"][str(dtype).removeprefix("torch.")]["val_loss"]}),
            file=sys.stderr,
            flush=True,
        )
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.loss_curves:
        if args.wait_idle:
            wait_for_idle(args.wait_idle)
        text = json.dumps(loss_curves(args))
        print(text)
        if args.out:
            args.out.write_text(text + "\n")
        return 0
    if args.child:
        print(json.dumps(run_shape(args, parse_shape(args.child))))
        return 0
    results = []
    for text in args.shapes:
        shape = parse_shape(text)
        if args.wait_idle:
            wait_for_idle(args.wait_idle)
        if args.in_process:
            results.append(run_shape(args, shape))
        else:
            cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])]
            cmd += ["--child", text]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                sys.stderr.write(proc.stderr)
                raise SystemExit(f"shape {text} failed (exit {proc.returncode})")
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    import torch

    report = {
        "torch": torch.__version__,
        "argv": sys.argv[1:] if argv is None else argv,
        "cpu_count": os.cpu_count(),
        "results": results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
