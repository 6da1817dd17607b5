"""A training run from a checked TrainConfig to the loop: device, process group, checkpoint to
resume, tokenizer and token cache, windows, model, Trainer. pretrain.py calls `run` once its
cheap checks (flags, output folder, dataset files) have passed.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model import LlamaForTraining
from owt import distributed, hellaswag
from owt.atomic_files import write_json_atomically
from owt.checkpointing import load_checkpoint
from owt.cli import UsageError
from owt.config import TrainConfig, torchrun_world_size
from owt.devices import (
    MPS_MEMORY_ENV,
    device_memory_bytes,
    format_dtype,
    is_out_of_memory,
    limit_mps_memory,
    resolve_compile,
    resolve_device,
    resolve_dtype,
    setup_backend,
    tune_cpu_allocator,
)
from owt.distributed import World
from owt.dry_run import dry_run
from owt.memory import fit_advice
from owt.optim import check_available
from owt.outputs import CONFIG_FILE, remove_stale_temp_files
from owt.token_cache import TokenCache, load_or_build_token_cache
from owt.token_windows import TokenWindows
from owt.tokenization import TextEncoder, load_encoder
from owt.trainer import Trainer, TrainingFailed, out_of_memory_advice


@dataclass(frozen=True)
class Runtime:
    """Where this process trains and how."""

    device: torch.device
    dtype: torch.dtype
    compile_model: bool
    world: World


def start_runtime(config: TrainConfig) -> Runtime:
    """Pick the device, dtype and compile choice, tune the backend, join torchrun's group."""
    device = resolve_device(config.device)
    distributed.check_launch(device.type, torchrun_world_size(), config.fsdp)
    check_available(config.optimizer)  # before hours of tokenizing, not after
    if device.type == "cpu":
        tune_cpu_allocator()  # before torch allocates anything large
    if device.type == "mps":
        cap = limit_mps_memory()
        if cap is not None:
            print(
                f"MPS memory capped at {cap / 1e9:.1f} GB, Metal's recommended working set, so "
                f"an out-of-memory error comes before swapping ({MPS_MEMORY_ENV} overrides it)",
                file=sys.stderr,
            )
    setup_backend(device)
    world = distributed.init_world(device.type)
    if world.size > 1 and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    return Runtime(
        device, resolve_dtype(device, config.dtype), resolve_compile(device, config.compile), world
    )


def load_tokenizer(config: TrainConfig) -> TextEncoder:
    encoder = load_encoder(config.tokenizer_name)
    if encoder.vocab_size > config.vocab_size:
        raise UsageError(
            f"tokenizer '{config.tokenizer_name}' has {encoder.vocab_size} tokens > --vocab_size "
            f"{config.vocab_size}: raise --vocab_size to at least {encoder.vocab_size}"
        )
    return encoder


def token_windows(
    config: TrainConfig, files: dict[str, list[Path]], encoder: TextEncoder, world: World
) -> tuple[TokenCache, TokenWindows, TokenWindows]:
    """The token cache (rank 0 builds it, the others wait) and its training/validation windows,
    checked to hold at least one validation window and one optimizer step."""
    if world.is_main:
        cache, built = load_or_build_token_cache(Path(config.data_dir), files, encoder)
        print(f"token cache {'built' if built else 'reused'}: {cache.directory}", file=sys.stderr)
    distributed.wait_for_main(world)
    if not world.is_main:
        cache, _ = load_or_build_token_cache(Path(config.data_dir), files, encoder)
    train = TokenWindows(cache.tokens("train"), config.max_length)
    validation = TokenWindows(cache.tokens("validation"), config.max_length)
    window = config.max_length + 1
    if len(validation) == 0:
        raise UsageError(
            f"validation split has {cache.num_tokens['validation']} tokens, too few for one "
            f"window of {window} (max_length + 1): lower --max_length or add validation documents"
        )
    per_step = config.sequences_per_step * world.size
    if len(train) < per_step:
        raise UsageError(
            f"train split has {len(train)} windows of {window} tokens, fewer than one "
            f"optimizer step needs ({per_step}): lower --batch_size, "
            "--gradient_accumulation_steps or --max_length"
        )
    return cache, train, validation


def build_model(config: TrainConfig, device: torch.device) -> LlamaForTraining:
    """The model with its seeded initial weights; on `device` unless FSDP will move it."""
    torch.manual_seed(config.seed)
    model = LlamaForTraining(config.model_config())
    model.gradient_checkpointing = config.gradient_checkpointing
    # FSDP moves each block to the device as it shards it (distributed.parallelize).
    return model if config.fsdp else model.to(device)


def warn_if_too_big(config: TrainConfig, runtime: Runtime) -> None:
    """Say before training whether a step fits the device by the memory count (owt.memory):
    on a Mac an oversized step swaps the machine to a crawl instead of failing."""
    limit = device_memory_bytes(runtime.device)
    if limit is None:
        return
    advice = fit_advice(
        config.model_config(), config.batch_size, config.max_length, limit,
        dtype=runtime.dtype, gradient_checkpointing=config.gradient_checkpointing,
    )  # fmt: skip
    if advice is not None:
        print(f"warning: {advice}", file=sys.stderr)


def resume_command() -> str:
    """This process's command line with --resume auto instead of --resume/--overwrite."""
    argv, kept = sys.argv[1:], []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--resume":
            skip = True
        elif not arg.startswith(("--resume=", "--overwrite")):
            kept.append(arg)
    return shlex.join(["uv", "run", "train/pretrain.py", *kept, "--resume", "auto"])


