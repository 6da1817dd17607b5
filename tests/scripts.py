"""Run the project's scripts the way a user does: as subprocesses. The one place that starts them.

    run_script("pretrain.py", *pretrain_args(data, out, tokenizer, FP32_EAGER, num_epochs=2))
    run_script("pretrain.py", *args, fault="nan:all")        # through tests/inject.py
    run_script("pretrain.py", *args, ranks=2)                # torchrun --standalone, 2 processes
    run_script("download_subset.py", "--output_dir", out, env=hub.env(home))  # the hub stand-in
    process = start_script("pretrain.py", *args, stderr=log)  # a Popen, for the signal tests

The environment (script_env) is offline unless a test passes one: no HF_* variable of the
developer's shell leaks in, and HF_HUB_OFFLINE=1 keeps every run off the real hub.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tiny import TINY

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "train"
INJECT = REPO / "tests" / "inject.py"


# TOKENIZERS_PARALLELISM: no fork warnings from the tokenizers library. OMP_NUM_THREADS=1: the
# tiny models gain nothing from a second thread, and with pytest-xdist's workers already on every
# core, two-thread runs would only spin against each other. Tests of the default path pass
# DEFAULT_THREADS.
QUIET = {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
DEFAULT_THREADS = {"OMP_NUM_THREADS": "2"}
"""What pretrain.py runs with on this 2-core machine by default: every core (torch's default)."""


def script_env(
    env: Mapping[str, str] | None = None, set_env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment a script runs in.

    env None: this process's environment without any HF_*/HUGGINGFACE_* variable (no token,
    endpoint or cache of the developer's), offline (HF_HUB_OFFLINE=1). Otherwise `env` exactly as
    given, e.g. HubStub.env(...): the stand-in and nothing else. Then TOKENIZERS_PARALLELISM=false
    and OMP_NUM_THREADS=1 (see QUIET) unless `env` says otherwise, and `set_env` on top of it all.
    """
    if env is None:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
        env = {**base, "HF_HUB_OFFLINE": "1"}
    return {**QUIET, **env, **(set_env or {})}


def script_command(
    script: str, *args: Any, fault: str | None = None, ranks: int = 1, torchrun: bool = False
) -> list[str]:
    """The command line: train/<script>, through tests/inject.py when `fault` is given (see its
    docstring), under torchrun (--standalone, `ranks` processes on this machine) when ranks > 1
    or `torchrun` asks for it with one process."""
    launcher = [sys.executable]
    if ranks > 1 or torchrun:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
    program = [str(INJECT), fault, script] if fault else [str(TRAIN / script)]
    return [*launcher, *program, *map(str, args)]


def run_script(
    script: str,
    *args: Any,
    env: Mapping[str, str] | None = None,
    set_env: Mapping[str, str] | None = None,
    fault: str | None = None,
    ranks: int = 1,
    torchrun: bool = False,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """Run train/<script> to the end; its stdout and stderr as text. See script_command and
    script_env for the other arguments."""
    return subprocess.run(
        script_command(script, *args, fault=fault, ranks=ranks, torchrun=torchrun),
        capture_output=True,
        text=True,
        env=script_env(env, set_env),
        timeout=timeout,
    )


def start_script(
    script: str,
    *args: Any,
    env: Mapping[str, str] | None = None,
    set_env: Mapping[str, str] | None = None,
    fault: str | None = None,
    stdout: Any = subprocess.DEVNULL,
    stderr: Any = subprocess.DEVNULL,
) -> subprocess.Popen:
    """Start train/<script> and return at once (for tests that signal or kill it). Send its
    output to a file, not a pipe, unless the test reads the pipe: an unread pipe fills up and
    blocks the child."""
    return subprocess.Popen(
        script_command(script, *args, fault=fault),
        stdout=stdout,
        stderr=stderr,
        text=True,
        env=script_env(env, set_env),
    )


def wait_until(
    condition: Callable[[], bool], *processes: subprocess.Popen, timeout: float = 120
) -> None:
    """Poll `condition` until it holds, failing the test if any of `processes` (started by
    start_script) ends first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while not condition():
        for process in processes:
            assert process.poll() is None, f"a script ended early (exit {process.returncode})"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# ---- pretrain.py's arguments -------------------------------------------------------------------

TINY_MODEL = {**TINY, "max_length": 32, "device": "cpu"}
"""pretrain.py's flags for the tiny model (tiny.TINY), on the CPU."""

TINY_RUN = {
    "batch_size": 4, "gradient_accumulation_steps": 2, "learning_rate": 2e-3,
    "log_interval": 1, "save_interval": 4, "eval_interval": 6, "eval_max_batches": 2,
}  # fmt: skip
"""How the resume, fault and lock tests train on conftest.tiny_dataset: 17 optimizer steps an
epoch of 4 x 2 windows, checkpoint_last.pt every 4 steps, a validation every 6 (best_model.pt
when it improves). They add --num_epochs."""

FP32_EAGER = {"dtype": "float32", "compile": "off"}
"""fp32, eagerly: for tests that compare runs splitting the same work differently (accumulation,
ranks, resume) and expect fp32 rounding, and for tests that need no compiled kernels (compiling
takes longer than these runs train). Without it a run takes pretrain.py's defaults, --dtype auto
(bf16 on CPUs with native bf16) and --compile auto (compiled where a C++ compiler is found)."""


def pretrain_args(data: Any, out: Any, tokenizer: Any, *presets: Mapping, **flags: Any) -> list:
    """pretrain.py's command line for the tiny model (TINY_MODEL) on `data`, writing to `out`.

    `presets` (dicts such as FP32_EAGER) and then `flags` set or override flags by name:
    num_epochs=2 is "--num_epochs 2", True a bare flag (auto_batch=True), None or False leaves
    the flag out (its default).
    """
    settings: dict[str, Any] = {
        "data_dir": data,
        "output_dir": out,
        "tokenizer_name": tokenizer,
        **TINY_MODEL,
    }
    for preset in presets:
        settings.update(preset)
    settings.update(flags)
    args: list[str] = []
    for name, value in settings.items():
        if value is None or value is False:
            continue
        args.append(f"--{name}")
        if value is not True:
            args.append(str(value))
    return args


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The error a script reported, checked to be all it wrote to stderr."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one "error:" line on stderr, checked to be the last line (progress lines, such as the
    token cache's, may come before it)."""
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0] == result.stderr.strip().splitlines()[-1], result.stderr[-3000:]
    return errors[0]
