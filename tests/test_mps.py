"""What an Apple-silicon Mac (MPS) would break on, checked on a CPU: `pytest -k mps`.

No Mac runs CI, so each check runs the code path MPS takes (torch's attention kernel, fp32)
or tests the decision a real MPS device would trigger, as a function.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from model import LlamaForTraining, ModelConfig
from owt import devices, distributed
from owt.cli import UsageError
from owt.config import TrainConfig
from owt.lm_loss import linear_cross_entropy
from owt.memory import mps_attention, training_step_peak_bytes
from owt.sampling import pick_token, sample_text
from owt.token_windows import TokenWindows
from owt.trainer import Trainer
from tiny import TINY, tiny_model

INVENTORY = Path(__file__).with_name("mps_ops.txt")
VOCAB = 128  # the byte tokenizer below: ASCII


class OpRecorder(TorchDispatchMode):
    """Records every aten op that runs; fails on float64 or complex tensors, which MPS lacks."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        self.ops.add(str(func.overloadpacket))
        for value in torch.utils._pytree.tree_leaves((args, kwargs or {}, out)):
            if isinstance(value, torch.Tensor):
                assert value.dtype != torch.float64 and not value.is_complex(), (func, value.dtype)
        return out


class ByteTokenizer:
    """Enough of a tokenizer for sample_text: one token per byte, EOS = 0."""

    eos_token_id = 0
    bos_token_id = None

    def __call__(self, text: str) -> dict:
        return {"input_ids": list(text.encode())[:8]}

    def decode(self, ids: list[int], **kwargs: object) -> str:
        return bytes(i for i in ids if 0 < i < 128).decode(errors="replace")


def tiny_trainer(tmp_path: Path, **overrides: object) -> Trainer:
    torch.manual_seed(0)
    tokens = np.random.default_rng(0).integers(1, VOCAB, 4000).astype(np.uint16)
    config = TrainConfig(
        output_dir=str(tmp_path), batch_size=2, gradient_accumulation_steps=2, max_length=16,
        eval_max_batches=2, **{**TINY, "vocab_size": VOCAB, **overrides},
    )  # fmt: skip
    model = LlamaForTraining(config.model_config())
    windows = TokenWindows(tokens, config.max_length)
    return Trainer(config, model, windows, windows, device=torch.device("cpu"))


def test_mps_op_path_matches_the_reviewed_inventory(tmp_path):
    """One training step (forward, backward, clip, fused AdamW), an evaluation and a text sample
    on the path MPS takes: every aten op is in tests/mps_ops.txt, so a new op is a diff to review
    for MPS support (regenerate with OWT_UPDATE_MPS_OPS=1), and no float64/complex appears."""
    trainer = tiny_trainer(tmp_path)
    recorder = OpRecorder()
    with mps_attention(), recorder:
        trainer.train_step(np.arange(4))
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.evaluate()
        sample_text(trainer.model, ByteTokenizer(), "The", max_new_tokens=4)
    ops = sorted(recorder.ops)
    if os.environ.get("OWT_UPDATE_MPS_OPS") == "1":
        INVENTORY.write_text("\n".join(ops) + "\n")
    reviewed = INVENTORY.read_text().split()
    new, gone = sorted(set(ops) - set(reviewed)), sorted(set(reviewed) - set(ops))
    assert not new and not gone, f"new ops (check MPS support): {new}; no longer used: {gone}"
    assert "aten._fused_adamw_" in ops and not any("flash_attention" in op for op in ops)


GB = 1e9
# One training step of the 124M model at batch 4 (fp32, MPS's math attention), counted on fake
# tensors. Measured: 4.25 GB at 512, 8.06 GB at 1024 (weights, gradients and AdamW's moments are
# 1.98 GB of it). The limits sit below what a second (vocab x tokens) fp32 buffer would add:
# +0.41 GB at 512 and +0.82 GB at 1024 tokens per row of the batch.
STEP_LIMITS = {512: 4.5 * GB, 1024: 8.5 * GB}


@pytest.mark.parametrize("max_length", [512, 1024])
def test_mps_memory_model_of_the_124m_step(max_length):
    step = training_step_peak_bytes(ModelConfig(), 4, max_length)
    assert 1.97 * GB < step.state < 1.99 * GB  # 16 bytes per parameter: the count counts
    assert step.state + 0.8 * GB < step.peak <= STEP_LIMITS[max_length], step.gb


def test_mps_memory_model_sees_gradient_checkpointing():
    full = training_step_peak_bytes(ModelConfig(), 4, 1024)
    recompute = training_step_peak_bytes(ModelConfig(), 4, 1024, gradient_checkpointing=True)
    assert recompute.peak < 0.5 * full.peak


