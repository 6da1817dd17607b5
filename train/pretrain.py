"""Pretrain a Llama-style language model on a prepared dataset.

    uv run train/pretrain.py --data_dir ./data/openwebtext_subset --output_dir ./checkpoints

Runs under torchrun too (DistributedDataParallel, or FSDP2 sharding with --fsdp). Exit codes:
0 done, 1 training failed (out of memory, diverged), 2 bad input, 130/143 stopped by
SIGINT/SIGTERM (resumable).
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import shlex
import sys
import tempfile
from pathlib import Path

import torch

from model import LlamaForTraining, ModelConfig
from owt import distributed, perf
from owt.checkpointing import (
    CheckpointError,
    load_checkpoint,
    remove_stale_temp_files,
    resumable_checkpoints,
)
from owt.dataset_layout import DatasetNotFoundError, find_dataset
from owt.token_cache import DatasetFileError, load_or_build_token_cache
from owt.token_windows import TokenWindows
from owt.tokenization import TokenizerLoadError, load_encoder
from owt.trainer import Trainer, TrainingFailed, UsageError, is_out_of_memory, out_of_memory_advice

EXIT_FAILED, EXIT_USAGE = 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        print(f"pretrain.py: error: {message} (see --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data and outputs")
    g.add_argument("--data_dir", default="./data/openwebtext_subset", help="dataset layout folder")
    g.add_argument("--tokenizer_name", default="gpt2", help="hub name or local folder")
    g.add_argument("--output_dir", default="./checkpoints")
    g = p.add_argument_group("model")
    g.add_argument("--vocab_size", type=int, default=50257)
    g.add_argument("--hidden_size", type=int, default=768)
    g.add_argument("--num_layers", type=int, default=12)
    g.add_argument("--num_heads", type=int, default=12)
    g.add_argument("--max_position_embeddings", type=int, default=1024)
    g = p.add_argument_group("training")
    g.add_argument("--batch_size", type=int, default=4, help="sequences per micro-batch")
    g.add_argument("--max_length", type=int, default=512, help="tokens per sequence")
    g.add_argument("--gradient_accumulation_steps", type=int, default=8)
    g.add_argument("--learning_rate", type=float, default=5e-5, help="peak learning rate")
    g.add_argument("--num_epochs", type=int, default=1)
    g.add_argument("--weight_decay", type=float, default=0.1)
    g.add_argument(
        "--warmup_steps", type=int, default=-1, help="-1: 5%% of all steps, at most 2000"
    )
    g.add_argument("--min_lr_ratio", type=float, default=0.1, help="final lr / peak lr")
    g.add_argument("--grad_clip", type=float, default=1.0, help="max grad norm; 0 = off")
    g.add_argument("--seed", type=int, default=1337)
    g = p.add_argument_group("evaluation, logging, checkpoints")
    g.add_argument("--eval_interval", type=int, default=0, help="optimizer steps; 0 = per epoch")
    g.add_argument("--eval_max_batches", type=int, default=100, help="0 = whole validation set")
    g.add_argument("--log_interval", type=int, default=10, help="optimizer steps")
    g.add_argument(
        "--save_interval", type=int, default=500, help="steps between checkpoint_last.pt; 0 = off"
    )
    g.add_argument("--resume", default=None, help="'auto' (newest in output_dir) or a path")
    g.add_argument(
        "--overwrite", action="store_true", help="start afresh in an output_dir holding a run"
    )
    g = p.add_argument_group("device and robustness")
    g.add_argument("--device", default="auto", help="auto (mps, cuda, cpu), or e.g. cuda:1")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    perf.add_compile_argument(g)
    g.add_argument(
        "--fsdp",
        action="store_true",
        help="under torchrun: shard parameters, gradients and optimizer state (FSDP2) instead "
        "of replicating them (DDP), for models that do not fit one device",
    )
    g.add_argument(
        "--gradient_checkpointing",
        action="store_true",
        help="recompute each block in backward: less memory, ~15-30%% more time",
    )
    g.add_argument("--auto_batch", action="store_true", help="on OOM halve the micro-batch")
    g.add_argument("--max_bad_steps", type=int, default=5, help="consecutive non-finite steps")
    return p


def validate_args(args: argparse.Namespace) -> None:
    """Cheap checks before any heavy work; raise UsageError naming the fix."""
    positive = [
        "batch_size", "max_length", "gradient_accumulation_steps", "num_epochs", "vocab_size",
        "hidden_size", "num_layers", "num_heads", "max_position_embeddings", "log_interval",
        "max_bad_steps",
    ]  # fmt: skip
    for name in positive:
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name} must be positive, got {getattr(args, name)}")
    for name in ["eval_interval", "eval_max_batches", "save_interval", "weight_decay", "grad_clip"]:
        if getattr(args, name) < 0:
            raise UsageError(f"--{name} must be >= 0, got {getattr(args, name)}")
    if not (args.learning_rate > 0 and math.isfinite(args.learning_rate)):
        raise UsageError(f"--learning_rate must be a positive number, got {args.learning_rate}")
    if not 0 <= args.min_lr_ratio <= 1:
        raise UsageError(f"--min_lr_ratio must be in [0, 1], got {args.min_lr_ratio}")
    if args.hidden_size % args.num_heads:
        raise UsageError(
            f"--hidden_size {args.hidden_size} is not divisible by --num_heads {args.num_heads}"
        )
    if (args.hidden_size // args.num_heads) % 2:
        raise UsageError(
            f"head size {args.hidden_size // args.num_heads} (hidden_size / num_heads) must be "
            "even for rotary embeddings"
        )
    if args.max_length > args.max_position_embeddings:
        raise UsageError(
            f"--max_length {args.max_length} > --max_position_embeddings "
            f"{args.max_position_embeddings}: lower max_length or raise max_position_embeddings"
        )


def resolve_device(name: str) -> torch.device:
    """'auto' picks MPS, then CUDA, then CPU."""
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


def check_output_dir(path: Path, resume: str | None, overwrite: bool) -> None:
    """Refuse a file, an unwritable folder, or a folder holding a run we were not told to resume."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"--output_dir {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UsageError(f"--output_dir {path} is not writable ({exc.strerror})") from None
    if resume is None and not overwrite and resumable_checkpoints(path):
        raise UsageError(
            f"--output_dir {path} already holds a run: pass --resume auto to continue it, "
            "--overwrite to start afresh there, or choose another --output_dir"
        )


def resume_command() -> str:
    argv = list(sys.argv[1:])
    for flag in ("--resume", "--overwrite"):
        while flag in argv:
            i = argv.index(flag)
            del argv[i : i + (2 if flag == "--resume" else 1)]
    argv = [a for a in argv if not a.startswith(("--resume=", "--overwrite"))]
    return shlex.join(["uv", "run", "train/pretrain.py", *argv, "--resume", "auto"])


def run(args: argparse.Namespace) -> int:
    validate_args(args)
    device = resolve_device(args.device)
    if device.type == "cpu":
        perf.tune_cpu_allocator()  # reuse freed activation memory instead of mmap churn
    perf.setup_backend(device)  # TF32 on CUDA
    dtype = perf.resolve_dtype(device, args.dtype)
    compile_model = perf.resolve_compile(device, args.compile)
    if args.fsdp and device.type not in ("cuda", "cpu"):
        raise UsageError(f"--fsdp runs on CUDA or CPU, not {device.type}: drop --fsdp")
    world = distributed.init_world(device.type)
    if args.fsdp and world.size == 1:
        raise UsageError(
            "--fsdp shards the model over the processes torchrun starts, and this is one "
            "process: run torchrun --nproc_per_node N train/pretrain.py ... --fsdp, or drop --fsdp"
        )
    if world.size > 1 and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    output_dir = Path(args.output_dir)
    if world.is_main:
        check_output_dir(output_dir, args.resume, args.overwrite)
        remove_stale_temp_files(output_dir)
    resume_from = None
    if args.resume == "auto":
        found = resumable_checkpoints(output_dir)
        resume_from = found[0] if found else None
        if resume_from is None:
            print(
                "--resume auto: no checkpoint in output_dir yet, starting afresh", file=sys.stderr
            )
    elif args.resume:
        resume_from = Path(args.resume)
    # Read before tokenizing, so a missing, truncated or unsafe file fails fast.
    resume_state = load_checkpoint(resume_from) if resume_from else None

    files = find_dataset(args.data_dir)
    encoder = load_encoder(args.tokenizer_name)
    if encoder.vocab_size > args.vocab_size:
        raise UsageError(
            f"tokenizer '{args.tokenizer_name}' has {encoder.vocab_size} tokens > --vocab_size "
            f"{args.vocab_size}: raise --vocab_size to at least {encoder.vocab_size}"
        )
    # Rank 0 tokenizes; the others wait, then read the finished cache.
    if world.is_main:
        cache, built = load_or_build_token_cache(Path(args.data_dir), files, encoder)
        print(f"token cache {'built' if built else 'reused'}: {cache.directory}", file=sys.stderr)
    distributed.barrier(world)
    if not world.is_main:
        cache, _ = load_or_build_token_cache(Path(args.data_dir), files, encoder)

    train_windows = TokenWindows(cache.tokens("train"), args.max_length)
    val_windows = TokenWindows(cache.tokens("validation"), args.max_length)
    window = args.max_length + 1
    if len(val_windows) == 0:
        raise UsageError(
            f"validation split has {cache.num_tokens['validation']} tokens, too few for one "
            f"window of {window} (max_length + 1): lower --max_length or add validation documents"
        )
    per_step = args.batch_size * args.gradient_accumulation_steps * world.size
    if len(train_windows) < per_step:
        raise UsageError(
            f"train split has {len(train_windows)} windows of {window} tokens, fewer than one "
            f"optimizer step needs ({per_step}): lower --batch_size, "
            "--gradient_accumulation_steps or --max_length"
        )

    torch.manual_seed(args.seed)
    config = ModelConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        max_position_embeddings=args.max_position_embeddings,
    )
    model = LlamaForTraining(config)
    model.gradient_checkpointing = args.gradient_checkpointing
    if not args.fsdp:  # FSDP moves each block to the device as it shards it (Trainer)
        model = model.to(device)
    trainer = Trainer(
        args, world, device, dtype, model, cache, train_windows, val_windows,
        tokenizer=encoder, compile_model=compile_model,
    )  # fmt: skip
    trainer.resume_hint = resume_command()
    if resume_state is not None:
        trainer.restore(resume_state, resume_from)
        del resume_state
    if world.is_main:
        run_config = {
            "args": vars(args),
            "model_config": config.to_dict(),
            "num_parameters": model.num_parameters(),
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
            "compiled": compile_model,
            "world_size": world.size,
            "tokens_per_optimizer_step": per_step * args.max_length,
            "steps_per_epoch": trainer.sampler.steps_per_epoch,
            "total_steps": trainer.total_steps,
            "warmup_steps": trainer.warmup_steps,
            "dataset_fingerprint": cache.fingerprint,
            "token_cache": {"directory": str(cache.directory), "num_tokens": cache.num_tokens},
        }
        (output_dir / "config.json").write_text(json.dumps(run_config, indent=2) + "\n")
        print(
            f"model: {model.num_parameters() / 1e6:.1f}M parameters on {device} "
            f"({run_config['dtype']}{', compiled' if compile_model else ''}); "
            f"{trainer.total_steps} optimizer steps of "
            f"{run_config['tokens_per_optimizer_step']:,} tokens",
            file=sys.stderr,
        )
    try:
        return trainer.fit()
    finally:
        distributed.close_world(world)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (UsageError, DatasetNotFoundError, TokenizerLoadError, DatasetFileError,
            CheckpointError) as exc:  # fmt: skip
        print(f"pretrain.py: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingFailed as exc:
        print(f"pretrain.py: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(
            "pretrain.py: interrupted before training started; nothing was lost.", file=sys.stderr
        )
        return 130
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        where = exc.filename or "writing"
        print(f"pretrain.py: error: no space left on the device ({where}); nothing partial "
              "was kept: free some space and run again", file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        print(f"pretrain.py: error: {out_of_memory_advice(args, resolve_device(args.device))}",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
