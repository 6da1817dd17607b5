"""RMSNorm's gain inside F.rms_norm (model.py) against a separate multiply, forward + backward.

    uv run benchmarks/bench_rmsnorm.py [--shape 4 256 768] [--repeats 6] [--calls 50]

The two forms compute the same values; the fused one lets backends with a fused kernel (MPS)
apply the gain in the same pass. Rounds alternate the two forms so that a drift of the machine
hits both; it prints one JSON object with the median milliseconds per call of each form in fp32
and under bf16 autocast, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import time
from statistics import median

import torch
import torch.nn.functional as F


def time_calls(norm, x: torch.Tensor, grad: torch.Tensor, calls: int, bf16: bool) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = norm(x)
        y.backward(grad.to(y.dtype))
    return (time.perf_counter() - start) / calls * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shape", type=int, nargs=3, default=[4, 256, 768])
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--calls", type=int, default=50)
    args = p.parse_args()
    torch.manual_seed(0)
    width = args.shape[-1]
    weight = torch.ones(width, requires_grad=True)
    forms = {
        "gain_apart": lambda x: weight * F.rms_norm(x.float(), (width,), eps=1e-6).type_as(x),
        "gain_fused": lambda x: F.rms_norm(x.float(), (width,), weight, 1e-6).type_as(x),
    }
    grad = torch.randn(*args.shape)
    result = {"shape": args.shape, "threads": torch.get_num_threads()}
    for dtype in ("float32", "bfloat16"):
        x = torch.randn(*args.shape, dtype=getattr(torch, dtype), requires_grad=True)
        times: dict[str, list[float]] = {name: [] for name in forms}
        for _ in range(args.repeats):
            for name, norm in forms.items():
                times[name].append(time_calls(norm, x, grad, args.calls, dtype == "bfloat16"))
        ms = {name: round(median(t), 3) for name, t in times.items()}
        result[dtype] = {**ms, "fused_over_apart": round(ms["gain_fused"] / ms["gain_apart"], 3)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
