"""The GPU check of issue 22, one stage after another; benchmarks/gpu_check.sh runs it.

    bash benchmarks/gpu_check.sh OUT            # on a CUDA machine: < 5 minutes on one GPU
    bash benchmarks/gpu_check.sh OUT --cpu      # the same stages at tiny sizes on the CPU (CI)
    bash benchmarks/gpu_check.sh OUT --stages bench_train nanogpt     # rerun some stages

Writes OUT/gpu_check.json (rewritten after every stage, so a run cut short keeps what it
measured; a rerun with --stages into the same OUT keeps the other stages' results) and
OUT/gpu_check.log (every command and its whole output, appended). The stages, in order:

  bench_train  bench_train.py --dtype bf16 at 12x768x1024xB, B the largest power of two whose
               step owt.memory counts at <= 85% of the card (halved while it still runs out
               of memory): tokens/s, MFU against the same run's measured bf16 matmul peak,
               peak memory, and the count against that peak
  nanogpt      bench_nanogpt.py: nanoGPT's model.py and step at the same shape, tokens per
               step, dtype and compile setting; ours_over_nanogpt is the tokens/s ratio
  dry_run      pretrain.py --dry_run with the run's flags: the counted memory against the
               measured peak (target: within 15%); it builds the token cache, and compiles
               the graphs the run then finds in inductor's cache
  pretrain     pretrain.py with default flags on generated English (Python's documentation,
               textdata.py, repeated to fill 300 steps) for --max_steps 300
  resume       the same run resumed (--resume auto) and extended to step 320
  export_hf    export_hf.py of the last checkpoint
  generate     generate.py from it, on the device
  cuda_tests   pytest -m cuda (tests/test_cuda.py): counts, failures, skip reasons

--cpu runs every stage on the CPU at tiny sizes (fp32, eager, 20 + 5 steps) in about a minute
(most of it process starts): the CUDA tests are then all skipped ("no CUDA device"), nanoGPT
runs only where its copy is present (benchmarks/.nanogpt/, git-ignored), and the dry run's
comparison is left out (None: the CPU's measured peak is the whole process's RSS).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PROMPT = "The meaning of life is"
STAGES = [
    "bench_train", "nanogpt", "dry_run", "pretrain", "resume", "export_hf", "generate",
    "cuda_tests",
]  # fmt: skip
MFU_TARGET, NANOGPT_TARGET, DRY_RUN_TOLERANCE = 0.5, 1.0, 0.15


class Check:
    """The stages' shared state: the mode, the output folder, the summary, the log."""

    def __init__(self, out: Path, cpu: bool) -> None:
        self.out, self.cpu = out, cpu
        self.work = out / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.log_path = out / "gpu_check.log"
        # A rerun of some stages (--stages) into the same folder keeps the others' results.
        previous = out / "gpu_check.json"
        self.summary: dict[str, Any] = {"stages": {}}
        if previous.is_file():
            self.summary = json.loads(previous.read_text())
        self.summary["mode"] = "cpu" if cpu else "cuda"
        self.device = "cpu" if cpu else "cuda"

    def log(self, text: str) -> None:
        with self.log_path.open("a") as f:
            f.write(text.rstrip("\n") + "\n")

    def run(self, *command: Any, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run a command from the repository root; its whole output goes to the log."""
        args = [str(c) for c in command]
        self.log(f"\n$ {' '.join(args)}")
        try:
            result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            self.log(f"timed out after {timeout} s\n{exc.stdout or ''}{exc.stderr or ''}")
            raise
        self.log(result.stdout + result.stderr + f"(exit {result.returncode})")
        return result

    def script(self, name: str, *args: Any, timeout: float = 300) -> subprocess.CompletedProcess:
        """train/<name> (or benchmarks/<name>) with this python3; fails on a non-zero exit."""
        folder = "benchmarks" if name.startswith("bench_") else "train"
        result = self.run(sys.executable, REPO / folder / name, *args, timeout=timeout)
        if result.returncode:
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
            output = (result.stdout + result.stderr).lower()
            oom = " (out of memory)" if "out of memory" in output else ""
            raise RuntimeError(f"{name} exited {result.returncode}{oom}: {tail[0][:300]}")
        return result

    def save(self) -> None:
        path = self.out / "gpu_check.json"
        path.write_text(json.dumps(self.summary, indent=2) + "\n")


# ---- environment ----------------------------------------------------------------------------


def environment(check: Check) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0], "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(), "cpu_count": os.cpu_count(),
        "nanogpt_copy": (REPO / "benchmarks" / ".nanogpt" / "model.py").is_file(),
    }  # fmt: skip
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(
            gpu=props.name, gpu_memory_bytes=props.total_memory,
            gpu_count=torch.cuda.device_count(), cuda=torch.version.cuda,
        )  # fmt: skip
    return env


# ---- bench_train and nanoGPT ----------------------------------------------------------------

GPU_SHAPE = (12, 768, 1024)  # layers, width, sequence: GPT-2 124M at nanoGPT's block size
CPU_SHAPE = (2, 64, 32)
CPU_BATCH = 2
FIT_FRACTION = 0.85  # of the card: room for the allocator's rounding, cuBLAS workspaces


def counted_bytes(layers: int, width: int, seq: int, batch: int) -> int:
    """owt.memory's count of one bf16 optimizer step of this shape (fake tensors, CUDA's
    attention)."""
    import torch

    from model import ModelConfig
    from owt.memory import training_step_peak_bytes

    config = ModelConfig(
        vocab_size=50257, hidden_size=width, num_layers=layers, num_heads=width // 64,
        max_position_embeddings=max(seq, 1024),
    )  # fmt: skip
    return training_step_peak_bytes(config, batch, seq, dtype=torch.bfloat16, on_mps=False).peak


def largest_batch(card_bytes: int) -> tuple[int, int]:
    """(B, its counted bytes): the largest power of two whose counted step fits FIT_FRACTION of
    the card. The count is linear in B: fixed (weights, moments) + B x per sequence."""
    one, two = counted_bytes(*GPU_SHAPE, 1), counted_bytes(*GPU_SHAPE, 2)
    per_sequence, fixed = two - one, 2 * one - two
    batch = 1
    while fixed + 2 * batch * per_sequence <= FIT_FRACTION * card_bytes:
        batch *= 2
    return batch, fixed + batch * per_sequence


def bench_args(check: Check, batch: int) -> list[Any]:
    layers, width, seq = CPU_SHAPE if check.cpu else GPU_SHAPE
    shape = f"{layers}x{width}x{seq}x{batch}"
    if check.cpu:
        return ["--device", "cpu", "--dtype", "fp32", "--compile", "off", "--shapes", shape,
                "--steps", "2", "--warmup", "1", "--no_peak", "--in_process",
                "--data_tokens", "100000"]  # fmt: skip
    return ["--device", "cuda", "--dtype", "bf16", "--shapes", shape, "--steps", "6",
            "--warmup", "2"]  # fmt: skip


def bench_train(check: Check) -> dict[str, Any]:
    """bench_train.py at the largest micro-batch that fits; halves B on an out-of-memory."""
    if check.cpu:
        batch, counted = CPU_BATCH, counted_bytes(*CPU_SHAPE, CPU_BATCH)
    else:
        batch, counted = largest_batch(check.summary["environment"]["gpu_memory_bytes"])
    out = check.out / "bench_train.json"
    while True:
        try:
            check.script("bench_train.py", *bench_args(check, batch), "--out", out, timeout=300)
            break
        except RuntimeError as exc:
            if "out of memory" not in str(exc).lower() or batch == 1 or check.cpu:
                raise
            batch //= 2
            counted = counted_bytes(*GPU_SHAPE, batch)
    result = json.loads(out.read_text())["results"][0]
    keep = ["shape", "batch_size", "device", "dtype", "compile", "tokens_per_s", "mfu",
            "mfu_vs_best_peak", "matmul_peak_tflops_bfloat16", "achieved_tflops",
            "step_s_median", "peak_memory_bytes", "warmup_s_incl_compile", "adamw"]  # fmt: skip
    summary = {k: result[k] for k in keep if k in result}
    summary["counted_step_bytes"] = counted
    if result["device"].startswith("cuda"):
        summary["counted_over_peak"] = round(counted / result["peak_memory_bytes"], 3)
    return summary


def nanogpt(check: Check) -> dict[str, Any]:
    """bench_nanogpt.py at bench_train's shape, tokens per step, dtype and compile setting: the
    same micro-batch, or, where nanoGPT runs out of memory with it, half of it accumulated
    twice (and so on), as nanoGPT's train.py reaches large batches."""
    ours = check.summary.get("bench_train")
    if not isinstance(ours, dict) or "tokens_per_s" not in ours:
        raise RuntimeError("needs the bench_train stage's result")
    out = check.out / "bench_nanogpt.json"
    layers, width, seq, batch = ours["shape"].split("x")
    args = ["--device", check.device, "--out", out,
            "--dtype", "bf16" if ours["dtype"] == "bfloat16" else "fp32",
            "--compile", "on" if ours["compile"] else "off"]  # fmt: skip
    if check.cpu:
        args += ["--steps", "2", "--warmup", "1", "--data_tokens", "100000"]
    else:
        args += ["--steps", "6", "--warmup", "2"]
    micro, accumulation = int(batch), 1
    while True:
        shape = ["--shape", f"{layers}x{width}x{seq}x{micro}"]
        try:
            check.script("bench_nanogpt.py", *args, *shape,
                         "--gradient_accumulation_steps", accumulation, timeout=300)  # fmt: skip
            break
        except RuntimeError as exc:
            if "out of memory" not in str(exc) or micro == 1:
                raise
            micro, accumulation = micro // 2, accumulation * 2
    result = json.loads(out.read_text())
    if "tokens_per_s" in result:
        check.summary["ours_over_nanogpt"] = round(ours["tokens_per_s"] / result["tokens_per_s"], 3)
    else:
        check.summary["ours_over_nanogpt"] = None
    return result


