"""torchrun: the process group, collectives, and the model as training runs it (DDP, FSDP2,
compile); a single process is the world of size 1.

Under --fsdp each rank holds only a slice of every parameter, gradient and optimizer state
(DTensors). Checkpoints stay in the single-process format: the helpers below gather the full
tensors to rank 0 to save them, and shard full tensors again to load them, so a checkpoint
does not depend on how many processes wrote or read it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from owt.cli import UsageError
from owt.config import torchrun_world_size
from owt.devices import compile_for_training

# The ranks wait this long at the one barrier where rank 0 tokenizes the whole dataset (hours
# for OpenWebText on a few cores); every other collective keeps torch's default timeout, so a
# rank that died is noticed in minutes.
TOKENIZATION_TIMEOUT = timedelta(hours=6)


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1
    patient_group: Any = None  # gloo group with TOKENIZATION_TIMEOUT, for wait_for_main

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def check_launch(device_type: str, world_size: int, fsdp: bool) -> None:
    """Refuse process layouts that cannot work on `device_type` (UsageError, exit status 2)."""
    if device_type == "mps" and world_size > 1:
        raise UsageError(
            f"torchrun started {world_size} processes on a Mac: they would share its one GPU, "
            "and gloo cannot carry MPS tensors. Run train/pretrain.py without torchrun (use "
            "--gradient_accumulation_steps for a bigger batch)"
        )
    if fsdp and device_type not in ("cuda", "cpu"):
        raise UsageError(f"--fsdp runs on CUDA or CPU, not {device_type}: drop --fsdp")
    # FSDP2 waits on CPU "streams" through record_event, a no-op that came in torch 2.7.
    if fsdp and device_type == "cpu" and not hasattr(torch.cpu.Stream, "record_event"):
        raise UsageError(
            f"--fsdp on the CPU needs torch 2.7 or later; this is torch {torch.__version__}: "
            "upgrade torch, or drop --fsdp (DDP)"
        )


def init_world(device_type: str) -> World:
    """Join the process group torchrun describes (RANK, WORLD_SIZE...); else a world of one."""
    if torchrun_world_size() == 1:
        return World()
    # any_rank and the stop flag use CPU tensors: on CUDA, gloo carries those and NCCL the rest.
    backend = "cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    patient = dist.new_group(backend="gloo", timeout=TOKENIZATION_TIMEOUT)
    rank, local_rank = dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    world = World(rank, local_rank, dist.get_world_size(), patient)
    if device_type == "cuda":
        torch.cuda.set_device(world.local_rank)
    return world


def wait_for_main(world: World) -> None:
    """Every rank waits here until rank 0 arrives (it may be tokenizing for hours)."""
    if world.size > 1:
        dist.barrier(group=world.patient_group)


def mean_over_ranks(value: torch.Tensor, world: World) -> torch.Tensor:
    """Average a tensor over ranks (in place for >1 ranks)."""
    if world.size > 1:
        dist.all_reduce(value)  # SUM: gloo has no AVG
        value /= world.size
    return value


def sum_over_ranks(value: torch.Tensor, world: World) -> torch.Tensor:
    """Sum a tensor over ranks (in place for >1 ranks)."""
    if world.size > 1:
        dist.all_reduce(value)
    return value


def max_over_ranks(value: float, world: World) -> float:
    """The largest of the ranks' `value`s, on every rank."""
    if world.size == 1:
        return value
    tensor = torch.tensor(value, dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor)


def any_rank(flag: bool, world: World) -> bool:
    """True on every rank if `flag` is true on any rank (so all ranks stop at the same step)."""
    if world.size == 1:
        return flag
    value = torch.tensor(float(flag))
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value)


def close_world(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()


# ---- the model as training runs it ----------------------------------------------------------


def parallelize(
    model: nn.Module, world: World, device: torch.device, *, fsdp: bool, compile_model: bool
) -> nn.Module:
    """What the training step calls: `model` itself, DDP around it or FSDP2 shards of it
    (in place: build the optimizer afterwards), compiled if asked.

    Compiled around DDP, not inside it: torch then splits the graph at DDP's bucket boundaries,
    so gradient all-reduces overlap the rest of the backward. `model` stays the plain module
    checkpoints save.
    """
    step_model = model
    if fsdp:
        shard_model(model, world, device)
    elif world.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        step_model = DistributedDataParallel(model, device_ids=ids)
    return compile_for_training(model, step_model) if compile_model else step_model


# ---- FSDP2 ------------------------------------------------------------------------------------


def shard_model(model: nn.Module, world: World, device: torch.device) -> None:
    """Shard `model` in place with FSDP2 over all ranks: each block, then the root.

    The root group holds what no block does: the embedding, the final norm and the LM head,
    which is tied to the embedding and so must stay in the same group. fully_shard moves each
    group's tensors to `device` as it shards them, so a model built on the CPU never has to fit
    one accelerator whole. Every rank must build the same initial weights (same seed).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world.size,))
    for block in model.model.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    """A DTensor's whole value (a collective: every rank calls it); other tensors unchanged."""
    from torch.distributed.tensor import DTensor

    return value.full_tensor() if isinstance(value, DTensor) else value


def _full_options(**kwargs: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def gather_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """model.state_dict() of an unsharded model, on rank 0's CPU ({} elsewhere); every rank calls.

    Tied parameters are gathered once per name; they are tied again so the file stores the
    shared tensor once, as torch.save of a plain model does.
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model, options=_full_options(cpu_offload=True))
    if state:
        for names in _tied_names(model):
            for name in names[1:]:
                state[name] = state[names[0]]
    return state


def _tied_names(model: nn.Module) -> list[list[str]]:
    by_parameter: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        by_parameter.setdefault(id(parameter), []).append(name)
    return [names for names in by_parameter.values() if len(names) > 1]


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full (single-process format) state dict, present on every rank, into shards."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, state, options=_full_options())


def gather_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """optimizer.state_dict() as an unsharded run has it, on rank 0's CPU ({} elsewhere).

    torch.distributed.checkpoint keys the state by parameter name; a plain state_dict() numbers
    the parameters in param_groups order, so renumber in that order. Every rank must call this.
    """
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    by_name = get_optimizer_state_dict(model, optimizer, options=_full_options(cpu_offload=True))
    if not by_name:
        return {}
    number: dict[str, int] = {}
    groups = [
        {**group, "params": [number.setdefault(name, len(number)) for name in group["params"]]}
        for group in by_name["param_groups"]
    ]
    return {"state": {number[n]: s for n, s in by_name["state"].items()}, "param_groups": groups}


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Load a plain optimizer.state_dict() (parameters numbered), present on every rank."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    name_of = {id(p): name for name, p in model.named_parameters()}
    names = [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]
    by_name = {
        "state": {names[i]: s for i, s in state["state"].items()},
        "param_groups": [
            {**group, "params": [names[i] for i in group["params"]]}
            for group in state["param_groups"]
        ],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=_full_options())
