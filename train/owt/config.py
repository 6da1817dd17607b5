"""TrainConfig: pretrain.py's settings as one typed dataclass, with their defaults and checks.

Each field is a command-line flag of the same name (`--batch_size`); its metadata holds the help
text and the flag's group, so the dataclass is the one place a setting is defined:
`build_parser()` makes the argparse parser from it and `TrainConfig.from_args` reads it back.
The trainer takes a TrainConfig, never an argparse Namespace, so it runs without a CLI.

Nothing here imports torch: a typo in a flag is reported in a fraction of a second.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from owt.cli import ArgumentParser, UsageError

COMPILE_CHOICES = ("auto", "on", "off")
DTYPES = ("auto", "float32", "bfloat16")


def flag(default: Any, help: str, group: str, **argparse_options: Any) -> Any:
    """A TrainConfig field that is also the command-line flag --NAME."""
    return field(default=default, metadata={"help": help, "group": group, **argparse_options})


DATA, MODEL, TRAINING, BUDGET, OUTPUTS, DEVICE = (
    "data and outputs",
    "model",
    "training",
    "budget, schedule, optimizer",
    "evaluation, logging, checkpoints",
    "device and robustness",
)
SCHEDULES = ("cosine", "wsd")
OPTIMIZERS = ("adamw", "muon")
_COUNT_SUFFIXES = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def parse_count(text: str) -> int:
    """'500M' -> 500_000_000, '2B' -> 2_000_000_000, '1.5e9', '12000' (for --max_tokens)."""
    value = str(text).strip().replace("_", "").replace(",", "")
    scale = _COUNT_SUFFIXES.get(value[-1:].lower())
    try:
        number = float(value[:-1] if scale else value) * (scale or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (e.g. 500M, 2B)") from None
    if number < 0 or not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (e.g. 500M, 2B)")
    return math.ceil(number)


def parse_duration(text: str) -> float:
    """'90m', '8h', '1h30m', '3600s' or plain seconds -> seconds (for --max_time)."""
    value = str(text).strip().lower()
    try:
        seconds = float(value)
    except ValueError:
        match = _DURATION.fullmatch(value)
        if not value or match is None:
            raise argparse.ArgumentTypeError(
                f"not a duration: {text!r} (e.g. 90m, 8h, 1h30m, 3600s)"
            ) from None
        hours, minutes, secs = (float(g or 0) for g in match.groups())
        seconds = 3600 * hours + 60 * minutes + secs
    if seconds < 0 or not math.isfinite(seconds):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90m, 8h, 1h30m)")
    return seconds


@dataclass
class TrainConfig:
    """Every setting of a training run (see README.md, "Training", for the full story)."""

    data_dir: str = flag("./data/openwebtext_subset", "dataset layout folder", DATA)
    tokenizer_name: str = flag("gpt2", "hub name or local folder", DATA)
    output_dir: str = flag("./checkpoints", "where checkpoints and logs go", DATA)

    vocab_size: int = flag(50257, "vocabulary size (at least the tokenizer's)", MODEL)
    hidden_size: int = flag(768, "width of the residual stream", MODEL)
    num_layers: int = flag(12, "transformer blocks", MODEL)
    num_heads: int = flag(12, "attention heads (hidden_size / num_heads must be even)", MODEL)
    max_position_embeddings: int = flag(1024, "longest sequence the model supports", MODEL)

    recipe: str | None = flag(
        None,
        "a named preset of these flags, recipes/NAME.toml (e.g. time_budget); flags given "
        "explicitly win",
        TRAINING,
    )
    batch_size: int = flag(4, "sequences per micro-batch", TRAINING)
    max_length: int = flag(512, "tokens per sequence", TRAINING)
    gradient_accumulation_steps: int = flag(8, "micro-batches per optimizer step", TRAINING)
    learning_rate: float = flag(5e-5, "peak learning rate", TRAINING)
    num_epochs: int = flag(1, "passes over the training windows", TRAINING)
    weight_decay: float = flag(0.1, "AdamW weight decay, on matrices only", TRAINING)
    warmup_steps: int = flag(-1, "-1: 5%% of all steps, at most 2000", TRAINING)
    min_lr_ratio: float = flag(0.1, "final lr / peak lr", TRAINING)
    grad_clip: float = flag(1.0, "max grad norm; 0 = off", TRAINING)
    seed: int = flag(1337, "seeds the initial weights and the window order", TRAINING)

    max_steps: int = flag(0, "stop after this many optimizer steps; 0 = no limit", BUDGET)
    max_tokens: int = flag(
        0, "stop after this many training tokens (e.g. 500M, 2B); 0 = no limit", BUDGET,
        type=parse_count,
    )  # fmt: skip
    max_time: float = flag(
        0.0, "stop after this much training time (e.g. 90m, 8h, 1h30m, 3600s); 0 = no limit",
        BUDGET, type=parse_duration,
    )  # fmt: skip
    lr_schedule: str = flag(
        "cosine",
        "cosine: warmup, then cosine decay over the budget; wsd: warmup, constant, then a 1-sqrt "
        "decay over the last --cooldown_fraction (a run can be continued with a larger budget)",
        BUDGET,
        choices=SCHEDULES,
    )
    cooldown_fraction: float = flag(0.2, "wsd: the part of the budget spent decaying", BUDGET)
    optimizer: str = flag(
        "adamw",
        "adamw; or muon: Muon for the blocks' weight matrices, AdamW for the embedding and norms",
        BUDGET,
        choices=OPTIMIZERS,
    )
    muon_learning_rate: float = flag(0.02, "muon: peak learning rate of the matrices", BUDGET)

    eval_interval: int = flag(0, "optimizer steps between validations; 0 = per epoch", OUTPUTS)
    eval_max_batches: int = flag(100, "0 = whole validation set", OUTPUTS)
    eval_hellaswag: int = flag(
        0, "score this many HellaSwag items at every validation (val/hellaswag_acc_norm); 0 = off",
        OUTPUTS,
    )  # fmt: skip
    hellaswag_dir: str = flag(
        "./data/hellaswag", "where HellaSwag is downloaded once (--eval_hellaswag)", OUTPUTS
    )
    log_interval: int = flag(10, "optimizer steps between logged points", OUTPUTS)
    save_interval: int = flag(500, "steps between checkpoint_last.pt; 0 = off", OUTPUTS)
    resume: str | None = flag(None, "'auto' (newest in output_dir) or a path", OUTPUTS)
    overwrite: bool = flag(False, "start afresh in an output_dir holding a run", OUTPUTS)

    device: str = flag("auto", "auto (mps, cuda, cpu), or e.g. cuda:1", DEVICE)
    dtype: str = flag("auto", "autocast dtype; auto picks per device", DEVICE, choices=DTYPES)
    compile: str = flag(
        "auto",
        "torch.compile the model: auto = on for CUDA, and for the CPU on Linux, when a C++ "
        "compiler is found; off on MPS (~20-40 s before the first step; a bare --compile = on)",
        DEVICE,
        choices=COMPILE_CHOICES,
        nargs="?",
        const="on",
    )
    fsdp: bool = flag(
        False,
        "under torchrun: shard parameters, gradients and optimizer state (FSDP2) instead of "
        "replicating them (DDP), for models that do not fit one device",
        DEVICE,
    )
    gradient_checkpointing: bool = flag(
        False, "recompute each block in backward: less memory, ~15-30%% more time", DEVICE
    )
    auto_batch: bool = flag(False, "on OOM halve the micro-batch", DEVICE)
    max_bad_steps: int = flag(5, "consecutive non-finite steps before giving up", DEVICE)
    dry_run: bool = flag(
        False,
        "build everything, run a few optimizer steps, report speed, memory and how long the "
        "budget would take; write nothing to --output_dir",
        DEVICE,
    )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainConfig:
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def sequences_per_step(self) -> int:
        """Per process: batch_size x gradient_accumulation_steps."""
        return self.batch_size * self.gradient_accumulation_steps

    def model_config(self):  # -> model.ModelConfig (imported here: model.py imports torch)
        from model import ModelConfig

        return ModelConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            max_position_embeddings=self.max_position_embeddings,
        )

    def validate(self, world_size: int = 1) -> TrainConfig:
        """Raise UsageError naming the fix for the first setting that cannot work with
        `world_size` processes (see `torchrun_world_size`)."""
        self._check_ranges()
        self._check_model_shape()
        self._check_combinations(world_size)
        return self

    def _check_ranges(self) -> None:
        """Each number within its range, on its own."""
        positive = [
            "batch_size", "max_length", "gradient_accumulation_steps", "num_epochs",
            "vocab_size", "hidden_size", "num_layers", "num_heads", "max_position_embeddings",
            "log_interval", "max_bad_steps",
        ]  # fmt: skip
        for name in positive:
            if getattr(self, name) <= 0:
                raise UsageError(f"--{name} must be positive, got {getattr(self, name)}")
        not_negative = [
            "eval_interval", "eval_max_batches", "save_interval", "weight_decay", "max_steps",
            "eval_hellaswag",
        ]  # fmt: skip
        for name in [*not_negative, "grad_clip"]:
            if getattr(self, name) < 0:
                raise UsageError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise UsageError(f"--learning_rate must be a positive number, got {self.learning_rate}")
        if not (self.muon_learning_rate > 0 and math.isfinite(self.muon_learning_rate)):
            raise UsageError(
                f"--muon_learning_rate must be positive, got {self.muon_learning_rate}"
            )
        if not 0 < self.cooldown_fraction <= 1:
            raise UsageError(f"--cooldown_fraction must be in (0, 1], got {self.cooldown_fraction}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise UsageError(f"--min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")

    def _check_model_shape(self) -> None:
        """Attention heads that divide the width, into an even head size (RoPE rotates pairs)."""
        if self.hidden_size % self.num_heads:
            raise UsageError(
                f"--hidden_size {self.hidden_size} is not divisible by --num_heads {self.num_heads}"
            )
        if (self.hidden_size // self.num_heads) % 2:
            raise UsageError(
                f"head size {self.hidden_size // self.num_heads} (hidden_size / num_heads) must "
                "be even for rotary embeddings"
            )

    def _check_combinations(self, world_size: int) -> None:
        """Settings that cannot work together, or with `world_size` processes."""
        if self.optimizer == "muon" and self.fsdp:
            raise UsageError(
                "--optimizer muon needs whole weight matrices, which --fsdp shards: drop --fsdp "
                "(DDP replicates them) or use --optimizer adamw"
            )
        if self.fsdp and world_size == 1:
            raise UsageError(
                "--fsdp shards the model over the processes torchrun starts, and this is one "
                "process: run torchrun --nproc_per_node N train/pretrain.py ... --fsdp, or drop "
                "--fsdp"
            )
        if self.auto_batch and world_size > 1:
            raise UsageError(
                "--auto_batch cannot shrink every process's micro-batch at once under torchrun "
                "(an out-of-memory rank would leave the others waiting in a collective): drop "
                "--auto_batch and lower --batch_size, raising --gradient_accumulation_steps by "
                "the same factor (same tokens per step)"
            )
        if self.max_length > self.max_position_embeddings:
            raise UsageError(
                f"--max_length {self.max_length} > --max_position_embeddings "
                f"{self.max_position_embeddings}: lower max_length or raise "
                "max_position_embeddings"
            )


def torchrun_world_size() -> int:
    """How many processes torchrun started (1 without torchrun), from its environment."""
    return int(os.environ.get("WORLD_SIZE", "1")) if "RANK" in os.environ else 1


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *names: str) -> None:
    """Add the flags of the TrainConfig fields `names` to `parser` (or an argument group)."""
    for f in fields(TrainConfig):
        if f.name not in names:
            continue
        options = {k: v for k, v in f.metadata.items() if k != "group"}
        if f.type in ("bool", bool):
            parser.add_argument(f"--{f.name}", action="store_true", **options)
            continue
        kind = {"int": int, "float": float}.get(str(f.type))
        if kind is not None:
            options.setdefault("type", kind)
        parser.add_argument(f"--{f.name}", default=f.default, **options)


def build_parser(description: str | None = None) -> ArgumentParser:
    """The pretrain.py command line: one flag per TrainConfig field, in groups."""
    parser = ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields(TrainConfig):
        title = f.metadata["group"]
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        add_flags(groups[title], f.name)
    return parser
