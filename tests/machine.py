"""What this machine offers, read independently of train/owt/devices.py, so that tests can check
the choices devices.py makes against an expectation it did not compute."""

from __future__ import annotations

import os
import shutil
import sys


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


# bf16 dot products in hardware: what --dtype auto needs to pick bf16 on the CPU.
NATIVE_BF16 = bool({"avx512_bf16", "amx_bf16"} & cpu_flags())

# The C++ compiler torch.compile's inductor would use: $CXX, else g++ (clang++ on macOS).
CXX = shutil.which(os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++"))

# --compile auto on the CPU: on for Linux with a C++ compiler (README, "Flags").
COMPILES_ON_CPU = sys.platform.startswith("linux") and CXX is not None

DEFAULT_CPU_DTYPE = "bfloat16" if NATIVE_BF16 else "float32"
