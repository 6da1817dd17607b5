"""The training loop: accumulation, clipping, schedule, evaluation, checkpoints, recovery.

One Trainer per process. Only the main rank writes files or prints; under torchrun the model is
wrapped in DistributedDataParallel (or sharded with FSDP2 under --fsdp) and each rank takes its
own slice of every step's windows.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from model import ModelConfig
from owt import distributed
from owt.checkpointing import (
    resumable_checkpoints,
    save_checkpoint,
    signature_differences,
)
from owt.metrics import Metrics
from owt.optim import build_optimizer, learning_rate_at
from owt.sampling import sample_text
from owt.token_cache import TokenCache
from owt.token_windows import EpochSampler, micro_batches


class UsageError(Exception):
    """Bad input: reported as one line on stderr with exit code 2, before anything is written."""


class TrainingFailed(Exception):
    """Training cannot go on (out of memory, diverged): reported with exit code 1."""


SAMPLE_PROMPT = "The meaning of life is"


class _StopRequested(Exception):
    """Raised inside the loop after a SIGINT/SIGTERM, once the current step is complete."""


@dataclass
class Progress:
    """Where training is; saved in every checkpoint so a run resumes exactly."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0
    best_val_loss: float = math.inf
    skipped_steps: int = 0  # non-finite updates skipped


def run_signature(args: argparse.Namespace, config: ModelConfig, cache: TokenCache, world) -> dict:
    """What must match for a resume to continue the same run."""
    return {
        "model_config": config.to_dict(),
        "dataset_fingerprint": cache.fingerprint,
        "max_length": args.max_length,
        "seed": args.seed,
        "sequences_per_step": args.batch_size * args.gradient_accumulation_steps * world.size,
    }


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()  # MPS


def out_of_memory_advice(args: argparse.Namespace, device: torch.device) -> str:
    b, a, n = args.batch_size, args.gradient_accumulation_steps, args.max_length
    smaller = f"--batch_size {max(1, b // 2)} --gradient_accumulation_steps {a * 2}"
    text = (
        f"Out of memory on {device.type} at --batch_size {b} --max_length {n}. Try {smaller} "
        f"(same tokens per step), or --max_length {max(1, n // 2)}, or add --auto_batch"
    )
    if device.type == "mps":
        text += "; see 'MPS memory' in README.md (PYTORCH_MPS_HIGH_WATERMARK_RATIO)"
    return text + "."


