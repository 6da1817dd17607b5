"""Throughput, MFU, time split and peak memory of pretrain.py's own training step on this device.

    uv run benchmarks/bench_train.py                      # the three reference shapes, CPU fp32
    uv run benchmarks/bench_train.py --compile off        # the same, eager
    uv run benchmarks/bench_train.py --shapes 12x768x1024x4 --steps 3     # one custom shape
    uv run benchmarks/bench_train.py --device cuda --dtype bf16
    uv run benchmarks/bench_train.py --gradient_accumulation_steps 4 --optimizer muon

What is timed is `Trainer.optimizer_step` (train/owt/trainer.py), the code pretrain.py runs each
step: its micro-batch accumulation, DDP/FSDP-free here, gradient clipping, the non-finite check
and the optimizer it builds (optim.build_optimizer), on a model built by pretraining.build_model,
compiled or not as pretrain.py decides by default (--compile auto: torch.compile on CUDA and on a
Linux CPU with a C++ compiler); compilation happens in the untimed warmup steps. The device is
picked in pretrain.py's order (--device auto: MPS, then CUDA, then CPU).

A shape is LAYERSxWIDTHxSEQxBATCH (heads = WIDTH/64; BATCH is the micro-batch, and each step
takes --gradient_accumulation_steps of them, default 1). Each shape runs in a fresh child
process (so allocator state and peak memory of one shape never leak into the next) that

  1. measures the device's matmul peak (2048^3, in this dtype and fp32) before and after the
     run, and in this dtype after every timed step (untimed),
  2. builds the TrainConfig, model and Trainer pretrain.py would for this shape,
  3. times `--steps` optimizer steps after `--warmup` steps, each split into
       data       the Trainer's windows of a np.memmap of uint16 random tokens -> int64
                  tensors on the device (owt.token_windows, devices.to_device)
       fwd_bwd    forward under autocast + backward, summed over the micro-batches
       optimizer  the rest of the step: grad clip, the finite check, optimizer step, zero_grad
     (the device is synchronized around each phase: owt.metrics.PhaseTimes),
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
--gradient_checkpointing, --adamw, --compile_embedding, --no_allocator_tuning, --threads.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

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
    p.add_argument(
        "--device", default="auto", help="auto (as pretrain.py: MPS, then CUDA, then CPU) or a name"
    )
    p.add_argument("--dtype", default="fp32", help="fp32 | bf16 | fp16 | auto (autocast dtype)")
    # pretrain.py's own flags, same names and help; one micro-batch per step unless asked.
    add_flags(p, "compile", "gradient_accumulation_steps", "optimizer", "grad_clip")
    add_flags(p, "gradient_checkpointing")
    p.set_defaults(gradient_accumulation_steps=1)
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
    p.add_argument(
        "--adamw",
        choices=["auto", "foreach", "fused", "forloop"],
        default="auto",
        help="AdamW implementation (auto: the Trainer's, optim.build_optimizer)",
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
    """A uint16 token file of random ids, read as pretrain.py reads its token cache (memmap)."""
    import numpy as np

    path = folder / "tokens.bin"
    rng = np.random.default_rng(seed)
    mm = np.memmap(path, dtype=np.uint16, mode="w+", shape=(n_tokens,))
    mm[:] = rng.integers(0, vocab, size=n_tokens, dtype=np.uint16)
    mm.flush()
    del mm
    return path


def make_optimizer(model: Any, device: Any, impl: str) -> Any:
    """(optimizer, implementation name): pretrain.py's for "auto", else the AdamW `impl`."""
    import torch

    from owt.optim import BETAS, build_optimizer, param_groups

    if impl == "auto":  # what pretrain.py uses
        optimizer = build_optimizer(model, 6e-4, 0.1, device.type)
        return optimizer, "fused" if optimizer.defaults["fused"] else "foreach"
    kwargs = {"fused": True} if impl == "fused" else {"foreach": impl == "foreach"}
    groups = param_groups(model, 0.1)
    return torch.optim.AdamW(groups, lr=6e-4, betas=BETAS, eps=1e-8, **kwargs), impl