class MatmulInputs(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if func.overloadpacket is torch.ops.aten.mm:
            self.inputs.extend(a for a in args if isinstance(a, torch.Tensor))
        return func(*args, **(kwargs or {}))


def test_mps_lm_head_backward_has_no_transposed_vocab_by_tokens_input():
    """MPS before macOS 15 copies a strided matmul input: the (vocab x tokens) buffer must only
    ever enter a matmul contiguous, or it would be held twice."""
    vocab, tokens = 512, 64
    hidden = torch.randn(tokens, 16, requires_grad=True)
    weight = torch.randn(vocab, 16, requires_grad=True)
    loss = linear_cross_entropy(hidden, weight, torch.randint(0, vocab, (tokens,)))
    recorder = MatmulInputs()
    with recorder:
        loss.backward()
    big = [t for t in recorder.inputs if t.numel() >= vocab * tokens]
    assert big and all(t.is_contiguous() for t in big)


def test_mps_out_of_memory_messages_count_as_out_of_memory():
    assert devices.is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 9 GB)"))
    assert devices.is_out_of_memory(RuntimeError("Invalid buffer size: 12.50 GB"))
    assert devices.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory."))
    assert not devices.is_out_of_memory(RuntimeError("shape mismatch"))


@pytest.mark.parametrize("message", ["MPS backend out of memory", "Invalid buffer size: 9 GB"])
def test_mps_auto_batch_recovers_from_the_mps_messages(tmp_path, monkeypatch, message):
    trainer = tiny_trainer(tmp_path, auto_batch=True)
    forward = LlamaForTraining.forward

    def tight(self, input_ids, targets=None, **kwargs):  # noqa: ANN001
        if self.training and input_ids.size(0) > 1:
            raise RuntimeError(message)
        return forward(self, input_ids, targets, **kwargs)

    monkeypatch.setattr(LlamaForTraining, "forward", tight)
    loss, norm = trainer.train_step(np.arange(4))
    assert trainer.batch_size == 1 and trainer.accumulation == 4
    assert torch.isfinite(loss) and torch.isfinite(norm)


def test_mps_memory_cap_unless_the_user_set_one():
    assert devices.mps_memory_fraction({}) == 1.0
    assert devices.mps_memory_fraction({devices.MPS_MEMORY_ENV: "0.0"}) is None


def test_mps_refuses_several_processes_and_fsdp():
    with pytest.raises(UsageError, match="without torchrun"):
        distributed.check_launch("mps", 2, fsdp=False)
    with pytest.raises(UsageError, match="drop --fsdp"):
        distributed.check_launch("mps", 1, fsdp=True)
    distributed.check_launch("mps", 1, fsdp=False)
    distributed.check_launch("cuda", 8, fsdp=True)


def test_mps_auto_batch_is_refused_under_torchrun():
    with pytest.raises(UsageError, match="--auto_batch"):
        TrainConfig(auto_batch=True).validate(world_size=2)
    TrainConfig(auto_batch=True).validate(world_size=1)


def test_mps_batch_copies_block_except_pinned_to_cuda():
    assert devices.transfer_plan(torch.device("mps")) == (False, False)
    assert devices.transfer_plan(torch.device("cpu")) == (False, False)
    assert devices.transfer_plan(torch.device("cuda", 0)) == (True, True)
    x, y = torch.arange(6).view(2, 3), torch.ones(2, 3)
    copied = devices.to_device(torch.device("cpu"), x, y)
    assert all(torch.equal(a, b) for a, b in zip(copied, (x, y), strict=True))


class OnTheDevice(torch.Tensor):
    """Logits as another device holds them: any op but the copy to the CPU is an error."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001
        name = getattr(func, "__name__", str(func))
        assert name in ("detach", "to", "__get__"), f"{name} ran on the device"
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **(kwargs or {}))
        return out.as_subclass(torch.Tensor) if name == "to" else out


@pytest.mark.parametrize("settings", [(0.0, None, None), (0.8, 20, None), (1.0, None, 0.9)])
def test_mps_sampling_runs_on_the_cpu_whatever_device_holds_the_logits(settings):
    logits = torch.randn(128, generator=torch.Generator().manual_seed(3))
    picks = []
    for source in (logits, logits.clone().as_subclass(OnTheDevice)):
        generator = torch.Generator().manual_seed(7)
        picks.append([pick_token(source, *settings, generator=generator) for _ in range(5)])
    assert picks[0] == picks[1]


def test_mps_kv_cache_decoding_is_unchanged_by_contiguous_copies():
    from model import KVCache

    torch.manual_seed(0)
    model = tiny_model(vocab_size=VOCAB).eval()
    ids = torch.randint(0, VOCAB, (1, 12))
    with torch.no_grad():
        full, _ = model(ids)
        cache = KVCache(model.config, 1, 12)
        steps = [model(ids[:, :5], kv_cache=cache)[0]]
        steps += [model(ids[:, i : i + 1], kv_cache=cache)[0] for i in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_mps_dtype_auto_skips_emulated_bf16_on_cuda(monkeypatch):
    def supported(including_emulation: bool = True) -> bool:
        return including_emulation  # a pre-Ampere GPU: bf16 only by emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert devices.resolve_dtype("cuda", "auto") == torch.float32
    assert devices.resolve_dtype("mps", "auto") == torch.float32
