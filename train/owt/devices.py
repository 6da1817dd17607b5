"""Where and how the model runs: device, dtype, compile choice, autocast, the CPU allocator,
memory readings. pretrain.py, generate.py and the benchmarks all decide these here.

    resolve_device(name)            "auto" -> MPS, then CUDA, then CPU
    resolve_dtype(device, name)     "auto" -> the fastest dtype that trains as well as fp32
    resolve_compile(device, choice) "auto" -> torch.compile where it is known to work and help
    compile_for_training(model, m)  torch.compile m (model or its wrapper), reproducibly
    autocast(device, dtype)         torch.autocast for bf16/fp16, a no-op for fp32
    setup_backend(device)           TF32 on CUDA; thread count on CPU
    tune_cpu_allocator()            keep freed memory in the process (glibc), huge pages
    to_device(device, *tensors)     host batches to the device, non-blocking only where safe
    limit_mps_memory()              cap MPS at the recommended working set (no swapping)
    is_out_of_memory(exc), empty_cache(device), synchronize(device)
    reset_peak_memory(device), peak_memory_bytes(device), cpu_rss_bytes()

Everything is safe to call on any platform: what does not apply is a no-op. The measurements
behind each choice are in benchmarks/README.md.
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
from typing import Any

import torch

from owt.cli import UsageError

# ---- device, dtype, compile -------------------------------------------------------------------


def resolve_device(name: str = "auto") -> torch.device:
    """`--device name`: "auto" picks MPS, then CUDA, then CPU; anything else must exist here."""
    if name == "auto":
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"--device {name!r} is not a device name ({exc})") from None
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }
    if not available.get(device.type, False):
        raise UsageError(f"--device {name}: not available on this machine")
    return device


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

    auto: CUDA -> bf16 where the GPU has it natively (Ampere and later), else fp32 (fp16 would
    need loss scaling). MPS -> fp32
    (autocast on MPS is slower or unsupported in many torch versions). CPU -> bf16 where the CPU
    has native bf16 dot products (cpu_supports_bf16): 2.1-2.8x faster steps than fp32 there,
    with validation curves that track fp32's; else fp32.
    """
    device = torch.device(device)
    if name != "auto":
        if name not in DTYPES:
            raise ValueError(f"unknown dtype {name!r}; choose from auto, {', '.join(DTYPES)}")
        return DTYPES[name]
    if device.type == "cuda":
        # Native bf16 only (Ampere and later): pre-Ampere GPUs emulate it, slower than fp32.
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if native else torch.float32
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

    auto: on for CUDA, and for the CPU on Linux when inductor has a C++ compiler
    (cxx_compiler); off on MPS and on macOS/Windows CPUs (unmeasured; on macOS inductor also
    needs libomp) and wherever the compiler is missing, so such machines still train, eagerly.
    Compiling costs ~20-40 s before the first step and fuses the elementwise work between the
    matmuls (RMSNorm, RoPE, SwiGLU, residual adds).
    """
    if choice not in ("auto", "on", "off"):
        raise ValueError(f"unknown --compile {choice!r}; choose from auto, on, off")
    if choice != "auto":
        return choice == "on"
    kind = torch.device(device).type
    supported = kind == "cuda" or (kind == "cpu" and sys.platform.startswith("linux"))
    return supported and cxx_compiler() is not None


def compile_for_training(model: torch.nn.Module, step: Any = None) -> Any:
    """torch.compile `step` (`model` itself, its DDP wrapper or a function calling it) with
    `model`'s token
    embedding left out of the graph, so that runs repeat bit for bit.

    Inductor turns the embedding's backward into a parallel loop of atomic adds into the
    gradient rows: on a multi-threaded CPU the order of those float additions changes from run
    to run, and bf16 rounding grew the difference to 1e-2 in the weights after two epochs of a
    tiny model. Eager aten sums each row in a fixed order. What this costs is measured in
    benchmarks/README.md (bench_train.py --compile_embedding).
    """
    # Through a plain function: torch < 2.7's disable(recursive=False) cannot mark a bound
    # method (it sets an attribute on it). Either way the embedding is in no compiled graph.
    forward = model.model.embed_tokens.forward

    def embedding_forward(*args: Any, **kwargs: Any) -> Any:
        return forward(*args, **kwargs)

    model.model.embed_tokens.forward = torch.compiler.disable(embedding_forward, recursive=False)
    return torch.compile(model if step is None else step)


def autocast(device: torch.device | str, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """torch.autocast for a reduced-precision dtype; a no-op context for fp32."""
    device = torch.device(device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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


# ---- the CPU allocator ------------------------------------------------------------------------

# glibc <malloc.h> mallopt parameters.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4

_allocator_tuned: bool | None = None


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the process instead of handing it back to the OS (glibc only).

    A training step frees and re-allocates the same large activation buffers every step. With
    glibc's defaults, blocks over the (dynamic) mmap threshold are mmap'd and munmap'd each time
    and the heap top is trimmed on free, so every step pays page faults and zeroing in the
    kernel (8-23% of CPU time as system time on a 2-core CPU). This sets

        M_MMAP_MAX = 0            never serve malloc with mmap: large blocks come from the heap
        M_TRIM_THRESHOLD = -1     never trim the heap top (glibc: -1 disables trimming)
        M_TOP_PAD = 64 MiB        grow the heap in large steps

    so a block freed in step k is reused in step k+1 without a syscall. The cost is resident
    memory: the heap keeps its high-water mark plus fragmentation. Set OWT_NO_MALLOC_TUNING=1
    where RAM is tight. It also sets torch's THP_MEM_ALLOC_ENABLE=1 (unless set already): torch
    then asks the kernel for transparent huge pages for its CPU blocks of 2 MB and up, so the
    passes over activations take fewer TLB misses.

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


# ---- out of memory, synchronisation, memory readings -----------------------------------------


# How the backends word an allocation that failed: CUDA and the CPU raise OutOfMemoryError;
# MPS raises RuntimeError("MPS backend out of memory ...") past its memory limit and
# RuntimeError("Invalid buffer size: ...") for a single buffer larger than Metal allows.
OUT_OF_MEMORY_MESSAGES = ("out of memory", "invalid buffer size")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is a failed allocation on any device (see OUT_OF_MEMORY_MESSAGES)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    message = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(m in message for m in OUT_OF_MEMORY_MESSAGES)


def to_device(device: torch.device, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Copy CPU batches to `device`. To CUDA through pinned memory without blocking (the copy
    overlaps compute, and the pinned buffer lives until it is done); everywhere else a plain
    blocking copy: a non-blocking copy from pageable memory can be read by MPS after that
    memory was freed and reused, i.e. silently wrong token ids (pytorch#139550, #189690)."""
    pin, non_blocking = transfer_plan(device)
    if pin:
        tensors = tuple(t.pin_memory() for t in tensors)
    return tuple(t.to(device, non_blocking=non_blocking) for t in tensors)


