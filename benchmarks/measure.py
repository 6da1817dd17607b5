"""Measurement helpers for the benchmarks: the MFU numerator and denominator, vendor peaks.

    model_flops_per_token(config, seq_len)   6N + 12*L*H*Q*T, the MFU numerator
    measure_matmul_peak(device, dtype)       the device's dense matmul FLOP/s, the denominator
    vendor_peak_flops(device, dtype)         the data-sheet peak of a known CUDA GPU
    ForeignMeter, wait_for_idle              other processes' share of the CPU, and waiting
                                             until they are quiet (shared machines)
    report(value, out)                       a benchmark's JSON to stdout, and to a file

See README.md in this folder for how they are used and what they measured.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from owt.devices import synchronize


def model_flops_per_token(config: Any, seq_len: int) -> float:
    """Training FLOPs per token, 6N + 12*L*H*Q*T (PaLM appendix B; nanoGPT's estimate_mfu).

    N counts every weight that a token is multiplied by: all parameters of the model with the
    tied embedding/LM-head matrix counted once (as the LM head, V*d, since its matmul is real
    compute and the embedding lookup is a gather, zero FLOPs), plus the RMSNorm gains (2d per
    layer + d, negligible). Nothing is excluded because there is no position-embedding table
    (RoPE). This equals nanoGPT's N for a GPT-2 (its wte is tied and counted, wpe excluded).
    The 6 = 2 (multiply-add) x 3 (forward, backward for inputs, backward for weights).

    12*L*H*Q*T is attention's QK^T and AV over the full T x T score matrix (no credit for the
    causal half being skipped), with L layers, H heads, Q head dim, T = seq_len.

    config needs hidden_size, num_layers, num_heads, intermediate_size and vocab_size; pass the
    real vocab size (50257), not a padded one, so padding never inflates MFU.
    """
    d, L, H = config.hidden_size, config.num_layers, config.num_heads
    m, V = config.intermediate_size, config.vocab_size
    q = d // H
    per_layer = 4 * d * d + 3 * d * m + 2 * d  # q,k,v,o + gate,up,down + two RMSNorm gains
    n = L * per_layer + d + V * d  # final norm + tied embedding / LM head
    return 6.0 * n + 12.0 * L * H * q * seq_len


def measure_matmul_peak(
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    n: int = 2048,
    repeats: int = 5,
    min_seconds: float = 0.2,
) -> float:
    """Dense n x n x n matmul throughput in FLOP/s (2*n^3 per matmul): the best of `repeats`.

    The MFU denominator: what this device actually sustains on a large, well-shaped matmul
    with the current thread settings, measured in the same process as the run it normalises.
    Each repeat runs enough matmuls to last at least `min_seconds`.
    """
    device = torch.device(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=out)  # warm up: thread pool, kernels, page faults
    synchronize(device)
    t0 = time.perf_counter()
    torch.mm(a, b, out=out)
    synchronize(device)
    per_call = max(time.perf_counter() - t0, 1e-6)
    calls = max(1, int(min_seconds / per_call))
    best = 0.0
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            torch.mm(a, b, out=out)
        synchronize(device)
        best = max(best, 2.0 * n**3 * calls / (time.perf_counter() - t0))
    return best


# Dense peak FLOP/s from vendor data sheets, keyed by a substring of the device name (bf16, no
# sparsity; fp32 is without TF32). Used only to print MFU against the vendor number as well.
VENDOR_PEAK_FLOPS: dict[str, dict[torch.dtype, float]] = {
    "H100 SXM": {torch.bfloat16: 989e12, torch.float32: 67e12},
    "H100 PCIe": {torch.bfloat16: 756e12, torch.float32: 51e12},
    "H100": {torch.bfloat16: 989e12, torch.float32: 67e12},
    "H200": {torch.bfloat16: 989e12, torch.float32: 67e12},
    "A100": {torch.bfloat16: 312e12, torch.float32: 19.5e12},
    "A10G": {torch.bfloat16: 70e12, torch.float32: 31.2e12},
    "L4": {torch.bfloat16: 121e12, torch.float32: 30.3e12},
    "RTX 4090": {torch.bfloat16: 165e12, torch.float32: 82.6e12},
    "RTX 3090": {torch.bfloat16: 71e12, torch.float32: 35.6e12},
}


def vendor_peak_flops(device: torch.device | str, dtype: torch.dtype) -> float | None:
    """The vendor's dense peak for a known CUDA GPU and dtype, else None."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in VENDOR_PEAK_FLOPS.items():
        if key in name:
            return peaks.get(dtype)
    return None


