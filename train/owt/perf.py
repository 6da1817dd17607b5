"""Performance helpers shared by pretrain.py and benchmarks/bench_train.py.

    tune_cpu_allocator()          stop glibc returning freed memory to the OS on every step
    setup_backend(device)         TF32 on CUDA, thread count on CPU
    resolve_dtype(device, name)   "auto" -> the fastest dtype that trains as well as fp32
    resolve_compile(device, choice)   "auto" -> torch.compile where it is known to work and help
    add_compile_argument(parser)      the --compile auto|on|off flag pretrain.py and bench share
    autocast_context(device, dt)  torch.autocast for bf16/fp16, a no-op for fp32
    model_flops_per_token(...)    6N + 12*L*H*Q*T, the MFU numerator (see its docstring)
    measure_matmul_peak(...)      the device's dense matmul FLOP/s, the MFU denominator
    reset_peak_memory / peak_memory_bytes   peak memory on CPU (RSS), CUDA and MPS

Everything here is safe to call on any platform: what does not apply is a no-op.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import platform
import resource
import shutil
import sys
import time
from typing import Any

import torch

# glibc <malloc.h> mallopt parameters.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4

_allocator_tuned: bool | None = None


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the process instead of handing it back to the OS (glibc only).

    A training step frees and re-allocates the same large activation buffers every step. With
    glibc's defaults, blocks over the (dynamic) mmap threshold are mmap'd and munmap'd each time
    and the heap top is trimmed on free, so every step pays page faults and zeroing in the kernel:
    on a 2-core CPU that was 8-23% of CPU time as system time. This sets

        M_MMAP_MAX = 0            never serve malloc with mmap: large blocks come from the heap
        M_TRIM_THRESHOLD = -1     never trim the heap top (glibc: -1 disables trimming)
        M_TOP_PAD = 64 MiB        grow the heap in large steps

    so a block freed in step k is reused in step k+1 without a syscall. Measured on 2 cores
    (benchmarks/bench_train.py, fp32): at 124M (12x768, seq 256, batch 4) system time 2.5% ->
    0.2% of CPU time and MFU 0.86 -> 0.90; at 4x256x256x8 8.5% -> 1.1% and 0.74 -> 0.82. The
    cost is resident memory: the heap keeps its high-water mark plus fragmentation (peak RSS
    4.4 instead of 4.2 GB at 124M, 2.8 instead of 1.8 GB at 4x256). Set
    OWT_NO_MALLOC_TUNING=1 where RAM is tight. Raising only M_MMAP_THRESHOLD (max 32 MiB) does
    not help: logits-sized blocks stay above it.

    It also sets torch's THP_MEM_ALLOC_ENABLE=1 (unless set already): torch's CPU allocator then
    asks the kernel for transparent huge pages (madvise) for blocks of 2 MB and up, so the
    passes over activations and the loss buffer take fewer TLB misses. Median steps measured
    1.17 -> 1.14 s at 4x256x256x8, 2.06 -> 2.02 s at 6x384x256x8, 4.06 -> 4.05 s at 124M
    (processes alternating with and without it, three each); peak RSS was not higher.

    Call it once at process start, before the model and optimizer are built: it only affects
    later allocations, and torch reads THP_MEM_ALLOC_ENABLE at its first allocation. Returns
    True if applied (now or earlier), False where it does not apply: non-Linux, a libc other
    than glibc, or OWT_NO_MALLOC_TUNING=1 in the environment.
    """
    global _allocator_tuned
    if _allocator_tuned is not None:
        return _allocator_tuned
    _allocator_tuned = False
    if not sys.platform.startswith("linux") or os.environ.get("OWT_NO_MALLOC_TUNING") == "1":
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = (
        mallopt(_M_MMAP_MAX, 0) == 1
        and mallopt(_M_TRIM_THRESHOLD, -1) == 1  # -1 (as size_t: SIZE_MAX) disables trimming
        and mallopt(_M_TOP_PAD, 64 << 20) == 1
    )
    if ok:
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    _allocator_tuned = ok
    return ok


