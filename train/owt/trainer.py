"""The training loop: accumulation, clipping, schedule, evaluation, checkpoints, recovery.

One Trainer per process, configured by a TrainConfig. Only the main rank writes files or
prints; under torchrun each rank takes its own slice of every step's windows and the model is
wrapped for DDP or sharded by FSDP2 (distributed.parallelize).

    trainer = Trainer(config, model, train_windows, val_windows, device=device)
    exit_code = trainer.fit()
"""

from __future__ import annotations

import contextlib
import math
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch

from owt import distributed, hellaswag
from owt.checkpointing import (
    Progress,
    check_resumable,
    global_batch_hint,
    restore_training_state,
    run_signature,
    save_checkpoint,
    training_state,
)
from owt.cli import ScriptError
from owt.config import TrainConfig
from owt.devices import autocast, empty_cache, is_out_of_memory, to_device
from owt.distributed import World
from owt.evaluation import Evaluation, Evaluator
from owt.metrics import Metrics, PhaseTimes, StepLog, log_line
from owt.optim import build_optimizer, set_learning_rates
from owt.outputs import (
    BEST_MODEL,
    LAST_CHECKPOINT,
    TENSORBOARD_DIR,
    epoch_checkpoint,
    newest_checkpoint,
)
from owt.sampling import sample_text
from owt.schedule import plan
from owt.stopping import Clock, GracefulStop, StopRequested
from owt.token_windows import EpochSampler, TokenWindows, micro_batches

SAMPLE_PROMPT = "The meaning of life is"


class TrainingFailed(ScriptError):
    """Training cannot go on (out of memory, diverged): exit status 1."""


def out_of_memory_advice(config: TrainConfig, device: torch.device) -> str:
    b, a, n = config.batch_size, config.gradient_accumulation_steps, config.max_length
    smaller = f"--batch_size {max(1, b // 2)} --gradient_accumulation_steps {a * 2}"
    text = (
        f"Out of memory on {device.type} at --batch_size {b} --max_length {n}. Try {smaller} "
        f"(same tokens per step), or --max_length {max(1, n // 2)}, or add --auto_batch"
    )
    if device.type == "mps":
        text += "; see 'Mac (MPS) memory' in README.md (PYTORCH_MPS_HIGH_WATERMARK_RATIO)"
    return text + "."


def is_compile_failure(exc: BaseException) -> bool:
    """An error of torch.compile itself (Dynamo, or a backend such as Inductor), not of the
    model: training can go on without compiling."""
    from torch._dynamo.exc import TorchDynamoException

    return isinstance(exc, TorchDynamoException)


