"""Pretrain a Llama-style language model on a prepared dataset.

    uv run train/pretrain.py --data_dir ./data/openwebtext_subset --output_dir ./checkpoints
    uv run train/pretrain.py --recipe time_budget --max_time 1h --dry_run   # recipes/*.toml

Runs under torchrun too (DistributedDataParallel, or FSDP2 sharding with --fsdp). Exit codes:
0 done, 1 training failed (out of memory, diverged), 2 bad input or --output_dir in use by another
run, 130/143 stopped by SIGINT/SIGTERM (resumable).
"""

from __future__ import annotations

import sys
from pathlib import Path

from owt.cli import run_main
from owt.config import TrainConfig, build_parser, torchrun_world_size
from owt.dataset_layout import check_parquet_files, find_dataset
from owt.outputs import claim_output_dir, resume_path
from owt.recipes import describe, parse_with_recipe


def main(argv: list[str] | None = None) -> int:
    args, recipe = parse_with_recipe(lambda: build_parser(__doc__), argv)
    config = TrainConfig.from_args(args).validate(torchrun_world_size())
    if recipe is not None:
        print(describe(recipe), file=sys.stderr)
    # The cheap checks first: a wrong flag, folder or file is reported before torch loads.
    output_dir = Path(config.output_dir)
    if not config.dry_run:  # a dry run writes nothing there
        claim_output_dir(output_dir, config.resume, config.overwrite)
    resume_from = resume_path(config.resume, output_dir)
    files = find_dataset(config.data_dir)
    for paths in files.values():
        check_parquet_files(paths)

    from owt import pretraining  # torch, transformers: seconds to import

    return pretraining.run(config, files, resume_from, recipe)


if __name__ == "__main__":
    run_main(main, interrupted="nothing was lost: training had not started")