class GracefulStop:
    """First SIGINT/SIGTERM: finish the step, save, exit. Second: exit at once."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            os._exit(128 + signum)  # writes are atomic, so nothing is left half-valid
        self.signum = signum
        # os.write, not print: a handler that prints can re-enter a write in progress.
        name = signal.Signals(signum).name
        notice = f"\n{name}: finishing this step and saving; press Ctrl-C again to quit at once.\n"
        os.write(2, notice.encode())


class Trainer:
    """The training loop. Only the main rank writes files or prints bars."""

    def __init__(
        self, args, world, device, dtype, model, cache, train_windows, val_windows,
        tokenizer=None, compile_model=False,
    ):  # fmt: skip
        self.args, self.world, self.device = args, world, device
        self.tokenizer = tokenizer  # for the sample logged at each validation
        self.model = model  # unwrapped: what checkpoints save
        self.train_windows, self.val_windows = train_windows, val_windows
        self.output_dir = Path(args.output_dir)
        self.signature = run_signature(args, model.config, cache, world)
        self.autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else None
        self.batch_size = args.batch_size
        self.accumulation = args.gradient_accumulation_steps
        self.sampler = EpochSampler(
            len(train_windows),
            self.batch_size * self.accumulation,
            args.seed,
            world.rank,
            world.size,
        )
        self.total_steps = self.sampler.steps_per_epoch * args.num_epochs
        self.warmup_steps = (
            args.warmup_steps if args.warmup_steps >= 0 else min(2000, self.total_steps // 20)
        )
        # FSDP shards in place (parameters become DTensors), so before the optimizer sees them.
        self.fsdp = args.fsdp and world.size > 1
        if self.fsdp:
            distributed.shard_model(model, world, device)
        self.optimizer = build_optimizer(model, args.learning_rate, args.weight_decay, device.type)
        self.step_model = model
        if world.size > 1 and not self.fsdp:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            self.step_model = DistributedDataParallel(model, device_ids=ids)
        if compile_model:
            # Compiled around DDP, not inside it: torch then splits the graph at DDP's bucket
            # boundaries, so gradient all-reduces overlap the rest of the backward.
            self.step_model = torch.compile(self.step_model)
        self.progress = Progress()
        self.resumed = False
        self.stop = GracefulStop()
        self.resume_hint = "add --resume auto to the same command"

    # ---- checkpoints -------------------------------------------------------------------------

    def state(self, val_loss: float | None, resumable: bool = True) -> dict[str, Any]:
        """The checkpoint dict. Under FSDP a collective: every rank calls it, rank 0 gets it."""
        if self.fsdp:
            model_state = distributed.gather_model_state(self.model)
        else:
            model_state = self.model.state_dict()
        state = {
            "model": model_state,
            "model_config": self.model.config.to_dict(),
            "tokenizer_name": self.args.tokenizer_name,
            "step": self.progress.step,
            "epoch": self.progress.epoch,
            "val_loss": val_loss,
        }
        if resumable:
            rng = {"cpu": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            if self.fsdp:
                optimizer_state = distributed.gather_optimizer_state(self.model, self.optimizer)
            else:
                optimizer_state = self.optimizer.state_dict()
            state |= {
                "optimizer": optimizer_state,
                "progress": asdict(self.progress),
                "signature": self.signature,
                "rng": rng,
            }
        return state

    def save(self, name: str, val_loss: float | None, resumable: bool = True) -> None:
        """Write a checkpoint from the main rank. Every rank calls this (FSDP gathers shards)."""
        if not (self.world.is_main or self.fsdp):
            return
        state = self.state(val_loss, resumable)
        if not self.world.is_main:
            return
        path = self.output_dir / name
        try:
            save_checkpoint(state, path)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise UsageError(
                    f"No space left on the device while writing {path}; the previous "
                    "checkpoints are intact. Free some space, then resume."
                ) from None
            raise

    def restore(self, state: dict[str, Any], path: Path) -> None:
        """Continue from a resumable checkpoint read by load_checkpoint, if it fits this run."""
        if "progress" not in state:
            raise UsageError(f"{path} holds weights only (e.g. best_model.pt); resume from a "
                             "checkpoint_epoch_N.pt or checkpoint_last.pt")  # fmt: skip
        differences = signature_differences(state["signature"], self.signature)
        if differences:
            raise UsageError(
                f"Cannot resume from {path}: this run differs in "
                + "; ".join(differences)
                + self._global_batch_hint(state["signature"].get("sequences_per_step"))
            )
        # Checkpoints hold full tensors whatever wrote them: FSDP shards them on the way in.
        if self.fsdp:
            distributed.load_model_state(self.model, state["model"])
            distributed.load_optimizer_state(self.model, self.optimizer, state["optimizer"])
        else:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.progress = Progress(**state["progress"])
        self.resumed = True
        self.log(f"resumed from {path} at step {self.progress.step}, epoch {self.progress.epoch}")
        torch.set_rng_state(state["rng"]["cpu"].cpu())
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])

    def _global_batch_hint(self, saved: int | None) -> str:
        """How to resume with another number of processes: keep the global batch."""
        current = self.signature["sequences_per_step"]
        if saved is None or saved == current:
            return ""
        hint = (
            ". sequences_per_step is batch_size x gradient_accumulation_steps x processes "
            f"({self.batch_size} x {self.accumulation} x {self.world.size} now); any number of "
            "processes resumes a run if that product is unchanged"
        )
        per_process = self.batch_size * self.world.size
        if saved % per_process == 0:
            hint += f": here --gradient_accumulation_steps {saved // per_process}"
        return hint

    # ---- one optimizer step ------------------------------------------------------------------

    def _context(self):
        return self.autocast if self.autocast is not None else contextlib.nullcontext()

    def _accumulate(self, indices) -> torch.Tensor:
        """Forward+backward over one step's windows; return the step's mean loss (on device)."""
        batches = micro_batches(indices, self.batch_size)
        step_loss = torch.zeros((), device=self.device)
        pin = self.device.type == "cuda"
        for i, batch in enumerate(batches):
            x, y = self.train_windows.batch(batch)
            if pin:
                x, y = x.pin_memory(), y.pin_memory()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            last = i == len(batches) - 1
            # DDP: all-reduce gradients only on the step's last micro-batch. FSDP reduce-scatters
            # after every micro-batch: skipping it would keep whole unsharded gradients on each
            # rank until the last one, the memory FSDP is there to save.
            sync = (
                contextlib.nullcontext()
                if last or self.world.size == 1 or self.fsdp
                else self.step_model.no_sync()
            )
            with sync:
                with self._context():
                    _, loss = self.step_model(x, y)
                loss = loss / len(batches)
                loss.backward()
            step_loss += loss.detach()
        return step_loss

    def _step(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Accumulate, clip; on OOM with --auto_batch, halve the micro-batch and redo the step."""
        while True:
            try:
                step_loss = self._accumulate(indices)
                max_norm = self.args.grad_clip if self.args.grad_clip > 0 else math.inf
                params = self.model.parameters()
                grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
                # FSDP: a DTensor (each rank's partial sum); clipping used the full norm.
                return step_loss, distributed.full_tensor(grad_norm)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                self.optimizer.zero_grad(set_to_none=True)
                if not self.args.auto_batch or self.batch_size == 1:
                    raise TrainingFailed(out_of_memory_advice(self.args, self.device)) from None
                self.batch_size //= 2
                self.accumulation = math.ceil(len(indices) / self.batch_size)
                empty_cache(self.device)
                self.log(
                    f"out of memory: micro-batch now {self.batch_size}, "
                    f"accumulation {self.accumulation} (same tokens per step)"
                )

    # ---- evaluation --------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean validation loss over (up to eval_max_batches of) the validation windows."""
        self.model.eval()
        n = len(self.val_windows)
        starts = range(0, n, self.args.batch_size)
        if self.args.eval_max_batches:
            starts = starts[: self.args.eval_max_batches]
        total = torch.zeros(2, device=self.device)  # (sum of losses * windows, windows)
        mine = starts[self.world.rank :: self.world.size]
        # FSDP all-gathers parameters inside forward, so every rank must run as many forwards:
        # a rank with one batch fewer runs the first batch again and does not count it.
        rounds = math.ceil(len(starts) / self.world.size) if self.fsdp else len(mine)
        for i in range(rounds):
            start = mine[i] if i < len(mine) else starts[0]
            x, y = self.val_windows.batch(range(start, min(n, start + self.args.batch_size)))
            x, y = x.to(self.device), y.to(self.device)
            with self._context():
                _, loss = self.model(x, y)
            if i < len(mine):
                windows = torch.tensor(len(x), device=self.device)
                total += torch.stack([loss.float() * len(x), windows])
        distributed.mean_over_ranks(total, self.world)
        self.model.train()
        return (total[0] / total[1]).item()

    def validate(self, metrics: Metrics) -> float:
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
            self.save("best_model.pt", val_loss, resumable=False)
        return val_loss

    # ---- the loop ----------------------------------------------------------------------------

    def log(self, message: str) -> None:
        if self.world.is_main:
            tqdm.write(message, file=sys.stderr)

    def fit(self) -> int:
        """Train to the end of the last epoch; return the process exit code."""
        args, progress = self.args, self.progress
        # Points logged after the checkpoint by an interrupted run are dropped and redone.
        metrics = Metrics(
            self.output_dir / "tensorboard",
            enabled=self.world.is_main,
            purge_step=progress.step + 1 if self.resumed else None,
        )
        self.model.train()
        if not self.resumed:
            self.validate(metrics)  # the step-0 point of the validation curve

        bar = tqdm(
            total=self.total_steps,
            initial=progress.step,
            desc="training",
            unit="step",
            disable=not self.world.is_main,
            dynamic_ncols=True,
        )
        self.stop.install()
        tokens_per_step = self.sampler.windows_per_step * self.world.size * args.max_length
        log_loss = torch.zeros((), device=self.device)
        log_steps, log_time, bad_in_a_row = 0, time.perf_counter(), 0
        val_loss, stopped = None, False
        try:
            while progress.epoch < args.num_epochs:
                for indices in self.sampler.step_windows(progress.epoch, progress.step_in_epoch):
                    lr = learning_rate_at(
                        progress.step,
                        args.learning_rate,
                        self.warmup_steps,
                        self.total_steps,
                        args.min_lr_ratio,
                    )
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    step_loss, grad_norm = self._step(indices)
                    distributed.mean_over_ranks(step_loss, self.world)
                    # One host sync per optimizer step (never per micro-batch): skip bad updates.
                    finite = bool(torch.isfinite(step_loss + grad_norm))
                    if finite:
                        self.optimizer.step()
                        bad_in_a_row = 0
                        log_loss += step_loss
                        log_steps += 1
                    else:
                        bad_in_a_row += 1
                        progress.skipped_steps += 1
                        metrics.scalars(
                            progress.step, {"train/skipped_steps": progress.skipped_steps}
                        )
                        self.log(
                            f"step {progress.step}: non-finite loss or gradient, update skipped"
                        )
                    self.optimizer.zero_grad(set_to_none=True)
                    progress.step += 1
                    progress.step_in_epoch += 1
                    bar.update(1)

                    if progress.step % args.log_interval == 0 and log_steps:
                        elapsed = time.perf_counter() - log_time
                        loss = (log_loss / log_steps).item()
                        tps = tokens_per_step * args.log_interval / elapsed
                        metrics.scalars(
                            progress.step,
                            {
                                "train/loss": loss,
                                "train/lr": lr,
                                "train/grad_norm": float(grad_norm),
                                "train/tokens_per_sec": tps,
                            },
                        )
                        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
                        log_loss.zero_()
                        log_steps, log_time = 0, time.perf_counter()
                    if bad_in_a_row >= args.max_bad_steps:
                        raise TrainingFailed(
                            f"{bad_in_a_row} optimizer steps in a row had a non-finite loss or "
                            "gradient. Likely causes: learning rate too high (lower "
                            "--learning_rate), too short warmup, or float16 overflow (use "
                            f"bfloat16 or float32). Last good checkpoint: {self.last_good()}"
                        )
                    at_epoch_end = progress.step_in_epoch == self.sampler.steps_per_epoch
                    if args.eval_interval and progress.step % args.eval_interval == 0:
                        if not at_epoch_end:
                            val_loss = self.validate(metrics)
                    if args.save_interval and progress.step % args.save_interval == 0:
                        self.save("checkpoint_last.pt", val_loss)
                    if distributed.any_rank(self.stop.signum is not None, self.world):
                        raise _StopRequested

                progress.epoch += 1
                progress.step_in_epoch = 0
                val_loss = self.validate(metrics)
                self.save(f"checkpoint_epoch_{progress.epoch}.pt", val_loss)
                self.log(f"epoch {progress.epoch}: validation loss {val_loss:.4f}")
                if distributed.any_rank(self.stop.signum is not None, self.world):
                    raise _StopRequested
        except _StopRequested:
            stopped = True
            self.save("checkpoint_last.pt", None)
        finally:
            bar.close()
            metrics.close()
        if stopped:
            self.log(
                f"Stopped at step {progress.step}; saved {self.output_dir / 'checkpoint_last.pt'}."
                f"\nResume with:\n  {self.resume_hint}"
            )
            return 128 + (self.stop.signum or signal.SIGTERM)  # a rank told by another
        self.log(
            f"Done: best validation loss {progress.best_val_loss:.4f}. "
            f"Outputs in {self.output_dir} (tensorboard --logdir {self.output_dir / 'tensorboard'})"
        )
        return 0

    def last_good(self) -> str:
        found = resumable_checkpoints(self.output_dir)
        return str(found[0]) if found else "none yet"


def empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
