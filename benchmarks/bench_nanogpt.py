"""nanoGPT's own model and training step, timed the way bench_train.py times ours.

    python3 benchmarks/bench_nanogpt.py --device cuda --dtype bf16 --shape 12x768x1024x32
    python3 benchmarks/bench_nanogpt.py --shape 12x768x1024x16 --gradient_accumulation_steps 2

The model is karpathy/nanoGPT's model.py, never committed: a copy lives in the git-ignored
benchmarks/.nanogpt/ (model.py and COMMIT, the commit it came from; benchmarks/README.md says
how to get it). Without it this prints {"skipped": "nanoGPT copy not present ..."} and exits 0.

The step is nanoGPT train.py's inner loop: per micro-batch (--gradient_accumulation_steps of
them, default 1) forward under autocast (its `ctx`), the loss divided by their number, the next
batch fetched while the GPU works (pinned, non-blocking: its get_batch), backward; then
gradient clipping at 1.0, the GradScaler (a no-op unless fp16), its fused AdamW
(configure_optimizers: lr 6e-4, betas (0.9, 0.95), weight decay 0.1), zero_grad; TF32 on, and
torch.compile of the whole model when compiling, as train.py does. Its vocabulary is 50304
(train.py's default, GPT-2's 50257 padded) unless --vocab_size says otherwise; no dropout, no
biases (bias=False, as ours). Tokens are random ids from a np.memmap, as bench_train.py's.
The JSON: tokens/s (median step), the step time, peak memory, parameters, the commit.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import torch

from bench_train import REAL_VOCAB, make_token_file, parse_shape
from measure import report
from owt import devices

NANOGPT = Path(__file__).resolve().parent / ".nanogpt"
NANOGPT_VOCAB = 50304


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda", help="a torch device name")
    p.add_argument("--dtype", default="bf16", help="fp32 | bf16 | fp16 (autocast dtype)")
    p.add_argument("--shape", default="12x768x1024x8", help="LAYERSxWIDTHxSEQxBATCH")
    p.add_argument("--compile", choices=["on", "off"], default="on", help="torch.compile(model)")
    p.add_argument("--gradient_accumulation_steps", type=int, default=1, help="micro-batches")
    p.add_argument("--vocab_size", type=int, default=NANOGPT_VOCAB)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation)")
    p.add_argument("--data_tokens", type=int, default=4 * 2**20, help="random token memmap size")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    return p


def load_nanogpt() -> Any | None:
    """nanoGPT's model module from benchmarks/.nanogpt/, or None where the copy is absent."""
    path = NANOGPT / "model.py"
    if not path.is_file():
        return None
    # By its path: `model` on sys.path is ours (train/model.py).
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "GPTConfig"):
        raise SystemExit(f"{path} is not nanoGPT's model.py")
    return module


def batches(path: Path, batch: int, seq: int, device: torch.device):
    """nanoGPT's get_batch on a memmap of random ids: pinned, non-blocking copies on CUDA."""
    data = np.memmap(path, dtype=np.uint16, mode="r")
    while True:
        ix = torch.randint(len(data) - seq, (batch,))
        x = torch.stack([torch.from_numpy(data[i : i + seq].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + seq].astype(np.int64)) for i in ix])
        if device.type == "cuda":
            yield (
                x.pin_memory().to(device, non_blocking=True),
                y.pin_memory().to(device, non_blocking=True),
            )
        else:
            yield x.to(device), y.to(device)


def time_steps(args: argparse.Namespace, nanogpt: Any, token_file: Path) -> dict[str, Any]:
    """Build nanoGPT's model and optimizer, run --warmup then --steps of its step."""
    shape, device = parse_shape(args.shape), torch.device(args.device)
    dtype = devices.resolve_dtype(device, args.dtype)
    torch.manual_seed(1337)
    torch.backends.cuda.matmul.allow_tf32 = True  # as train.py
    torch.backends.cudnn.allow_tf32 = True
    config = nanogpt.GPTConfig(
        block_size=shape["seq_len"], vocab_size=args.vocab_size, n_layer=shape["num_layers"],
        n_head=shape["hidden_size"] // 64, n_embd=shape["hidden_size"], dropout=0.0, bias=False,
    )  # fmt: skip
    model = nanogpt.GPT(config).to(device)
    optimizer = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    step_model = torch.compile(model) if args.compile == "on" else model
    ctx = nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)
    data = batches(token_file, shape["batch_size"], shape["seq_len"], device)
    accumulation = args.gradient_accumulation_steps
    devices.reset_peak_memory(device)
    x, y = next(data)
    times, losses = [], []
    for step in range(args.warmup + args.steps):
        devices.synchronize(device)
        start = time.perf_counter()
        for _ in range(accumulation):
            with ctx:
                _, loss = step_model(x, y)
                loss = loss / accumulation
            x, y = next(data)  # fetched while the GPU runs the forward pass, as train.py
            scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        devices.synchronize(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
            losses.append(loss.item() * accumulation)
    tokens_per_step = shape["batch_size"] * shape["seq_len"] * accumulation
    return {
        "shape": args.shape, "device": str(device), "dtype": devices.format_dtype(dtype),
        "compile": args.compile == "on", "vocab_size": args.vocab_size,
        "gradient_accumulation_steps": accumulation,
        "params": sum(p.numel() for p in model.parameters()),
        "tokens_per_step": tokens_per_step, "steps": len(times), "warmup": args.warmup,
        "step_s_median": round(median(times), 5),
        "tokens_per_s": round(tokens_per_step / median(times), 1),
        "loss_last": round(losses[-1], 4),
        "peak_memory_bytes": devices.peak_memory_bytes(device),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    nanogpt = load_nanogpt()
    if nanogpt is None:
        result: dict[str, Any] = {"skipped": f"nanoGPT copy not present ({NANOGPT}/model.py)"}
    else:
        with tempfile.TemporaryDirectory() as tmp:
            token_file = make_token_file(Path(tmp), args.data_tokens, REAL_VOCAB)
            result = time_steps(args, nanogpt, token_file)
        commit = NANOGPT / "COMMIT"
        result["nanogpt_commit"] = commit.read_text().strip() if commit.is_file() else "unknown"
        result["torch"] = torch.__version__
    report(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