def cpu_busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat; (0, 0) if unavailable."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    total = sum(values[:8])
    return total - values[3] - values[4], total  # minus idle and iowait


class ForeignMeter:
    """Share of the machine's CPU time used by other processes between start() and stop().

    Machine busy time from /proc/stat minus this process's own CPU time (all its threads),
    over wall time x CPUs. On a shared box a step with more than a few percent is disturbed:
    the benchmark keeps only clean steps when it can.
    """

    def __init__(self) -> None:
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.start()

    def start(self) -> None:
        self.jiffies, self.own = cpu_busy_jiffies(), os.times()

    def stop(self) -> float:
        (b0, t0), (b1, t1), own1 = self.jiffies, cpu_busy_jiffies(), os.times()
        if t1 <= t0:
            return 0.0
        own = (own1.user - self.own.user) + (own1.system - self.own.system)
        return max(0.0, ((b1 - b0) / self.tick - own) / ((t1 - t0) / self.tick))


def clean_matmul_peak(device: Any, dtype: Any, threshold: float, tries: int = 8) -> float:
    """Best matmul peak (FLOP/s) over up to 3 measurements during which other processes used at
    most `threshold` of the CPUs; negative (its magnitude the best overall) if none was clean."""
    clean, dirty = [], []
    meter = ForeignMeter()
    for _ in range(tries):
        meter.start()
        flops = measure_matmul_peak(device, dtype, repeats=1, min_seconds=0.3)
        (clean if meter.stop() <= threshold else dirty).append(flops)
        if len(clean) >= 3:
            break
    return max(clean) if clean else -max(dirty)


def timed_matmul_peak(
    device: Any, dtype: Any, threshold: float, spent: list[float]
) -> float | None:
    """The matmul peak now (None if other processes disturbed it), adding the wall, user and
    system seconds it took to `spent`, so that a benchmark can leave them out of its totals."""
    c0, w0 = os.times(), time.perf_counter()
    meter = ForeignMeter()
    flops = measure_matmul_peak(device, dtype, repeats=3, min_seconds=0.1)
    peak = flops if meter.stop() <= threshold else None
    c1 = os.times()
    spent[0] += time.perf_counter() - w0
    spent[1] += c1.user - c0.user
    spent[2] += c1.system - c0.system
    return peak


def wait_for_idle(max_wait_s: float, threshold: float = 0.15, window_s: float = 2.0) -> float:
    """Wait (up to max_wait_s) until the machine is at most `threshold` busy over `window_s`.

    Returns the busy fraction of the last window. On a shared 2-core box another process's
    tests make OpenMP threads wait on each other and slow every step severalfold.
    """
    import random

    deadline = time.monotonic() + max_wait_s

    def busy_over(seconds: float) -> float:
        b0, t0 = cpu_busy_jiffies()
        time.sleep(seconds)
        b1, t1 = cpu_busy_jiffies()
        return (b1 - b0) / max(1, t1 - t0)

    while True:
        busy = busy_over(window_s)
        if busy <= threshold:
            # Others may be waiting for the same idle moment: back off a random while, recheck.
            time.sleep(random.uniform(0, 5))
            busy = busy_over(1.0)
        if busy <= threshold or time.monotonic() >= deadline:
            return busy


def report(value: Any, out: Path | None = None, indent: int | None = None) -> None:
    """Print a benchmark's result as JSON (its last line of stdout) and write it to `out` too."""
    text = json.dumps(value, indent=indent)
    print(text)
    if out:
        out.write_text(text + "\n")