def bench_config(
    args: argparse.Namespace, shape: dict[str, int], vocab: int, output_dir: Path, **settings: Any
) -> Any:
    """The TrainConfig pretrain.py would build for this shape and these flags (nothing is ever
    written to `output_dir`: the benchmark calls the step, never fit())."""
    from owt.config import TrainConfig

    d, T = shape["hidden_size"], shape["seq_len"]
    values = {
        "output_dir": str(output_dir), "vocab_size": vocab, "hidden_size": d,
        "num_layers": shape["num_layers"], "num_heads": d // 64,
        "max_position_embeddings": max(T, 1024), "max_length": T,
        "batch_size": shape["batch_size"],
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "optimizer": args.optimizer, "grad_clip": args.grad_clip,
        "gradient_checkpointing": args.gradient_checkpointing, "learning_rate": 6e-4,
        "seed": 0, "log_interval": 10**9, "eval_max_batches": 1,
    }  # fmt: skip
    return TrainConfig(**{**values, **settings}).validate()


def build_trainer(
    args: argparse.Namespace,
    config: Any,
    windows: tuple[Any, Any],
    device: Any,
    dtype: Any,
    compiled: bool,
) -> tuple[Any, str]:
    """pretrain.py's model and Trainer on `windows` (train, validation), with the variants the
    flags ask for; returns (trainer, AdamW implementation)."""
    import torch

    from owt.pretraining import build_model
    from owt.trainer import Trainer

    model = build_model(config, device)
    if args.fused_qkv:
        fuse_qkv(model)
    if args.pad_vocab:  # the Trainer calls model(x, y) -> (logits, loss)
        model.forward = lambda x, y, **_: (
            None, padded_vocab_forward(model, x, y, REAL_VOCAB, args.pad_mode)
        )  # fmt: skip
    trainer = Trainer(
        config, model, *windows, device=device, dtype=dtype,
        compile_model=compiled and not args.compile_embedding,
    )  # fmt: skip
    if compiled and args.compile_embedding:  # the whole model in the graph, embedding included
        trainer.step_model = torch.compile(model)
    impl = args.adamw
    if config.optimizer != "adamw":
        impl = config.optimizer
    elif impl != "auto":
        trainer.optimizer, impl = make_optimizer(model, device, impl)
    else:
        impl = "fused" if trainer.optimizer.defaults.get("fused") else "foreach"
    return trainer, impl


def trainer_steps(trainer: Any) -> Any:
    """The Trainer's own window order, epoch after epoch, as fit() walks it."""
    for epoch in itertools.count():
        yield from trainer.sampler.step_windows(epoch)


def peaks(args: argparse.Namespace, device: Any, dtype: Any) -> dict[str, float]:
    """The matmul peak in fp32 and in `dtype`, by dtype name ({} with --no_peak)."""
    import torch

    if args.no_peak:
        return {}
    out = {"fp32": measure.clean_matmul_peak(device, torch.float32, args.clean_threshold)}
    if dtype != torch.float32:
        name = str(dtype).removeprefix("torch.")
        out[name] = measure.clean_matmul_peak(device, dtype, args.clean_threshold)
    return out


def time_steps(args: argparse.Namespace, trainer: Any, dtype: Any) -> dict[str, Any]:
    """Time Trainer.optimizer_step, pretrain.py's step, `--warmup` steps then until `--steps`
    clean ones: per step its phases (data, fwd_bwd, the rest as optimizer), the foreign CPU
    share, and the matmul peak measured right after it (untimed)."""
    from owt.metrics import Metrics, PhaseTimes, StepLog

    device, steps = trainer.device, args.steps or 10
    quiet = Metrics(Path("."), enabled=False)
    log = StepLog(
        quiet, total_steps=None, start_step=0, tokens_per_step=trainer.tokens_per_step,
        interval=10**9, device=device, enabled=False,
    )  # fmt: skip
    trainer.phases = PhaseTimes(device)
    out: dict[str, Any] = {"times": {k: [] for k in ("data", "fwd_bwd", "optimizer", "step")}}
    out.update(foreign=[], step_peaks=[], losses=[], peak_cpu=[0.0, 0.0, 0.0])
    meter, windows = ForeignMeter(), trainer_steps(trainer)
    started = time.perf_counter()
    for step in range(args.warmup + (args.max_steps or 4 * steps)):
        if step == args.warmup:
            devices.synchronize(device)
            out["cpu0"], out["wall0"] = os.times(), time.perf_counter()
            out["warmup_s"] = out["wall0"] - started
        meter.start()
        t0 = time.perf_counter()
        out["losses"].append(trainer.optimizer_step(next(windows), log, quiet))
        devices.synchronize(device)
        step_s, phases = time.perf_counter() - t0, trainer.phases.take()
        if step < args.warmup:
            continue
        for name in ("data", "fwd_bwd"):
            out["times"][name].append(phases.get(name, 0.0))
        out["times"]["optimizer"].append(step_s - phases.get("data", 0) - phases.get("fwd_bwd", 0))
        out["times"]["step"].append(step_s)
        out["foreign"].append(meter.stop())
        if not args.no_peak:
            peak = measure.timed_matmul_peak(device, dtype, args.clean_threshold, out["peak_cpu"])
            out["step_peaks"].append(peak)
        if sum(f <= args.clean_threshold for f in out["foreign"]) >= steps:
            break
    out["wall"] = time.perf_counter() - out["wall0"] - out["peak_cpu"][0]
    out["cpu1"] = os.times()
    log.close()
    return out


