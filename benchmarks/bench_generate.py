"""Greedy generation speed of our model, with and without the KV cache; prints one JSON object.

    uv run benchmarks/bench_generate.py                                   # GPT-2 size, CPU
    uv run benchmarks/bench_generate.py --num_layers 4 --hidden_size 256 --num_heads 4

Random weights (speed does not depend on them), batch 1, fp32, no EOS stop so every run makes
exactly --new_tokens tokens. tokens/s = new tokens / wall time of train/sampling.generate_ids,
prompt prefill included; the median of --repeats runs after one warm-up run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from statistics import median

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))

from model import LlamaForTraining, ModelConfig  # noqa: E402
from sampling import generate_ids  # noqa: E402


def tokens_per_second(
    model: LlamaForTraining, prompt: list[int], new_tokens: int, use_cache: bool, repeats: int
) -> float:
    """Median tokens/s of greedy generate_ids over `repeats` runs, after one warm-up run."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        made = sum(1 for _ in generate_ids(model, prompt, new_tokens, 0, use_cache=use_cache))
        if model.lm_head.weight.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        assert made == new_tokens
    return new_tokens / median(times[1:])


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
        "kv_cache_tokens_per_s": round(
            tokens_per_second(model, prompt, args.new_tokens, True, args.repeats), 1
        ),
    }
    if not args.skip_no_cache:
        no_cache = tokens_per_second(model, prompt, args.new_tokens, False, args.repeats)
        result["no_cache_tokens_per_s"] = round(no_cache, 1)
        result["kv_cache_speedup"] = round(result["kv_cache_tokens_per_s"] / no_cache, 1)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
