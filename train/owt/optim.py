"""The optimizers: AdamW (the default), or Muon for the blocks' weight matrices with AdamW for
the rest. Weight decay falls on matrices only.
"""

from __future__ import annotations

from typing import Any

import torch

from owt.cli import UsageError

BETAS = (0.9, 0.95)


def check_available(kind: str) -> None:
    """Refuse in one line an optimizer this torch lacks: torch.optim.Muon came in torch 2.9,
    while the project runs on torch 2.6 and later (pyproject.toml)."""
    if kind == "muon" and not hasattr(torch.optim, "Muon"):
        raise UsageError(
            f"--optimizer muon needs torch 2.9 or later (torch.optim.Muon); this is torch "
            f"{torch.__version__}: upgrade torch, or use --optimizer adamw"
        )


def build_optimizer(
    model: torch.nn.Module,
    learning_rate: float,
    weight_decay: float,
    device_type: str,
    kind: str = "adamw",
    muon_learning_rate: float = 0.02,
) -> torch.optim.Optimizer | Optimizers:
    """AdamW over every parameter, or (kind "muon") Muon over the 2-D weights inside the
    transformer blocks and AdamW over the embedding / tied LM head and the norm gains.

    AdamW is fused where torch has a fused kernel (CPU, CUDA and MPS: the same update up to
    float rounding, ~3x faster than foreach on a CPU). Muon (torch.optim.Muon, Keller Jordan's
    Newton-Schulz orthogonalised momentum, with its shape scaling sqrt(max(1, rows/cols))) is
    for hidden matrices only, as its authors use it: embeddings and the output head stay on
    AdamW.
    """
    fused = device_type in ("cpu", "cuda", "mps")
    if kind == "adamw":
        groups = param_groups(model.parameters(), weight_decay)
        return torch.optim.AdamW(groups, lr=learning_rate, betas=BETAS, eps=1e-8, fused=fused)
    if kind != "muon":
        raise ValueError(f"unknown optimizer {kind!r}; choose adamw or muon")
    check_available(kind)
    blocks = {id(p) for p in model.model.layers.parameters()}
    matrices = [p for p in model.parameters() if id(p) in blocks and p.dim() == 2]
    chosen = {id(p) for p in matrices}
    rest = [p for p in model.parameters() if id(p) not in chosen]
    muon = torch.optim.Muon(matrices, lr=muon_learning_rate, weight_decay=weight_decay)
    adamw = torch.optim.AdamW(
        param_groups(rest, weight_decay),
        lr=learning_rate, betas=BETAS, eps=1e-8, fused=fused,
    )  # fmt: skip
    return Optimizers(muon=muon, adamw=adamw)


def param_groups(params: Any, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: decay on matrices (>= 2-D), none on norm gains. Accepts a
    module (its parameters) or an iterable of parameters."""
    if isinstance(params, torch.nn.Module):
        params = params.parameters()
    params = [p for p in params if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


class Optimizers:
    """Several optimizers stepped as one (Muon + AdamW): one step, one zero_grad, one state
    dict holding each part's."""

    def __init__(self, **optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [group for opt in self.optimizers.values() for group in opt.param_groups]

    def step(self) -> None:
        for optimizer in self.optimizers.values():
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state_dict[name])


def set_learning_rates(
    optimizer: torch.optim.Optimizer | Optimizers, learning_rate: float, muon_learning_rate: float
) -> None:
    """This step's learning rates: `muon_learning_rate` for Muon's groups, `learning_rate` for
    every other group (set each step from the flags, so a resumed run may change them)."""
    parts = optimizer.optimizers if isinstance(optimizer, Optimizers) else {"adamw": optimizer}
    for name, part in parts.items():
        for group in part.param_groups:
            group["lr"] = muon_learning_rate if name == "muon" else learning_rate
