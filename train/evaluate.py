"""How good is my model? Score checkpoints and transformers models side by side.

    uv run train/evaluate.py --checkpoint checkpoints/best_model.pt --hf_model gpt2 \\
        --data_dir ./data/openwebtext_subset --hellaswag --limit 1000

--data_dir: loss, perplexity and bits per byte on the layout's validation split, every model on
the same documents with its own tokenizer (bits per byte is the figure that compares across
tokenizers). --hellaswag: accuracy on HellaSwag's validation split, scored as llm.c does.
Prints a table and writes the same as JSON (--output, default eval.json beside the first
checkpoint); a checkpoint inside a pretrain.py output folder also gets the figures in that
run's TensorBoard, under eval/. Models are loaded one at a time, so a 16 GB Mac scores GPT-2
and a 124M checkpoint in one command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from owt.atomic_files import write_json_atomically
from owt.cli import ArgumentParser, UsageError, run_main
from owt.config import parse_count
from owt.dataset_layout import HOW_TO_CREATE, DatasetNotFoundError, check_parquet_files
from owt.dataset_layout import split_files as layout_split_files
from owt.folder_lock import FolderInUse, hold_folder
from owt.outputs import run_folder

DEFAULT_MAX_TOKENS = 500_000
BPB_NOTE = (
    "bpb (bits per UTF-8 byte) compares models with different tokenizers: every model scored "
    "the same documents; loss and ppl compare only models that share a tokenizer."
)


class AddModel(argparse.Action):
    """--checkpoint and --hf_model append (kind, name) to one list, in command-line order."""

    def __call__(self, parser, namespace, value, option_string=None) -> None:  # noqa: ANN001
        models = list(getattr(namespace, self.dest) or [])
        models.append((option_string.lstrip("-"), value))
        setattr(namespace, self.dest, models)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    models = p.add_argument_group("what to score (repeatable, scored in the order given)")
    models.add_argument(
        "--checkpoint", dest="models", action=AddModel, metavar="PATH",
        help="a .pt file written by pretrain.py (best_model.pt, checkpoint_*.pt)",
    )  # fmt: skip
    models.add_argument(
        "--hf_model", dest="models", action=AddModel, metavar="NAME_OR_DIR",
        help="a transformers causal LM: hub name (gpt2) or folder (export_hf.py's output)",
    )  # fmt: skip
    on = p.add_argument_group("on what")
    on.add_argument("--data_dir", help="dataset layout whose validation split to score")
    on.add_argument(
        "--max_tokens", type=parse_count, default=DEFAULT_MAX_TOKENS,
        help="score the first documents holding this many tokens (of the first model's "
        "tokenizer; e.g. 2M); 0 = the whole split (default: %(default)s)",
    )  # fmt: skip
    on.add_argument("--hellaswag", action="store_true", help="score HellaSwag's validation split")
    on.add_argument("--limit", type=int, default=0, help="HellaSwag: the first N items; 0 = all")
    on.add_argument(
        "--hellaswag_dir", default="./data/hellaswag",
        help="where HellaSwag is downloaded once and read from then on (default: %(default)s)",
    )  # fmt: skip
    how = p.add_argument_group("how")
    how.add_argument(
        "--max_length", type=int, default=0,
        help="tokens per window; 0 = the shortest context any of the models was trained on",
    )  # fmt: skip
    how.add_argument("--batch_size", type=int, default=4, help="windows per forward (default 4)")
    how.add_argument("--device", default="auto", help="auto (mps, cuda, cpu), or a torch device")
    how.add_argument("--dtype", default="auto", help="auto (bf16 where native), fp32 or bf16")
    how.add_argument("--tokenizer_name", help="the checkpoints' tokenizer instead of their own")
    how.add_argument("--output", help="results as JSON (default: eval.json beside the checkpoint)")
    args = p.parse_args(argv)
    if not args.models:
        p.error("nothing to score: pass --checkpoint PATH and/or --hf_model NAME_OR_DIR")
    if not args.data_dir and not args.hellaswag:
        p.error("nothing to score on: pass --data_dir DIR (validation text) and/or --hellaswag")
    for name in ("max_tokens", "limit", "max_length"):
        if getattr(args, name) < 0:
            p.error(f"--{name} must be >= 0")
    if args.batch_size < 1:
        p.error("--batch_size must be >= 1")
    return args


def validation_files(data_dir: str) -> list[Path]:
    """The layout's validation parquet files, checked; DatasetNotFoundError saying what to run."""
    files = layout_split_files(data_dir, "validation")
    if not files:
        raise DatasetNotFoundError(
            f"Dataset not found: {data_dir} has no validation/*.parquet to score. "
            + HOW_TO_CREATE.format(d=data_dir)
        )
    check_parquet_files(files)
    return files


def claim_run_folders(models: list[tuple[str, str]], output: Path) -> set[Path]:
    """Hold, for the whole evaluation, the lock of each pretrain.py run folder this writes
    into (eval.json, eval/ scalars in its TensorBoard), so no run starts there meanwhile.
    eval.json bound for the folder of a live run is refused (FolderInUse: exit 2, choose
    another --output); the eval/ scalars of such a run are skipped with a warning. Returns the
    run folders whose TensorBoard may be written."""
    output_run = run_folder(output)
    if output_run is not None:
        hold_folder(output_run, "--output")
    writable = {output_run} - {None}
    for run in {run_folder(name) for kind, name in models if kind == "checkpoint"} - {None}:
        if run in writable:
            continue
        try:
            hold_folder(run, "the checkpoint's run folder")
        except FolderInUse as exc:
            print(f"warning: no eval/ scalars in its TensorBoard: {exc}", file=sys.stderr)
            continue
        writable.add(run)
    return writable


def default_output(models: list[tuple[str, str]]) -> Path:
    checkpoints = [name for kind, name in models if kind == "checkpoint"]
    return Path(checkpoints[0]).parent / "eval.json" if checkpoints else Path("eval.json")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # The cheap checks first: a wrong path is reported before torch loads.
    for kind, name in args.models:
        if kind == "checkpoint" and not Path(name).is_file():
            raise UsageError(
                f"Checkpoint not found: {name}. Pass a best_model.pt or checkpoint_*.pt that "
                "pretrain.py wrote (in its --output_dir)."
            )
    files = validation_files(args.data_dir) if args.data_dir else None
    output = Path(args.output) if args.output else default_output(args.models)
    writable_runs = claim_run_folders(args.models, output)

    from owt import evaluating  # torch, transformers: seconds to import

    results = evaluating.evaluate_models(args, files)
    print(evaluating.table(results["models"]))
    if files is not None:
        print(BPB_NOTE)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(output, results)  # a Ctrl-C leaves the previous file, never half
    print(f"wrote {output}", file=sys.stderr)
    evaluating.log_to_runs(results["models"], writable_runs)


if __name__ == "__main__":
    run_main(main, interrupted="nothing was written")
