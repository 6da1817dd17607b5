"""The one tiny model the tests build and train: its shape, its ModelConfig, a seeded model.

A test that needs another size says so with an override (tiny_model(vocab_size=300)), so what
differs from the common shape is visible where it matters. model.py (and torch) are imported
only when a config is built: tests/scripts.py takes TINY without paying for torch.
"""

from __future__ import annotations

from typing import Any

TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "max_position_embeddings": 64}
"""A model small enough to train in seconds on a CPU (the vocabulary is the test's choice)."""

TINY_VOCAB = 64


def tiny_config(**overrides: Any):  # -> model.ModelConfig
    """TINY with a vocabulary of TINY_VOCAB, and `overrides`."""
    from model import ModelConfig

    return ModelConfig(**{**TINY, "vocab_size": TINY_VOCAB, **overrides})


def tiny_model(seed: int = 0, **overrides: Any):  # -> model.LlamaForTraining
    """The tiny model with the initial weights `seed` gives it."""
    import torch

    from model import LlamaForTraining

    torch.manual_seed(seed)
    return LlamaForTraining(tiny_config(**overrides))