# ---- pretrain.py, resume, export, generate, dry run ----------------------------------------

STEPS, RESUMED_STEPS = 300, 320
CPU_STEPS, CPU_RESUMED_STEPS = 20, 25
TINY_FLAGS = [
    "--hidden_size", "32", "--num_layers", "2", "--num_heads", "2",
    "--max_position_embeddings", "64", "--max_length", "32", "--batch_size", "4",
    "--gradient_accumulation_steps", "2", "--eval_max_batches", "2", "--log_interval", "5",
    "--dtype", "float32", "--compile", "off", "--device", "cpu",
]  # fmt: skip
DEFAULT_TOKENS_PER_STEP = 4 * 8 * 513  # pretrain.py's default batch x accumulation x window


def english_layout(check: Check) -> tuple[Path, Path]:
    """(dataset layout, GPT-2 tokenizer folder) under OUT/work: Python's documentation, on the
    GPU repeated (each copy shuffled) until one epoch holds the 320 default steps of the run
    and its resume (47 copies, ~5.9M tokens, ~360 steps)."""
    from textdata import english_documents, save_gpt2_tokenizer, write_layout

    documents = english_documents()
    train, validation = documents[:-20], documents[-20:]
    if not check.cpu:
        # ~125k GPT-2 tokens a copy: room for the resumed run inside the one default epoch.
        copies = -(-RESUMED_STEPS * DEFAULT_TOKENS_PER_STEP // 115_000) + 1
        shuffled = []
        for seed in range(copies):
            shuffled += random.Random(seed).sample(train, len(train))
        train = shuffled
    data = write_layout(check.work / "data", train, validation)
    return data, save_gpt2_tokenizer(check.work / "tokenizer")


def run_flags(check: Check, out: Path, steps: int) -> list[Any]:
    """The run's flags, on english_layout's data and tokenizer (written once, on first use)."""
    data, tokenizer = check.work / "data", check.work / "tokenizer"
    if not (data / "dataset_info.txt").is_file() or not tokenizer.is_dir():
        english_layout(check)
    flags = ["--data_dir", data, "--tokenizer_name", tokenizer, "--output_dir", out]
    return [*flags, "--max_steps", steps, *(TINY_FLAGS if check.cpu else [])]


def pretrain(check: Check) -> dict[str, Any]:
    """pretrain.py with default flags (tiny ones with --cpu) for STEPS steps."""
    import pyarrow.parquet as pq

    from same_run import scalars

    out = check.work / "run"
    steps = CPU_STEPS if check.cpu else STEPS
    started = time.perf_counter()
    flags = [*run_flags(check, out, steps), "--overwrite"]
    data = check.work / "data"
    result = check.script("pretrain.py", *flags, timeout=400)
    speeds = [v for _, v in scalars(out / "tensorboard", "train/tokens_per_sec")]
    config = json.loads((out / "config.json").read_text())
    return {
        "steps": steps, "seconds": round(time.perf_counter() - started, 1),
        "train_documents": pq.read_metadata(data / "train" / "part-0.parquet").num_rows,
        "dtype": config.get("dtype"), "compiled": config.get("compiled"),
        "tokens_per_s_median": round(median(speeds[1:] or speeds), 1),
        "val_loss": [round(v, 4) for _, v in scalars(out / "tensorboard", "val/loss")],
        "done": last_line_with(result.stderr, "Done ("),
    }  # fmt: skip


def resume(check: Check) -> dict[str, Any]:
    """The run resumed from its last checkpoint and extended to RESUMED_STEPS."""
    from same_run import read_checkpoint

    out = check.work / "run"
    steps, total = (CPU_STEPS, CPU_RESUMED_STEPS) if check.cpu else (STEPS, RESUMED_STEPS)
    flags = [*run_flags(check, out, total), "--resume", "auto"]
    result = check.script("pretrain.py", *flags, timeout=300)
    line = last_line_with(result.stderr, "resumed from")
    return {
        "resumed_line": line, "resumed_at_expected_step": f"at step {steps}," in line,
        "final_step": read_checkpoint(out / "checkpoint_last.pt")["step"],
        "done": last_line_with(result.stderr, "Done ("),
    }  # fmt: skip


def export_hf(check: Check) -> dict[str, Any]:
    hf = check.work / "hf"
    check.script("export_hf.py", "--checkpoint", check.work / "run" / "checkpoint_last.pt",
                 "--output_dir", hf, timeout=120)  # fmt: skip
    return {"files": sorted(p.name for p in hf.iterdir())}


def generate(check: Check) -> dict[str, Any]:
    result = check.script(
        "generate.py", "--checkpoint", check.work / "run" / "checkpoint_last.pt",
        "--prompt", PROMPT, "--max_new_tokens", "40", "--device", check.device, timeout=120,
    )  # fmt: skip
    return {"text": result.stdout.strip(), "where": last_line_with(result.stderr, "params on")}


DRY_RUN_MEMORY = re.compile(r"peak ([\d.]+) GB measured, ([\d.]+) GB of tensors counted")


def dry_run(check: Check) -> dict[str, Any]:
    """--dry_run with the run's flags: its counted memory against its measured peak."""
    steps = CPU_STEPS if check.cpu else STEPS
    flags = [*run_flags(check, check.work / "dry_run", steps), "--dry_run"]
    result = check.script("pretrain.py", *flags, timeout=300)
    text = result.stdout + result.stderr
    match = DRY_RUN_MEMORY.search(text)
    if match is None:
        raise RuntimeError("no memory line in the --dry_run report")
    measured, counted = float(match.group(1)), float(match.group(2))
    ratio = round(counted / measured, 3) if measured else None
    if check.cpu:  # the CPU's measured peak is the process's RSS, libraries and all
        ratio = None
    return {
        "report": [line for line in text.splitlines() if line.startswith(("dry run", "  "))],
        "measured_gb": measured, "counted_gb": counted, "counted_over_measured": ratio,
        "within_15_percent": ratio is not None and abs(ratio - 1) <= DRY_RUN_TOLERANCE,
    }  # fmt: skip


def last_line_with(text: str, marker: str) -> str:
    lines = [line.strip() for line in text.splitlines() if marker in line]
    return lines[-1] if lines else ""


# ---- the CUDA tests -------------------------------------------------------------------------


def cuda_tests(check: Check) -> dict[str, Any]:
    """pytest -m cuda, without the suite's xdist options (the GPU machine has no xdist)."""
    xml = check.out / "cuda_tests.xml"
    result = check.run(
        sys.executable, "-m", "pytest", "-m", "cuda", "-p", "no:cacheprovider", "-o", "addopts=",
        "-ra", "-q", f"--junitxml={xml}", "tests/test_cuda.py", timeout=420,
    )  # fmt: skip
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    outcome: dict[str, Any] = {"exit": result.returncode, "failed": [], "skipped": {}}
    for case in suite.iter("testcase"):
        name = case.get("name")
        if case.find("failure") is not None or case.find("error") is not None:
            outcome["failed"].append(name)
        elif (skip := case.find("skipped")) is not None:
            outcome["skipped"][name] = skip.get("message", "")
    outcome["tests"] = int(suite.get("tests", 0))
    outcome["passed"] = outcome["tests"] - len(outcome["failed"]) - len(outcome["skipped"])
    return outcome


# ---- the run ---------------------------------------------------------------------------------

STAGE_FUNCTIONS: dict[str, Callable[[Check], dict[str, Any]]] = {
    "bench_train": bench_train, "nanogpt": nanogpt, "pretrain": pretrain, "resume": resume,
    "export_hf": export_hf, "generate": generate, "dry_run": dry_run, "cuda_tests": cuda_tests,
}  # fmt: skip


def targets(summary: dict[str, Any]) -> dict[str, Any]:
    """Issue 22's targets, met or not (None where the stage gave no figure)."""
    bench, dry = summary.get("bench_train") or {}, summary.get("dry_run") or {}
    ratio = summary.get("ours_over_nanogpt")
    mfu = bench.get("mfu") if isinstance(bench, dict) else None
    return {
        "mfu_at_least_0.5": None if mfu is None else mfu >= MFU_TARGET,
        "tokens_per_s_at_least_nanogpt": None if ratio is None else ratio >= NANOGPT_TARGET,
        "dry_run_within_15_percent": dry.get("within_15_percent") if dry else None,
    }


def run_stage(check: Check, name: str) -> None:
    """One stage; its result (or its error) and its seconds go into the summary, saved."""
    print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        check.summary[name] = STAGE_FUNCTIONS[name](check)
        status = "ok"
    except Exception as exc:  # noqa: BLE001  the next stages still run
        check.summary[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        status = "failed"
    seconds = round(time.perf_counter() - started, 1)
    check.summary["stages"][name] = {"status": status, "seconds": seconds}
    print(f"gpu_check: {name} {status} in {seconds} s", file=sys.stderr, flush=True)
    check.save()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("out", type=Path, help="folder for gpu_check.json, gpu_check.log, work/")
    p.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (the CI smoke run)")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=STAGES, help="which to run")
    args = p.parse_args(argv)
    check = Check(args.out, args.cpu)
    started = time.perf_counter()
    check.summary["environment"] = environment(check)
    if not args.cpu and not check.summary["environment"]["cuda_available"]:
        raise SystemExit("gpu_check: no CUDA device here; use --cpu for the smoke run")
    for name in STAGES:
        if name in args.stages:
            run_stage(check, name)
    check.summary["targets"] = targets(check.summary)
    check.summary["total_seconds"] = round(time.perf_counter() - started, 1)
    check.save()
    print(json.dumps(check.summary, indent=1))  # also on stdout: a remote run's output tail
    failed = [n for n, s in check.summary["stages"].items() if s["status"] != "ok"]
    print(f"gpu_check: {check.out / 'gpu_check.json'}; failed: {failed or 'none'}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