def setup_backend(device: torch.device | str, num_threads: int | None = None) -> None:
    """Per-backend switches that speed training up without changing what it learns.

    CUDA: TF32 for fp32 matmuls and convolutions (10-bit mantissa inputs, fp32 accumulate; the
    standard setting for training) and cuDNN autotuning. CPU: use `num_threads` intra-op threads
    if given (torch's default, one per physical core, is already the right choice for training).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if device.type == "cpu" and num_threads:
        torch.set_num_threads(num_threads)


def cpu_supports_bf16() -> bool:
    """True if this CPU computes bf16 dot products natively (x86 AVX512_BF16 or AMX-BF16).

    oneDNN also runs bf16 on plain AVX-512 by converting to fp32, which is slower than fp32
    itself, so its own check (torch.ops.mkldnn._is_mkldnn_bf16_supported) is not enough. Read
    from /proc/cpuinfo: False on other platforms, where bf16 training is unmeasured here.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def resolve_dtype(device: torch.device | str, name: str = "auto") -> torch.dtype:
    """The autocast dtype for `--dtype name`; "auto" picks per device.

    auto: CUDA -> bf16 if supported, else fp32 (fp16 would need loss scaling). MPS -> fp32
    (autocast on MPS is slower or unsupported in many torch versions). CPU -> bf16 where the
    CPU has native bf16 dot products (cpu_supports_bf16), else fp32. Measured on a 2-core Zen 4
    EPYC (AVX512_BF16) with torch 2.15, fp32 master weights and AdamW, lm_loss's fp32 softmax:
    whole training steps 2.1-2.8x faster than fp32 (bf16 matmuls run at ~0.9 TFLOP/s against
    0.21 fp32), and validation loss curves over 200 steps on real English that track fp32's
    within 0.06 throughout and 0.02 at the end, on two seeds (README, Performance). Pass
    --dtype float32 to train in fp32 anyway.
    """
    device = torch.device(device)
    if name != "auto":
        if name not in DTYPES:
            raise ValueError(f"unknown dtype {name!r}; choose from auto, {', '.join(DTYPES)}")
        return DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return torch.float32


def cxx_compiler() -> str | None:
    """The C++ compiler torch.compile's inductor backend would build kernels with: $CXX, else
    g++ (clang++ on macOS), if it is on PATH; None if not."""
    name = os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++")
    return shutil.which(name)


def resolve_compile(device: torch.device | str, choice: str = "auto") -> bool:
    """Whether to torch.compile the training model for `--compile choice` (auto, on or off).

    auto: on for CUDA, and for the CPU on Linux, when inductor has a C++ compiler
    (cxx_compiler); off on MPS and on macOS/Windows CPUs (unmeasured here; on macOS inductor
    also needs libomp) and wherever the compiler is missing, so such machines still train,
    eagerly. Compiling costs ~20-40 s before the first step on a 2-core CPU and fuses the
    elementwise work between the matmuls (RMSNorm, RoPE, SwiGLU, residual adds). Measured on a
    2-core Zen 4 with torch 2.15 (benchmarks/bench_train.py, README "Performance"): fp32 steps
    -1% to +4% tokens/s (124M at 256x4: MFU 0.908 eager, 0.912-0.919 compiled), bf16 +6%.
    """
    if choice not in ("auto", "on", "off"):
        raise ValueError(f"unknown --compile {choice!r}; choose from auto, on, off")
    if choice != "auto":
        return choice == "on"
    kind = torch.device(device).type
    supported = kind == "cuda" or (kind == "cpu" and sys.platform.startswith("linux"))
    return supported and cxx_compiler() is not None


def add_compile_argument(parser: Any) -> None:
    """Add --compile auto|on|off (default auto, a bare --compile means on) to an argparse parser
    or argument group; resolve the value with resolve_compile."""
    parser.add_argument(
        "--compile",
        nargs="?",
        const="on",
        default="auto",
        choices=["auto", "on", "off"],
        help="torch.compile the model: auto = on for CUDA, and for the CPU on Linux, when a C++ "
        "compiler is found; off on MPS (~20-40 s before the first step; a bare --compile = on)",
    )


def autocast_context(
    device: torch.device | str, dtype: torch.dtype
) -> contextlib.AbstractContextManager[Any]:
    """torch.autocast for a reduced-precision dtype; a no-op context for fp32."""
    device = torch.device(device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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


def synchronize(device: torch.device | str) -> None:
    """Wait for queued device work (CUDA/MPS); a no-op on CPU. Only for timing."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


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


def _cpu_rss_peak_bytes() -> int:
    """Peak resident set size of this process (VmHWM), in bytes."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def cpu_rss_bytes() -> int:
    """Current resident set size of this process in bytes (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def reset_peak_memory(device: torch.device | str) -> bool:
    """Restart peak-memory tracking. On Linux CPU this resets VmHWM via /proc/self/clear_refs.

    Returns False if the platform cannot reset it (then the peak is the process-lifetime peak).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    if device.type == "cpu":
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False
    return False


def peak_memory_bytes(device: torch.device | str) -> int:
    """Peak memory since reset_peak_memory: CUDA max allocated; CPU peak RSS; MPS driver memory.

    On CPU, RSS includes the Python interpreter and torch's libraries (~0.3-0.5 GB): subtract a
    reading taken before the model was built to get the training run's own memory.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    if device.type == "mps":
        return int(torch.mps.driver_allocated_memory())
    return _cpu_rss_peak_bytes()