def run_shape(args: argparse.Namespace, shape: dict[str, int]) -> dict[str, Any]:
    """Benchmark one shape in this process; return the result dict."""
    tuned = False if args.no_allocator_tuning else devices.tune_cpu_allocator()
    import torch

    from owt.token_windows import TokenWindows

    device = devices.resolve_device(args.device)  # pretrain.py's order: MPS, CUDA, CPU
    devices.setup_backend(device, args.threads or None)
    dtype = devices.resolve_dtype(device, args.dtype)
    peak_before = peaks(args, device, dtype)
    vocab = REAL_VOCAB
    if args.pad_vocab:
        vocab = -(-REAL_VOCAB // args.pad_vocab) * args.pad_vocab
    devices.reset_peak_memory(device)
    rss_base = devices.cpu_rss_bytes()
    compiled = devices.resolve_compile(device, args.compile)
    with tempfile.TemporaryDirectory() as tmp:
        config = bench_config(args, shape, vocab, Path(tmp))
        tokens = np.memmap(
            make_token_file(Path(tmp), args.data_tokens, REAL_VOCAB), dtype=np.uint16, mode="r"
        )
        windows = TokenWindows(tokens, config.max_length)
        trainer, adamw_impl = build_trainer(
            args, config, (windows, windows), device, dtype, compiled
        )
        run = time_steps(args, trainer, dtype)
        del tokens
    result = summarize(args, trainer, run, dtype, peak_before, peaks(args, device, dtype))
    result.update(
        vocab_size=vocab, compile=compiled, compile_embedding=compiled and args.compile_embedding,
        adamw=adamw_impl, allocator_tuned=tuned, threads=torch.get_num_threads(),
    )  # fmt: skip
    if compiled and args.warmup:
        result["warmup_s_incl_compile"] = round(run["warmup_s"], 2)
    if device.type == "cpu":
        result["peak_memory_over_baseline_bytes"] = result["peak_memory_bytes"] - rss_base
    return result


def summarize(
    args: argparse.Namespace,
    trainer: Any,
    run: dict[str, Any],
    dtype: Any,
    peak_before: dict[str, float],
    peak_after: dict[str, float],
) -> dict[str, Any]:
    """The JSON of one shape: speed and MFU over the clean steps, the phase split, memory."""
    config, device = trainer.config, trainer.device
    # The real vocabulary, so --pad_vocab never inflates MFU.
    flops_per_token = measure.model_flops_per_token(
        replace(trainer.model.config, vocab_size=REAL_VOCAB), config.max_length
    )
    foreign, tokens_per_step = run["foreign"], trainer.tokens_per_step
    # Statistics over the clean steps if at least 3 were clean, else over all (flagged).
    clean = [i for i, f in enumerate(foreign) if f <= args.clean_threshold]
    use = clean if len(clean) >= 3 else list(range(len(foreign)))
    times = {k: [v[i] for i in use] for k, v in run["times"].items()}
    step_med = median(times["step"])
    achieved = flops_per_token * tokens_per_step / step_med
    losses = [loss for loss in run["losses"] if loss is not None]
    cpu0, cpu1, (_, peak_user, peak_system) = run["cpu0"], run["cpu1"], run["peak_cpu"]
    user, system = cpu1.user - cpu0.user - peak_user, cpu1.system - cpu0.system - peak_system
    result: dict[str, Any] = {
        "shape": f"{config.num_layers}x{config.hidden_size}x{config.max_length}x"
        f"{config.batch_size}",
        "num_layers": config.num_layers, "hidden_size": config.hidden_size,
        "num_heads": config.num_heads, "seq_len": config.max_length,
        "batch_size": config.batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "optimizer": config.optimizer, "grad_clip": config.grad_clip,
        "step": "Trainer.optimizer_step (train/owt/trainer.py), as pretrain.py runs it",
        "device": str(device), "dtype": str(dtype).removeprefix("torch."),
        "pad_mode": args.pad_mode, "fused_qkv": args.fused_qkv,
        "gradient_checkpointing": config.gradient_checkpointing,
        "params": trainer.model.num_parameters(),
        "steps": len(foreign), "clean_steps": len(clean),
        "stats_over": "clean steps" if len(use) == len(clean) else "all steps (disturbed)",
        "warmup": args.warmup,
        "tokens_per_s": round(tokens_per_step / step_med, 1),
        "tokens_per_s_mean_all_steps": round(tokens_per_step * len(foreign) / run["wall"], 1),
        "model_flops_per_token": flops_per_token,
        "achieved_tflops": round(achieved / 1e12, 4),
        "step_s_median": round(step_med, 4), "step_s_min": round(min(times["step"]), 4),
        "breakdown_s_median": {k: round(median(v), 5) for k, v in times.items() if k != "step"},
        "breakdown_frac": {
            k: round(sum(v) / sum(times["step"]), 4) for k, v in times.items() if k != "step"
        },
        "cpu_system_frac": round(system / max(1e-9, user + system), 4),
        # Share of the machine's CPU time used by other processes during the timed steps.
        "foreign_cpu_frac_median": round(median(foreign), 4),
        "foreign_cpu_frac_used_steps": round(max(foreign[i] for i in use), 4),
        "loss_first": round(losses[0].item(), 4), "loss_last": round(losses[-1].item(), 4),
        "peak_memory_bytes": devices.peak_memory_bytes(device),
        "load_avg": os.getloadavg()[0],
    }  # fmt: skip
    # Each step's FLOP/s over the peak measured right after it: numerator and denominator see
    # the same machine, so drift of a shared VM's speed during the run cancels out.
    pairs = [
        (run["times"]["step"][i], run["step_peaks"][i])
        for i in use
        if run["step_peaks"] and run["step_peaks"][i]
    ]
    paired_mfu = [flops_per_token * tokens_per_step / step_s / peak for step_s, peak in pairs]
    add_mfu(result, achieved, dtype, peak_before, peak_after, paired_mfu, [p for _, p in pairs])
    return result


def add_mfu(
    result: dict[str, Any],
    achieved: float,
    dtype: Any,
    peak_before: dict[str, float],
    peak_after: dict[str, float],
    paired_mfu: list[float],
    paired_peaks: list[float],
) -> None:
    """MFU against the measured peaks (paired per step when there are 3 or more clean pairs),
    against the fp32 peak for reduced precision, and against the vendor's data-sheet peak."""
    import torch

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
    if peak_before:
        mfu_key = str(dtype).removeprefix("torch.") if dtype != torch.float32 else "fp32"
        best = result[f"matmul_peak_tflops_{mfu_key}"] * 1e12
        # Against the best peak seen before or after the run (the yardstick before pairing).
        result["mfu_vs_best_peak"] = result["mfu"] = round(achieved / best, 4)
        if len(paired_mfu) >= 3:  # the headline: each step against the peak measured after it
            result["mfu"] = round(median(paired_mfu), 4)
            result["mfu_stats_over"] = f"{len(paired_mfu)} steps, each against its own peak"
            result[f"matmul_peak_tflops_{mfu_key}_during_median"] = round(
                median(paired_peaks) / 1e12, 4
            )
        if dtype != torch.float32:  # also against the fp32 peak, the same yardstick as fp32 runs
            fp32 = result["matmul_peak_tflops_fp32"] * 1e12
            result["mfu_vs_fp32_peak"] = round(achieved / fp32, 4)
    vendor = measure.vendor_peak_flops(torch.device(result["device"]), dtype)
    if vendor:
        result["vendor_peak_tflops"] = vendor / 1e12
        result["mfu_vs_vendor_peak"] = round(achieved / vendor, 4)


def english_tokens() -> Any:
    """Python's documentation (textdata.py) encoded with the real GPT-2 tokenizer."""
    from transformers import AutoTokenizer

    from textdata import english_documents, save_gpt2_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = AutoTokenizer.from_pretrained(save_gpt2_tokenizer(Path(tmp)))
    ids: list[int] = []
    for doc in english_documents():
        ids += tokenizer(doc)["input_ids"] + [tokenizer.eos_token_id]
    return np.asarray(ids, dtype=np.int64)


def loss_curves(args: argparse.Namespace) -> dict[str, Any]:
    """Train the same model from the same init on the same windows once per dtype, eagerly,
    with the Trainer's step.

    90% of the tokens train (the Trainer's seeded window order, the same for every dtype), the
    last 10% validate. AdamW lr 1e-3, 10 warmup steps then cosine to 1e-4, grad clip 1.0. Returns
    per-step train losses, validation losses every 25 steps and the median step time per dtype.
    """
    tuned = False if args.no_allocator_tuning else devices.tune_cpu_allocator()
    import torch

    from owt.token_windows import TokenWindows

    device = devices.resolve_device(args.device)
    devices.setup_backend(device, args.threads or None)
    shape = parse_shape(args.shapes[0] if args.shapes != DEFAULT_SHAPES else "4x256x256x8")
    tokens = english_tokens()
    split = int(0.9 * len(tokens))
    T = shape["seq_len"]
    train, val = TokenWindows(tokens[:split], T), TokenWindows(tokens[split:], T)
    out: dict[str, Any] = {
        "shape": "x".join(str(v) for v in shape.values()),
        "steps": args.loss_curves, "train_tokens": split, "val_tokens": len(tokens) - split,
        "allocator_tuned": tuned, "threads": torch.get_num_threads(), "runs": {},
    }  # fmt: skip
    for name in args.compare_dtypes:
        dtype = devices.resolve_dtype(device, name)
        with tempfile.TemporaryDirectory() as tmp:
            config = bench_config(
                args, shape, REAL_VOCAB, Path(tmp), seed=args.seed, learning_rate=1e-3,
                max_steps=args.loss_curves, num_epochs=10**6, warmup_steps=10, min_lr_ratio=0.1,
                eval_max_batches=32,
            )  # fmt: skip
            trainer, _ = build_trainer(args, config, (train, val), device, dtype, compiled=False)
            run = curve(trainer, args.loss_curves)
        out["runs"][str(dtype).removeprefix("torch.")] = run
        print(json.dumps({name: run["val_loss"]}), file=sys.stderr, flush=True)
    return out


def curve(trainer: Any, steps: int) -> dict[str, Any]:
    """`steps` Trainer steps: train losses, validation every 25 steps, the median step time."""
    from owt.metrics import Metrics, StepLog

    quiet = Metrics(Path("."), enabled=False)
    log = StepLog(
        quiet, total_steps=None, start_step=0, tokens_per_step=trainer.tokens_per_step,
        interval=10**9, device=trainer.device, enabled=False,
    )  # fmt: skip
    losses, val_losses, step_times = [], {0: trainer.evaluate().loss}, []
    for step, indices in zip(range(steps), trainer_steps(trainer), strict=False):
        t0 = time.perf_counter()
        loss = trainer.optimizer_step(indices, log, quiet)
        devices.synchronize(trainer.device)
        step_times.append(time.perf_counter() - t0)
        losses.append(None if loss is None else round(loss.item(), 4))
        if (step + 1) % 25 == 0 or step + 1 == steps:
            val_losses[step + 1] = trainer.evaluate().loss
    log.close()
    typical = median(step_times[5:] or step_times)
    return {
        "train_loss": losses,
        "val_loss": {k: round(v, 4) for k, v in val_losses.items()},
        "step_s_median": round(typical, 4),
        "tokens_per_s": round(trainer.tokens_per_step / typical, 1),
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.loss_curves:
        if args.wait_idle:
            wait_for_idle(args.wait_idle)
        measure.report(loss_curves(args), args.out)
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
    measure.report(report, args.out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