class Trainer:
    """Trains `model` on `train_windows` as `config` says (see the module docstring)."""

    def __init__(
        self,
        config: TrainConfig,
        model: torch.nn.Module,
        train_windows: TokenWindows,
        val_windows: TokenWindows,
        *,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        world: World | None = None,
        dataset_fingerprint: str = "",
        tokenizer: Any = None,
        token_bytes: torch.Tensor | None = None,
        compile_model: bool = False,
    ) -> None:
        world = world or World()
        self.config, self.world, self.device = config, world, device
        self.model = model  # unwrapped: what checkpoints save
        self.train_windows = train_windows
        self.tokenizer = tokenizer  # for the sample logged at each validation
        self.output_dir = Path(config.output_dir)
        self.dtype = dtype
        self.autocast = lambda: autocast(device, dtype)
        self.batch_size = config.batch_size  # --auto_batch may halve it
        self.accumulation = config.gradient_accumulation_steps
        self.sampler = EpochSampler(
            len(train_windows), config.sequences_per_step, config.seed, world.rank, world.size
        )
        self.budget, self.schedule = plan(
            config, self.sampler.steps_per_epoch, self.tokens_per_step
        )
        self.signature = run_signature(
            model.config, dataset_fingerprint, config.max_length, config.seed,
            config.sequences_per_step * world.size,
        )  # fmt: skip
        self.fsdp = config.fsdp and world.size > 1
        # FSDP shards in place (parameters become DTensors): before the optimizer sees them.
        self.step_model = distributed.parallelize(
            model, world, device, fsdp=self.fsdp, compile_model=compile_model
        )
        self.eager = getattr(self.step_model, "_orig_mod", self.step_model)  # if compile fails
        self.optimizer = build_optimizer(
            model, config.learning_rate, config.weight_decay, device.type,
            config.optimizer, config.muon_learning_rate,
        )  # fmt: skip
        self.evaluator = Evaluator(
            val_windows, config.batch_size, config.eval_max_batches, device, world=world,
            fsdp=self.fsdp, autocast=self.autocast, token_bytes=token_bytes,
        )  # fmt: skip
        self.progress = Progress()
        self.clock = Clock(config.max_time, world)
        self.resumed = False
        self.bad_in_a_row = 0  # consecutive non-finite steps
        self.last_evaluation: Evaluation | None = None
        self.best: Evaluation | None = None
        self.stop = GracefulStop()
        self.resume_hint = "add --resume auto to the same command"
        self.hellaswag_items: list[hellaswag.Item] = []  # --eval_hellaswag's, set by the caller
        self.phases: PhaseTimes | None = None  # benchmarks/bench_train.py times the phases

    @property
    def tokens_per_step(self) -> int:
        return self.sampler.windows_per_step * self.world.size * self.config.max_length

    @property
    def total_steps(self) -> int:
        """Optimizer steps the run makes unless time runs out first."""
        return self.budget.step_limit

    @property
    def warmup_steps(self) -> int | None:
        return self.schedule.warmup_steps

    def log(self, message: str) -> None:
        log_line(message, self.world.is_main)

    # ---- checkpoints -------------------------------------------------------------------------

    def save(self, name: str, resumable: bool = True) -> None:
        """Write a checkpoint from the main rank. Every rank calls this (FSDP gathers shards)."""
        if not (self.world.is_main or self.fsdp):
            return
        seen = self.last_evaluation if resumable else self.best
        state = training_state(
            self.model, self.optimizer if resumable else None, self.progress,
            signature=self.signature, tokenizer_name=self.config.tokenizer_name,
            val_loss=seen.loss if seen else None, val_bpb=seen.bpb if seen else None,
            fsdp=self.fsdp,
        )  # fmt: skip
        if self.world.is_main:
            save_checkpoint(state, self.output_dir / name)

    def restore(self, state: dict[str, Any], path: Path) -> None:
        """Continue from a resumable checkpoint read by load_checkpoint, if it fits this run."""
        saved = state.get("signature", {}).get("sequences_per_step")
        hint = global_batch_hint(saved, self.batch_size, self.accumulation, self.world.size)
        check_resumable(state, path, self.signature, hint)
        self.progress = restore_training_state(state, self.model, self.optimizer, self.fsdp)
        self.resumed = True
        self.log(f"resumed from {path} at step {self.progress.step}, epoch {self.progress.epoch}")

    # ---- one optimizer step ------------------------------------------------------------------

    def _accumulate(self, indices: np.ndarray) -> torch.Tensor:
        """Forward+backward over one step's windows; return the step's mean loss (on device)."""
        batches = micro_batches(indices, self.batch_size)
        step_loss = torch.zeros((), device=self.device)
        for i, batch in enumerate(batches):
            with self._phase("data"):
                x, y = to_device(self.device, *self.train_windows.batch(batch))
            last = i == len(batches) - 1
            # DDP: all-reduce gradients only on the step's last micro-batch. FSDP reduce-scatters
            # after every micro-batch: skipping it would keep whole unsharded gradients on each
            # rank until the last one, the memory FSDP is there to save.
            skip_sync = not last and self.world.size > 1 and not self.fsdp
            with self._phase("fwd_bwd"):
                with self.step_model.no_sync() if skip_sync else contextlib.nullcontext():
                    with self.autocast():
                        _, loss = self.step_model(x, y)
                    loss = loss / len(batches)
                    loss.backward()
            step_loss += loss.detach()
        return step_loss

    def _phase(self, name: str) -> contextlib.AbstractContextManager:
        """Times `name` into `self.phases` when a benchmark set it; else nothing."""
        return self.phases.phase(name) if self.phases is not None else contextlib.nullcontext()

    def train_step(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Accumulate and clip one step's gradients: (mean loss, gradient norm), on device.
        On out-of-memory with --auto_batch, halve the micro-batch and redo the step; if
        torch.compile fails (MPS before torch 2.8, no C++ compiler), redo it eagerly."""
        while True:
            try:
                step_loss = self._accumulate(indices)
                max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
                # FSDP: a DTensor (each rank's partial sum); clipping used the full norm.
                return step_loss, distributed.full_tensor(grad_norm)
            except Exception as exc:
                compile_failed = is_compile_failure(exc) and self.step_model is not self.eager
                if not (compile_failed or is_out_of_memory(exc)):
                    raise
                reason = str(exc).strip().splitlines()[0][:200]
            # Outside `except`: its traceback no longer holds this step's activations.
            self.optimizer.zero_grad(set_to_none=True)
            empty_cache(self.device)
            if compile_failed:
                self.step_model = self.eager
                self.log(f"torch.compile failed ({reason}); training eagerly (--compile off)")
                continue
            if not self.config.auto_batch or self.batch_size == 1:
                raise TrainingFailed(out_of_memory_advice(self.config, self.device))
            self.batch_size //= 2
            self.accumulation = math.ceil(len(indices) / self.batch_size)
            self.log(
                f"out of memory: micro-batch now {self.batch_size}, "
                f"accumulation {self.accumulation} (same tokens per step)"
            )

    def optimizer_step(
        self, indices: np.ndarray, log: StepLog, metrics: Metrics
    ) -> torch.Tensor | None:
        """One optimizer step at the scheduled learning rate; a non-finite loss or gradient
        skips the update (and too many in a row stop the run). Returns the step's mean loss
        (on the device), or None if the update was skipped."""
        progress, config = self.progress, self.config
        factor = self.schedule.factor(progress.step, progress.elapsed_seconds)
        lr = config.learning_rate * factor
        set_learning_rates(self.optimizer, lr, config.muon_learning_rate * factor)
        step_loss, grad_norm = self.train_step(indices)
        distributed.mean_over_ranks(step_loss, self.world)
        # One host sync per optimizer step (never per micro-batch): skip bad updates.
        finite = bool(torch.isfinite(step_loss + grad_norm))
        if finite:
            self.optimizer.step()
            self.bad_in_a_row = 0
        else:
            self.bad_in_a_row += 1
            progress.skipped_steps += 1
            metrics.scalars(progress.step, {"train/skipped_steps": progress.skipped_steps})
            self.log(f"step {progress.step}: non-finite loss or gradient, update skipped")
        self.optimizer.zero_grad(set_to_none=True)
        progress.step += 1
        progress.step_in_epoch += 1
        self.clock.tick(progress)
        left = self.clock.left(progress)
        log.step(progress.step, step_loss if finite else None, lr, grad_norm, left)
        if self.bad_in_a_row >= config.max_bad_steps:
            raise TrainingFailed(
                f"{self.bad_in_a_row} optimizer steps in a row had a non-finite loss or "
                "gradient. Likely causes: learning rate too high (lower --learning_rate), too "
                "short warmup, or float16 overflow (use bfloat16 or float32). Last good "
                f"checkpoint: {newest_checkpoint(self.output_dir) or 'none yet'}"
            )
        return step_loss if finite else None

    # ---- evaluation --------------------------------------------------------------------------

    def evaluate(self) -> Evaluation:
        """Loss and bits per byte on (up to --eval_max_batches of) the validation windows."""
        return self.evaluator(self.model)

    def validate(self, metrics: Metrics) -> Evaluation:
        """Evaluate, log the curve points and a text sample, keep best_model.pt up to date."""
        result = self.last_evaluation = self.evaluate()
        metrics.scalars(self.progress.step, result.scalars())
        # Under FSDP every rank decodes (forward all-gathers the shards, rank 0 cannot run it
        # alone); they pick the same tokens (same weights, prompt and seeded generator), so they
        # make the same number of forward calls.
        if self.tokenizer is not None and (self.world.is_main or self.fsdp):
            sample = sample_text(self.model, self.tokenizer, SAMPLE_PROMPT)
            metrics.text(self.progress.step, "samples", sample)
        if self.hellaswag_items and (self.world.is_main or self.fsdp):
            with self.autocast():
                metrics.scalars(self.progress.step, hellaswag.validation_scalars(
                    self.model, self.tokenizer, self.hellaswag_items, self.device,
                    self.config.max_length, self.batch_size * self.config.max_length,
                ))  # fmt: skip
        if result.loss < self.progress.best_val_loss:
            self.progress.best_val_loss, self.progress.best_val_bpb = result.loss, result.bpb
            self.best = result
            self.save(BEST_MODEL, resumable=False)
        return result

    # ---- the loop ----------------------------------------------------------------------------

    def ended_by(self) -> str | None:
        """What ended the run: "epochs", "max_steps", "max_tokens", "max_time"; None if not."""
        if self.progress.epoch >= self.config.num_epochs:
            return "epochs"
        return self.budget.ended_by(self.progress.step, self.progress.elapsed_seconds)

    def fit(self) -> int:
        """Train until the budget is spent; return the exit code (0, or 128 + signal)."""
        progress, config, spe = self.progress, self.config, self.sampler.steps_per_epoch
        # Points an interrupted run logged after its checkpoint are dropped and redone.
        metrics = Metrics(
            self.output_dir / TENSORBOARD_DIR,
            enabled=self.world.is_main,
            purge_step=progress.step + 1 if self.resumed else None,
        )
        # Under a time budget the step count is unknown: the bar counts steps and shows the
        # time left instead of an ETA for a step limit that may never be reached.
        bar_total = None if self.budget.time_bound else self.total_steps
        log = StepLog(
            metrics, total_steps=bar_total, start_step=progress.step,
            tokens_per_step=self.tokens_per_step, interval=config.log_interval,
            device=self.device, enabled=self.world.is_main,
        )  # fmt: skip
        try:
            if not self.resumed:
                self.validate(metrics)  # the step-0 point of the validation curve
            self.stop.install()
            self.clock.start(progress)
            while self.ended_by() is None:
                for indices in self.sampler.step_windows(progress.epoch, progress.step_in_epoch):
                    self.optimizer_step(indices, log, metrics)
                    if progress.step_in_epoch < spe and self.ended_by() is not None:
                        break  # a budget ran out inside the epoch
                    self._periodic(metrics, at_epoch_end=progress.step_in_epoch == spe)
                else:
                    progress.epoch, progress.step_in_epoch = progress.epoch + 1, 0
                    self._end_of(
                        metrics, epoch_checkpoint(progress.epoch), f"epoch {progress.epoch}"
                    )
                    continue
                self._end_of(metrics, LAST_CHECKPOINT, f"{self.ended_by()} reached")
        except StopRequested:
            self.save(LAST_CHECKPOINT)
            log.close()  # the bar's last line before ours
            self.log(
                f"Stopped at step {progress.step}; saved {self.output_dir / LAST_CHECKPOINT}."
                f"\nResume with:\n  {self.resume_hint}"
            )
            return 128 + (self.stop.signum or signal.SIGTERM)  # a rank told by another
        finally:
            self.stop.uninstall()
            log.close()
            metrics.close()
        self.log(summary(self))
        return 0

    def _periodic(self, metrics: Metrics, at_epoch_end: bool) -> None:
        """--eval_interval validation, --save_interval checkpoint, a requested stop."""
        step, config = self.progress.step, self.config
        if config.eval_interval and step % config.eval_interval == 0 and not at_epoch_end:
            self.validate(metrics)
        if config.save_interval and step % config.save_interval == 0:
            self.save(LAST_CHECKPOINT)
        self._stop_if_asked()

    def _end_of(self, metrics: Metrics, checkpoint: str, what: str) -> None:
        """What an epoch, and the end of a budget, end with: validation and a checkpoint."""
        result = self.validate(metrics)
        self.save(checkpoint)
        bpb = f", bpb {result.bpb:.4f}" if result.bpb is not None else ""
        self.log(f"{what}: validation loss {result.loss:.4f}{bpb}")
        self._stop_if_asked()

    def _stop_if_asked(self) -> None:
        """All ranks stop at the same step when any of them got SIGINT/SIGTERM."""
        if distributed.any_rank(self.stop.signum is not None, self.world):
            raise StopRequested


def summary(trainer: Trainer) -> str:
    """The end-of-run line: what ended it, the best validation loss and bits per byte."""
    progress, out = trainer.progress, trainer.output_dir
    bpb = f" ({progress.best_val_bpb:.4f} bits per byte)" if progress.best_val_bpb else ""
    return (
        f"Done ({trainer.ended_by()}, step {progress.step}, "
        f"{progress.elapsed_seconds / 60:.1f} min of training): best validation loss "
        f"{progress.best_val_loss:.4f}{bpb}. Outputs in {out} "
        f"(tensorboard --logdir {out / TENSORBOARD_DIR})"
    )