def transfer_plan(device: torch.device) -> tuple[bool, bool]:
    """(pin the host tensor, copy non-blocking) for host-to-`device` copies."""
    return (True, True) if device.type == "cuda" else (False, False)


MPS_MEMORY_ENV = "PYTORCH_MPS_HIGH_WATERMARK_RATIO"


def mps_memory_fraction(environ: dict[str, str] | None = None) -> float | None:
    """The cap to put on MPS allocations, as a fraction of Metal's recommended working set:
    1.0 unless the user set PYTORCH_MPS_HIGH_WATERMARK_RATIO (then theirs stands: None).

    MPS's own default lets a process grow to ~1.7x the recommended working set (~18 GB on a
    16 GB Mac): macOS then swaps the machine to a crawl long before an out-of-memory error
    could let --auto_batch act. At 1.0 the error comes first."""
    environ = os.environ if environ is None else environ
    return None if MPS_MEMORY_ENV in environ else 1.0


def limit_mps_memory() -> int | None:
    """Cap this process's MPS allocations (see mps_memory_fraction); the cap in bytes, or None
    if the user's PYTORCH_MPS_HIGH_WATERMARK_RATIO decides."""
    fraction = mps_memory_fraction()
    if fraction is None:
        return None
    torch.mps.set_per_process_memory_fraction(fraction)
    return int(torch.mps.recommended_max_memory() * fraction)


def device_memory_bytes(device: torch.device) -> int | None:
    """How much memory a run may use on `device`: the MPS recommended working set, the CUDA
    card's total, the machine's RAM for the CPU (None where unknown)."""
    if device.type == "mps":
        return int(torch.mps.recommended_max_memory())
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def empty_cache(device: torch.device) -> None:
    """Give the caching allocator's free blocks back (after an out-of-memory error)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def synchronize(device: torch.device | str) -> None:
    """Wait for queued device work (CUDA/MPS); a no-op on CPU. Only for timing."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


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


def format_dtype(dtype: torch.dtype) -> str:
    """How config.json and the start banner name a dtype: "bfloat16" for torch.bfloat16."""
    return str(dtype).removeprefix("torch.")
