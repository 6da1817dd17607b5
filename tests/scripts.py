"""Run the project's scripts the way a user does: as subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_script(
    script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 600, **kwargs
) -> subprocess.CompletedProcess:
    """Run train/<script> with this interpreter; offline unless `env` says otherwise."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, str(REPO / "train" / script), *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        **kwargs,
    )


def run_with_fault(fault: str, *args: str, env: dict[str, str] | None = None, timeout: float = 600):
    """Run pretrain.py through tests/inject.py with `fault` injected (see its docstring)."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    full_env.update(env or {})
    command = [sys.executable, str(REPO / "tests" / "inject.py"), fault, *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=full_env, timeout=timeout)


def tiny_model_args(tokenizer_dir: Path) -> list[str]:
    """A model small enough to train in seconds on a CPU, in fp32, eagerly.

    fp32 because most tests compare runs that split the same work differently (accumulation,
    ranks, resume) and expect fp32 rounding; eager because compiling takes longer than these
    runs train. The defaults, --dtype auto (bf16 on CPUs with native bf16) and --compile auto
    (compiled where a C++ compiler is found), are exercised by test_pretrain.py's main run.
    A later --dtype or --compile overrides these.
    """
    return [
        "--tokenizer_name", str(tokenizer_dir),
        "--hidden_size", "32", "--num_layers", "2", "--num_heads", "2",
        "--max_length", "32", "--max_position_embeddings", "64",
        "--device", "cpu", "--dtype", "float32", "--compile", "off",
    ]  # fmt: skip


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