def run_record(
    config: TrainConfig,
    runtime: Runtime,
    trainer: Trainer,
    cache: TokenCache,
    recipe: dict[str, Any] | None = None,
) -> dict:
    """config.json: the settings and what they resolved to ("result" is added at the end);
    `recipe` is recipes.parse_with_recipe's record of the --recipe used, if any."""
    model = trainer.model
    return {
        "args": config.to_dict(),
        "recipe": recipe,
        "model_config": model.config.to_dict(),
        "num_parameters": model.num_parameters(),
        "device": str(runtime.device),
        "dtype": format_dtype(runtime.dtype),
        "compiled": runtime.compile_model,
        "world_size": runtime.world.size,
        "tokens_per_optimizer_step": trainer.tokens_per_step,
        "steps_per_epoch": trainer.sampler.steps_per_epoch,
        "total_steps": trainer.total_steps,
        "budget": {"step_limit_by": trainer.budget.limited_by, "max_time": config.max_time},
        "warmup_steps": trainer.warmup_steps,
        "dataset_fingerprint": cache.fingerprint,
        "token_cache": {
            "directory": str(cache.directory),
            "num_tokens": cache.num_tokens,
            "num_bytes": cache.num_bytes,
        },
    }


def run_result(trainer: Trainer) -> dict:
    """config.json's "result": what ended the run and how far it got."""
    progress, last = trainer.progress, trainer.last_evaluation
    return {
        "ended_by": trainer.ended_by(),
        "steps": progress.step,
        "tokens": progress.step * trainer.tokens_per_step,
        "elapsed_seconds": round(progress.elapsed_seconds, 3),
        "best_val_loss": progress.best_val_loss,
        "best_val_bpb": progress.best_val_bpb,
        "final_val_loss": last.loss if last else None,
        "final_val_bpb": last.bpb if last else None,
        "compiled": trainer.step_model is not trainer.eager,
    }


def hellaswag_items(config: TrainConfig, world: World) -> list[hellaswag.Item]:
    """--eval_hellaswag's items: rank 0 downloads them (once, into --hellaswag_dir); under FSDP
    the other ranks then read the same files, since every rank must run the forwards."""
    items = []
    if world.is_main:
        items = hellaswag.load_items(config.hellaswag_dir, config.eval_hellaswag)
    distributed.wait_for_main(world)
    if config.fsdp and not world.is_main:
        items = hellaswag.load_items(config.hellaswag_dir, config.eval_hellaswag)
    return items


def build_trainer(
    config: TrainConfig,
    files: dict[str, list[Path]],
    runtime: Runtime,
    resume_state: dict[str, Any] | None,
    resume_from: Path | None,
) -> tuple[Trainer, TokenCache]:
    """Tokenizer, token cache and windows, model and Trainer, restored if resuming."""
    device, world = runtime.device, runtime.world
    encoder = load_tokenizer(config)
    cache, train_windows, val_windows = token_windows(config, files, encoder, world)
    if device.type == "mps":
        warn_if_too_big(config, runtime)
    model = build_model(config, device)
    trainer = Trainer(
        config, model, train_windows, val_windows, device=device, dtype=runtime.dtype,
        world=world, dataset_fingerprint=cache.fingerprint, tokenizer=encoder,
        token_bytes=torch.from_numpy(encoder.token_byte_lengths()),
        compile_model=runtime.compile_model,
    )  # fmt: skip
    trainer.resume_hint = resume_command()
    if config.eval_hellaswag:
        trainer.hellaswag_items = hellaswag_items(config, world)
    if resume_state is not None:
        trainer.restore(resume_state, resume_from)
    return trainer, cache


def train(
    config: TrainConfig,
    files: dict[str, list[Path]],
    resume_from: Path | None,
    runtime: Runtime,
    recipe: dict[str, Any] | None = None,
) -> int:
    """Everything after the runtime is up: returns the loop's exit code."""
    world = runtime.world
    output_dir = Path(config.output_dir)
    if world.is_main and not config.dry_run:
        remove_stale_temp_files(output_dir)
    # Read before tokenizing, so a truncated or unsafe file fails fast.
    resume_state: dict[str, Any] | None = load_checkpoint(resume_from) if resume_from else None
    trainer, cache = build_trainer(config, files, runtime, resume_state, resume_from)
    del resume_state
    if config.dry_run:
        if world.is_main:
            print("\n".join(dry_run(trainer)))
        return 0
    record = run_record(config, runtime, trainer, cache, recipe)
    if world.is_main:
        write_json_atomically(output_dir / CONFIG_FILE, record)
        print(
            f"model: {trainer.model.num_parameters() / 1e6:.1f}M parameters on {runtime.device} "
            f"({record['dtype']}{', compiled' if runtime.compile_model else ''}); "
            f"{trainer.total_steps} optimizer steps of {trainer.tokens_per_step:,} tokens"
            + (f" or {config.max_time / 60:g} min" if config.max_time else ""),
            file=sys.stderr,
        )
    code = trainer.fit()
    if world.is_main:
        record["result"] = run_result(trainer)
        write_json_atomically(output_dir / CONFIG_FILE, record)
    return code


def run(
    config: TrainConfig,
    files: dict[str, list[Path]],
    resume_from: Path | None,
    recipe: dict[str, Any] | None = None,
) -> int:
    """Train as `config` says (`recipe`: what --recipe set, for config.json); an out-of-memory
    error becomes advice on what to change."""
    runtime = start_runtime(config)
    try:
        return train(config, files, resume_from, runtime, recipe)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
    finally:
        distributed.close_world(runtime.world)
    raise TrainingFailed(out_of_memory_advice(config, runtime.device))
