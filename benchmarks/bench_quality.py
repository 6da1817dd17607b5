"""Model quality per unit of time: a nanoGPT-style baseline against the recommended recipe.

    uv run benchmarks/bench_quality.py --max_time 10m

Both sides train the same small model (4 layers x 256, seq 256, 4,096 tokens per optimizer step,
GPT-2 tokenizer) through train/pretrain.py for the same --max_time on real English that nothing
here wrote: Python's documentation and the docstrings of the Python files installed with the
project (the standard library and site-packages, read with `ast`, never imported; each at least
300 characters, deduplicated). Documents are split by a hash of their text, 2% held out for
validation.

    (a) baseline  AdamW at nanoGPT's small-model learning rate (1e-3), cosine, fp32, eager
    (b) recipe    bf16 autocast where the CPU has it natively, torch.compile, Muon for the
                  matrices, warmup-stable-decay to 0, tuned learning rates: pretrain.py
                  --recipe time_budget (recipes/time_budget.toml)

It prints one JSON object: each side's validation bits per byte at the end and its curve, and
`time_ratio`, the fraction of the budget (b) needed to reach (a)'s final bits per byte
(interpolated along (b)'s curve; the target is <= 0.25). Time is counted as pretrain.py counts
a budget: from the first optimizer step, compilation and validations included.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "train"))

MODEL = [
    "--hidden_size",
    "256",
    "--num_layers",
    "4",
    "--num_heads",
    "4",
    "--max_length",
    "256",
    "--max_position_embeddings",
    "256",
    "--batch_size",
    "8",
    "--gradient_accumulation_steps",
    "2",
]  # fmt: skip  (8 x 256 x 2 = 4,096 tokens)
BASELINE = ["--optimizer", "adamw", "--learning_rate", "1e-3", "--lr_schedule", "cosine",
            "--dtype", "float32", "--compile", "off"]  # fmt: skip
# The recipe measured here is recipes/time_budget.toml itself, as users run it.
RECIPE = ["--recipe", "time_budget", "--dtype", "auto", "--compile", "auto"]
MIN_CHARS = 300
# Validation every 10 steps on the same 8 batches (16,384 tokens): a curve fine enough to read
# the time to a given bits per byte off it, for ~10% of each side's time.
EVAL_INTERVAL, EVAL_BATCHES = 10, 8


def docstrings() -> list[str]:
    """Python's documentation topics and every long docstring of the installed Python files."""
    from textdata import english_documents

    documents, seen = list(english_documents()), set()
    paths = sysconfig.get_paths()
    for root in sorted({Path(paths["stdlib"]), Path(paths["purelib"])}):
        for path in sorted(root.rglob("*.py")):
            if {"test", "tests"} & set(path.parts):
                continue
            try:
                tree = ast.parse(path.read_bytes())
            except (SyntaxError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef):
                    text = ast.get_docstring(node)
                    if text and len(text) >= MIN_CHARS and text not in seen:
                        seen.add(text)
                        documents.append(text)
    return documents


def build_dataset(folder: Path) -> Path:
    """DATA_DIR with train/ and validation/ (2% of documents, chosen by a hash of their text)."""
    from textdata import write_layout

    if (folder / "validation").is_dir():
        return folder
    train, validation = [], []
    for text in docstrings():
        held_out = hashlib.sha256(text.encode()).digest()[0] < 256 * 0.02
        (validation if held_out else train).append(text)
    print(f"dataset: {len(train)} train, {len(validation)} validation documents", file=sys.stderr)
    return write_layout(folder, train, validation)


def curve(out: Path) -> list[tuple[float, float]]:
    """(seconds since the first optimizer step, validation bits per byte) of a run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    points = events.Scalars("val/bpb")
    start = points[0].wall_time  # step 0's validation: training starts right after it
    return [(p.wall_time - start, p.value) for p in points]


def time_to_reach(points: list[tuple[float, float]], target: float) -> float | None:
    """When the curve first reaches `target`, interpolated linearly (None if it never does)."""
    for (t0, v0), (t1, v1) in zip(points, points[1:], strict=False):
        if v1 <= target:
            return t1 if v1 == v0 else t0 + (t1 - t0) * (v0 - target) / (v0 - v1)
    return None


def train(name: str, data: Path, tokenizer: Path, work: Path, max_time: str, extra: list) -> dict:
    out = work / name
    shutil.rmtree(out, ignore_errors=True)  # each run from scratch, its curves alone
    command = [
        sys.executable, str(REPO / "train" / "pretrain.py"), "--data_dir", str(data),
        "--output_dir", str(out), "--tokenizer_name", str(tokenizer), "--device", "cpu",
        "--max_time", max_time, "--num_epochs", "1000", "--eval_interval", str(EVAL_INTERVAL),
        "--eval_max_batches", str(EVAL_BATCHES), "--save_interval", "0", "--overwrite", *MODEL,
        *extra,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return read_run(out)


def read_run(out: Path) -> dict:
    result = json.loads((out / "config.json").read_text())["result"]
    return {"result": result, "curve": [(round(t, 1), round(v, 4)) for t, v in curve(out)]}


def ran_with(out: Path, max_time: float) -> bool:
    """Whether `out` holds a finished run of this benchmark's settings and `max_time`."""
    if not (out / "config.json").is_file():
        return False
    config = json.loads((out / "config.json").read_text())
    ran = config["args"]
    return "result" in config and (
        ran["max_time"],
        ran["eval_interval"],
        ran["eval_max_batches"],
    ) == (
        max_time,
        EVAL_INTERVAL,
        EVAL_BATCHES,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--max_time", default="10m", help="each side's training budget")
    p.add_argument("--work_dir", default=str(REPO / "benchmarks" / ".quality"))
    p.add_argument(
        "--reuse_baseline",
        action="store_true",
        help="keep WORK_DIR/baseline from an earlier run with the same --max_time",
    )
    p.add_argument("--recipe", nargs=argparse.REMAINDER, default=None,
                   help="pretrain.py flags for side (b) instead of RECIPE")  # fmt: skip
    args = p.parse_args()
    from owt.config import parse_duration
    from textdata import save_gpt2_tokenizer

    work = Path(args.work_dir)
    data = build_dataset(work / "data")
    tokenizer = work / "gpt2"
    if not (tokenizer / "tokenizer.json").is_file():
        save_gpt2_tokenizer(tokenizer)
    earlier = work / "baseline"
    if args.reuse_baseline and ran_with(earlier, parse_duration(args.max_time)):
        a = read_run(earlier)
    else:
        a = train("baseline", data, tokenizer, work, args.max_time, BASELINE)
    b = train("recipe", data, tokenizer, work, args.max_time, args.recipe or RECIPE)
    target = a["curve"][-1][1]
    reached = time_to_reach(b["curve"], target)
    budget = b["result"]["elapsed_seconds"]
    print(json.dumps({
        "max_time": args.max_time,
        "baseline": {"flags": BASELINE, **a},
        "recipe": {"flags": args.recipe or RECIPE, **b},
        "baseline_final_bpb": target,
        "recipe_final_bpb": b["curve"][-1][1],
        "time_ratio": None if reached is None else round(reached / budget, 3),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
