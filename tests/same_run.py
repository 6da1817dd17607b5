"""Comparing two training runs that did the same optimizer steps with the work split differently
(micro-batches, ranks, FSDP shards, compiled kernels): equal up to float rounding, checked in a
way rounding cannot break and a real bug cannot pass.

Why not elementwise `atol`: splitting a step's windows differently only reorders the sums
that make each gradient, so each gradient element moves by at most ~n·u of the sum of its n
terms' magnitudes (u = 2^-24 in fp32). AdamW then divides every element by its own running
RMS, and for an element whose gradient is mostly cancellation that rounding is O(1) of its
update: one element in thousands can end up lr-sized apart (1.0013e-5 against an atol of 1e-5
was seen on one CPU). Norms do not have that problem: over a whole tensor those few elements
weigh nothing.

So each tensor must satisfy ||a - b|| <= REL_SPLIT · ||b - start||, the distance between the two
runs against the distance the run travelled from its initial weights. Rounding gives ~sqrt(n)·u
~ 1e-6 relative per step for the n = 256 tokens of a test step (worst case n·u = 1.5e-5), and a
few dozen steps of a tiny model grow it little: the suite's comparisons measured 0 to 1.6e-5
(Zen 4, torch 2.15), so 1e-3 leaves 60x of headroom. A bug that changes what a step sees changes
the update direction itself: dropping the last micro-batch of each step measured 0.65.

Losses: the same argument bounds a loss by its weights: rel 1e-3 of the loss (~0.005 nats at
the start of training), where a lost micro-batch moves a step's logged mean loss by ~5%.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

REL_SPLIT = 1e-3
REL_LOSS = 1e-3
# Muon: torch.optim.Muon orthogonalises in bf16 (as the reference implementation does), so two
# runs whose gradients differ by fp32 rounding can round a momentum element to neighbouring
# bf16 values (u = 2^-9 relative), and each of the 5 Newton-Schulz iterations' 3 matmuls rounds
# its output to bf16 again: up to ~15u = 3% of a step's update, if every rounding went the same
# way. Measured 1.9e-2 of the travel after 17 steps; a lost micro-batch changes the direction
# itself (0.65 under AdamW).
REL_MUON = 0.1


def initial_weights(model_config: dict, seed: int = 1337) -> dict[str, torch.Tensor]:
    """The weights pretrain.py starts from for `model_config` and `--seed` (default 1337)."""
    from model import LlamaForTraining, ModelConfig

    torch.manual_seed(seed)
    return LlamaForTraining(ModelConfig.from_dict(model_config)).state_dict()


def relative_differences(
    ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], start: dict[str, torch.Tensor]
) -> dict[str, float]:
    """name -> ||ours - theirs|| / ||theirs - start||, per tensor."""
    assert ours.keys() == theirs.keys() == start.keys()
    ratios = {}
    for name, reference in theirs.items():
        travelled = (reference.double() - start[name].double()).norm()
        assert travelled > 0, f"{name} did not move: nothing to compare"
        ratios[name] = float((ours[name].double() - reference.double()).norm() / travelled)
    return ratios


def assert_same_update(
    ours: dict[str, torch.Tensor],
    theirs: dict[str, torch.Tensor],
    start: dict[str, torch.Tensor],
    rel: float = REL_SPLIT,
) -> None:
    """The two runs' weights agree up to float rounding (see the module docstring)."""
    ratios = relative_differences(ours, theirs, start)
    worst = max(ratios, key=ratios.get)
    assert ratios[worst] <= rel, f"{worst}: runs {ratios[worst]:.2e} of the travel apart"


def assert_close_values(ours: list[float], theirs: list[float], rel: float = REL_LOSS) -> None:
    """Two curves (losses, gradient norms) point by point, within `rel` of each value."""
    assert len(ours) == len(theirs) and ours, (ours, theirs)
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert abs(a - b) <= rel * abs(b), f"point {i}: {a} vs {b}"


def assert_same_tensors(ours: Any, theirs: Any, what: str = "weights") -> None:
    """Bit for bit: every tensor of two state dicts (or nested dicts/lists of them, such as
    an optimizer state) torch.equal, with the same names."""

    def tensors(value: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
        if isinstance(value, torch.Tensor):
            yield prefix, value
        elif isinstance(value, dict):
            for key, item in value.items():
                yield from tensors(item, f"{prefix}.{key}")
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                yield from tensors(item, f"{prefix}[{i}]")

    a, b = dict(tensors(ours)), dict(tensors(theirs))
    assert a.keys() == b.keys() and a, what
    differ = [name for name in a if not torch.equal(a[name], b[name])]
    assert not differ, f"{what}: {len(differ)} of {len(a)} tensors differ, e.g. {differ[:3]}"


# ---- files a run wrote -------------------------------------------------------------------------


def read_checkpoint(path: Path) -> dict:
    """A checkpoint as pretrain.py wrote it (tensors only: weights_only)."""
    return torch.load(path, weights_only=True)


def final_weights(out: Path, epochs: int) -> dict[str, torch.Tensor]:
    """The model weights of the checkpoint a run of `epochs` epochs ended with in `out`."""
    return read_checkpoint(out / f"checkpoint_epoch_{epochs}.pt")["model"]


def sha256(path: Path) -> str:
    """The sha256 of a file's bytes, as the hub publishes it for LFS files."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- TensorBoard curves --------------------------------------------------------------------


def scalars(tensorboard_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of every point of `tag`, as TensorBoard shows them (purged points gone)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tensorboard_dir))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def assert_curves_continue(out: Path, total_steps: int, log_interval: int = 1) -> None:
    """A run's curves after a resume, read back from `out`/tensorboard: train/loss has exactly one
    point per logged step, log_interval to total_steps (what the interrupted run logged after
    its checkpoint was dropped and redone, not doubled), and val/loss no step twice."""
    train = [s for s, _ in scalars(out / "tensorboard", "train/loss")]
    assert train == list(range(log_interval, total_steps + 1, log_interval)), train
    val = [s for s, _ in scalars(out / "tensorboard", "val/loss")]
    assert val and len(val) == len(set(val)) and val == sorted(val), val
