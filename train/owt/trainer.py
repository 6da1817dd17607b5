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
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch

from owt import distributed
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
from owt.metrics import Metrics, StepLog, log_line
from owt.optim import build_optimizer, set_learning_rate
from owt.outputs import (
    BEST_MODEL,
    LAST_CHECKPOINT,
    TENSORBOARD_DIR,
    epoch_checkpoint,
    resumable_checkpoints,
)
from owt.sampling import sample_text
from owt.schedule import cosine_lr, warmup_steps_for
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


class _StopRequested(Exception):
    """Raised inside the loop after a SIGINT/SIGTERM, once the current step is complete."""


class GracefulStop:
    """While installed: the first SIGINT/SIGTERM asks the loop to finish its step, save and
    exit; a second one exits at once. `uninstall` puts the previous handlers back."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            os._exit(128 + signum)  # writes are atomic, so nothing is left half-valid
        self.signum = signum
        # os.write, not print: a handler that prints can re-enter a write in progress.
        name = signal.Signals(signum).name
        notice = f"\n{name}: finishing this step and saving; press Ctrl-C again to quit at once.\n"
        os.write(2, notice.encode())


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
        compile_model: bool = False,
    ) -> None:
        world = world or World()
        self.config, self.world, self.device = config, world, device
        self.model = model  # unwrapped: what checkpoints save
        self.train_windows, self.val_windows = train_windows, val_windows
        self.tokenizer = tokenizer  # for the sample logged at each validation
        self.output_dir = Path(config.output_dir)
        self.autocast = lambda: autocast(device, dtype)
        self.batch_size = config.batch_size  # --auto_batch may halve it
        self.accumulation = config.gradient_accumulation_steps
        self.sampler = EpochSampler(
            len(train_windows), config.sequences_per_step, config.seed, world.rank, world.size
        )
        self.total_steps = self.sampler.steps_per_epoch * config.num_epochs
        self.warmup_steps = warmup_steps_for(self.total_steps, config.warmup_steps)
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
            model, config.learning_rate, config.weight_decay, device.type
        )
        self.progress = Progress()
        self.resumed = False
        self.bad_in_a_row = 0  # consecutive non-finite steps
        self.stop = GracefulStop()
        self.resume_hint = "add --resume auto to the same command"

    @property
    def tokens_per_step(self) -> int:
        return self.sampler.windows_per_step * self.world.size * self.config.max_length

    def log(self, message: str) -> None:
        log_line(message, self.world.is_main)

    # ---- checkpoints -------------------------------------------------------------------------

    def save(self, name: str, val_loss: float | None, resumable: bool = True) -> None:
        """Write a checkpoint from the main rank. Every rank calls this (FSDP gathers shards)."""
        if not (self.world.is_main or self.fsdp):
            return
        state = training_state(
            self.model, self.optimizer if resumable else None, self.progress,
            signature=self.signature, tokenizer_name=self.config.tokenizer_name,
            val_loss=val_loss, fsdp=self.fsdp,
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

    def last_good(self) -> str:
        found = resumable_checkpoints(self.output_dir)
        return str(found[0]) if found else "none yet"

    # ---- one optimizer step ------------------------------------------------------------------

    def _accumulate(self, indices: np.ndarray) -> torch.Tensor:
        """Forward+backward over one step's windows; return the step's mean loss (on device)."""
        batches = micro_batches(indices, self.batch_size)
        step_loss = torch.zeros((), device=self.device)
        for i, batch in enumerate(batches):
            x, y = to_device(self.device, *self.train_windows.batch(batch))
            last = i == len(batches) - 1
            # DDP: all-reduce gradients only on the step's last micro-batch. FSDP reduce-scatters
            # after every micro-batch: skipping it would keep whole unsharded gradients on each
            # rank until the last one, the memory FSDP is there to save.
            skip_sync = not last and self.world.size > 1 and not self.fsdp
            with self.step_model.no_sync() if skip_sync else contextlib.nullcontext():
                with self.autocast():
                    _, loss = self.step_model(x, y)
                loss = loss / len(batches)
                loss.backward()
            step_loss += loss.detach()
        return step_loss

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

    def optimizer_step(self, indices: np.ndarray, log: StepLog, metrics: Metrics) -> None:
        """One optimizer step at the scheduled learning rate; a non-finite loss or gradient
        skips the update (and too many in a row stop the run)."""
        progress = self.progress
        lr = cosine_lr(
            progress.step, self.config.learning_rate, self.warmup_steps, self.total_steps,
            self.config.min_lr_ratio,
        )  # fmt: skip
        set_learning_rate(self.optimizer, lr)
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
        log.step(progress.step, step_loss if finite else None, lr, grad_norm)
        if self.bad_in_a_row >= self.config.max_bad_steps:
            raise TrainingFailed(
                f"{self.bad_in_a_row} optimizer steps in a row had a non-finite loss or "
                "gradient. Likely causes: learning rate too high (lower --learning_rate), too "
                "short warmup, or float16 overflow (use bfloat16 or float32). Last good "
                f"checkpoint: {self.last_good()}"
            )

    # ---- evaluation --------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean validation loss over (up to eval_max_batches of) the validation windows."""
        self.model.eval()
        n, size = len(self.val_windows), self.config.batch_size
        starts = range(0, n, size)
        if self.config.eval_max_batches:
            starts = starts[: self.config.eval_max_batches]
        total = torch.zeros(2, device=self.device)  # (sum of losses * windows, windows)
        mine = starts[self.world.rank :: self.world.size]
        # FSDP all-gathers parameters inside forward, so every rank must run as many forwards:
        # a rank with one batch fewer runs the first batch again and does not count it.
        rounds = math.ceil(len(starts) / self.world.size) if self.fsdp else len(mine)
        for i in range(rounds):
            start = mine[i] if i < len(mine) else starts[0]
            x, y = to_device(
                self.device, *self.val_windows.batch(range(start, min(n, start + size)))
            )
            with self.autocast():
                _, loss = self.model(x, y)
            if i < len(mine):
                windows = torch.tensor(len(x), device=self.device)
                total += torch.stack([loss.float() * len(x), windows])
        distributed.mean_over_ranks(total, self.world)
        self.model.train()
        return (total[0] / total[1]).item()

    def validate(self, metrics: Metrics) -> float:
        """Evaluate, log the curve point and a text sample, keep best_model.pt up to date."""
        val_loss = self.evaluate()
        metrics.scalars(
            self.progress.step,
            {"val/loss": val_loss, "val/perplexity": math.exp(min(val_loss, 50.0))},
        )
        # Under FSDP every rank decodes (forward all-gathers the shards, rank 0 cannot run it
        # alone); they pick the same tokens (same weights, prompt and seeded generator), so they
        # make the same number of forward calls.
        if self.tokenizer is not None and (self.world.is_main or self.fsdp):
            sample = sample_text(self.model, self.tokenizer, SAMPLE_PROMPT)
            metrics.text(self.progress.step, "samples", sample)
        if val_loss < self.progress.best_val_loss:
            self.progress.best_val_loss = val_loss
            self.save(BEST_MODEL, val_loss, resumable=False)
        return val_loss

    # ---- the loop ----------------------------------------------------------------------------

    def fit(self) -> int:
        """Train to the end of the last epoch; return the exit code (0, or 128 + signal)."""
        progress, config = self.progress, self.config
        # Points an interrupted run logged after its checkpoint are dropped and redone.
        metrics = Metrics(
            self.output_dir / TENSORBOARD_DIR,
            enabled=self.world.is_main,
            purge_step=progress.step + 1 if self.resumed else None,
        )
        log = StepLog(
            metrics, total_steps=self.total_steps, start_step=progress.step,
            tokens_per_step=self.tokens_per_step, interval=config.log_interval,
            device=self.device, enabled=self.world.is_main,
        )  # fmt: skip
        self.model.train()
        val_loss = None
        try:
            if not self.resumed:
                self.validate(metrics)  # the step-0 point of the validation curve
            self.stop.install()
            while progress.epoch < config.num_epochs:
                for indices in self.sampler.step_windows(progress.epoch, progress.step_in_epoch):
                    self.optimizer_step(indices, log, metrics)
                    epoch_end = progress.step_in_epoch == self.sampler.steps_per_epoch
                    if config.eval_interval and progress.step % config.eval_interval == 0:
                        if not epoch_end:
                            val_loss = self.validate(metrics)
                    if config.save_interval and progress.step % config.save_interval == 0:
                        self.save(LAST_CHECKPOINT, val_loss)
                    self._stop_if_asked()
                progress.epoch, progress.step_in_epoch = progress.epoch + 1, 0
                val_loss = self.validate(metrics)
                self.save(epoch_checkpoint(progress.epoch), val_loss)
                self.log(f"epoch {progress.epoch}: validation loss {val_loss:.4f}")
                self._stop_if_asked()
        except _StopRequested:
            self.save(LAST_CHECKPOINT, None)
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
        self.log(
            f"Done: best validation loss {progress.best_val_loss:.4f}. Outputs in "
            f"{self.output_dir} (tensorboard --logdir {self.output_dir / TENSORBOARD_DIR})"
        )
        return 0

    def _stop_if_asked(self) -> None:
        """All ranks stop at the same step when any of them got SIGINT/SIGTERM."""
        if distributed.any_rank(self.stop.signum is not None, self.world):
            raise _StopRequested
