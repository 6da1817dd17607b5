"""Where a training step's time goes, op by op: torch.profiler over a few steps of the real model.

    uv run benchmarks/profile_step.py                       # 124M, T 256, batch 4, bf16, compiled
    uv run benchmarks/profile_step.py --dtype fp32 --compile off --shape 4x256x256x8

The step is pretrain.py's (lm_loss, fused AdamW, grad clip 1.0, autocast as --dtype says,
compiled as pretrain.py compiles). It prints one JSON object: the step time, the share of the
profiled CPU time in each kind of work (matmuls, attention, the compiled fused kernels, the
optimizer, the rest) and the top ops by self time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))

from owt import devices  # noqa: E402  (before torch allocates anything large)

devices.tune_cpu_allocator()

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from model import LlamaForTraining, ModelConfig  # noqa: E402
from owt.optim import build_optimizer  # noqa: E402

KINDS = {  # substring of an op's name -> the kind of work it is
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "mkldnn", "onednn"),
    "attention": ("attention", "sdpa", "flash"),
    "fused kernels": ("cpp_fused", "kernel_cpp", "graph_"),
    "optimizer": ("adam", "Optimizer", "_foreach", "clip_grad"),
}


def kind_of(name: str) -> str:
    lowered = name.lower()
    for kind, keys in KINDS.items():
        if any(key.lower() in lowered for key in keys):
            return kind
    return "rest"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shape", default="12x768x256x4", help="LAYERSxWIDTHxSEQxBATCH")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--steps", type=int, default=3, help="profiled steps (after 2 warmup steps)")
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()
    layers, width, seq, batch = map(int, args.shape.split("x"))
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    torch._inductor.config.cpp.enable_kernel_profile = True  # fused kernels named in the trace
    torch.manual_seed(0)
    config = ModelConfig(hidden_size=width, num_layers=layers, num_heads=width // 64)
    model = LlamaForTraining(config)
    optimizer = build_optimizer(model, 1e-4, 0.1, "cpu")
    compiled = devices.resolve_compile("cpu", args.compile)
    forward = devices.compile_for_training(model) if compiled else model
    tokens = torch.randint(0, config.vocab_size, (batch, seq + 1))

    def step() -> None:
        with devices.autocast("cpu", dtype):
            _, loss = forward(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        step()  # compiles, warms the allocator
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    step_s = (time.perf_counter() - start) / args.steps
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    shares: dict[str, float] = {}
    for e in events:
        shares[kind_of(e.key)] = shares.get(kind_of(e.key), 0.0) + e.self_cpu_time_total / total
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[: args.top]
    print(json.dumps({
        "shape": args.shape, "dtype": args.dtype, "compiled": compiled,
        "threads": torch.get_num_threads(), "step_s_profiled": round(step_s, 3),
        "share_of_self_cpu_time": {k: round(v, 3) for k, v in sorted(shares.items())},
        "top_ops": [
            {"op": e.key[:90], "share": round(e.self_cpu_time_total / total, 3), "calls": e.count}
            for e in top
        ],
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
