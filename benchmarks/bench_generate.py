"""Greedy generation speed of our model, with and without the KV cache; prints one JSON object.

    uv run benchmarks/bench_generate.py                                   # GPT-2 size, CPU
    uv run benchmarks/bench_generate.py --num_layers 4 --hidden_size 256 --num_heads 4

Random weights (speed does not depend on them), batch 1, fp32, no EOS stop so every run makes
exactly --new_tokens tokens. tokens/s = new tokens / wall time of train/sampling.generate_ids,
prompt prefill included; the best of --repeats runs after a short warm-up run. On a shared
machine other processes slow OpenMP threads severalfold: --wait_idle waits for a quiet moment,
and *_others_cpu reports the share of the machine's CPU other processes used during the best
run (near 0 means the number is clean).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))

from measure import cpu_busy_jiffies, wait_for_idle  # noqa: E402
from model import LlamaForTraining, ModelConfig  # noqa: E402
from owt.sampling import generate_ids  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def timed_generation(
    model: LlamaForTraining, prompt: list[int], new_tokens: int, use_cache: bool
) -> tuple[float, float]:
    """(wall seconds, share of the machine's CPU used by other processes) of one greedy run."""
    busy0, total0 = cpu_busy_jiffies()
    cpu0, start = time.process_time(), time.perf_counter()
    made = sum(1 for _ in generate_ids(model, prompt, new_tokens, 0, use_cache=use_cache))
    if model.lm_head.weight.is_cuda:
        torch.cuda.synchronize()
    wall, own_cpu = time.perf_counter() - start, time.process_time() - cpu0
    busy1, total1 = cpu_busy_jiffies()
    assert made == new_tokens
    others = ((busy1 - busy0) / CLOCK_TICKS - own_cpu) / max(1e-9, (total1 - total0) / CLOCK_TICKS)
    return wall, max(0.0, others)


def tokens_per_second(
    model: LlamaForTraining, prompt: list[int], new_tokens: int, use_cache: bool, repeats: int
) -> tuple[float, float]:
    """Best tokens/s of `repeats` greedy runs after a short warm-up, and that run's others share."""
    timed_generation(model, prompt, min(new_tokens, 8), use_cache)
    wall, others = min(
        timed_generation(model, prompt, new_tokens, use_cache) for _ in range(repeats)
    )
    return new_tokens / wall, others


def main(argv: list[str] | None = None) -> dict:
    defaults = ModelConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--num_layers", type=int, default=defaults.num_layers)
    p.add_argument("--hidden_size", type=int, default=defaults.hidden_size)
    p.add_argument("--num_heads", type=int, default=defaults.num_heads)
    p.add_argument("--vocab_size", type=int, default=defaults.vocab_size)
    p.add_argument("--prompt_tokens", type=int, default=32)
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip_no_cache", action="store_true", help="only time the KV-cache path")
    p.add_argument("--wait_idle", type=float, default=0, help="wait up to this many s for quiet")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
    )
    model = LlamaForTraining(config).to(args.device).eval()
    prompt = torch.randint(0, config.vocab_size, (args.prompt_tokens,)).tolist()
    result = {
        "device": args.device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "config": f"{config.num_layers}x{config.hidden_size}, {config.num_heads} heads, "
        f"vocab {config.vocab_size}, {model.num_parameters() / 1e6:.1f}M params",
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
    }
    for name, use_cache in [("kv_cache", True), ("no_cache", False)]:
        if use_cache or not args.skip_no_cache:
            if args.wait_idle:
                wait_for_idle(args.wait_idle)
            speed, others = tokens_per_second(
                model, prompt, args.new_tokens, use_cache, args.repeats
            )
            result[f"{name}_tokens_per_s"] = round(speed, 1)
            result[f"{name}_others_cpu"] = round(others, 2)
    if "no_cache_tokens_per_s" in result:
        speedup = result["kv_cache_tokens_per_s"] / result["no_cache_tokens_per_s"]
        result["kv_cache_speedup"] = round(speedup, 1)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
