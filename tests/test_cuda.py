"""What only a CUDA GPU can show: `pytest -m cuda` (benchmarks/gpu_check.sh runs it).

Every test here is marked `cuda` and skipped with the reason "no CUDA device" where torch sees
none, so a CPU-only run lists them as skipped instead of passing them silently. The runs train
the tiny model (tests/tiny.py) on conftest's datasets, as the CPU tests do, with --device cuda.

Tolerances: runs on one device that split the same work the same way differ by the order of
CUDA's atomic adds (embedding and attention backward) at most: fp32 rounding, same_run.REL_SPLIT.
Runs that cross devices (a checkpoint written on CUDA resumed on the CPU, or the reverse) also
differ by TF32: pretrain.py turns it on for fp32 matmuls on CUDA (devices.setup_backend), and it
rounds each matmul input to 11 significant bits (u = 2^-11) where the CPU keeps 24 (u = 2^-24).
same_run.py measured fp32 runs up to 1.6e-5 of the travel apart; scaled by the ratio of the unit
roundoffs (2^13) that is 0.13, so REL_TF32 = 0.25, still well under the 0.65 that a lost
micro-batch moves the weights (same_run.py).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.profiler import ProfilerActivity, profile

from model import LlamaForTraining
from owt import devices
from owt.checkpointing import model_from_checkpoint
from owt.config import TrainConfig
from owt.token_windows import TokenWindows
from owt.trainer import Trainer
from same_run import (
    REL_SPLIT,
    assert_close_values,
    assert_same_update,
    final_weights,
    initial_weights,
    read_checkpoint,
    scalars,
)
from scripts import FP32_EAGER, TINY_RUN, error_line, pretrain_args, run_script
from textdata import write_layout

CUDA = torch.cuda.is_available()
GPUS = torch.cuda.device_count() if CUDA else 0
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="no CUDA device")]

EPOCHS = 2  # 34 optimizer steps of TINY_RUN on conftest.tiny_dataset
RESUME_STEP = 17  # checkpoint_epoch_1.pt: the resumes below run the second epoch
REL_TF32 = 0.25  # see the module docstring

# ---- the compiled bf16 step against fp32 eager ---------------------------------------------
#
# bf16 keeps 8 significant bits: unit roundoff u = 2^-8. Under autocast every matmul rounds both
# of its inputs to bf16 and accumulates in fp32, so each output element carries the error of its
# products, each off by a relative error uniform in [-u, u] (rms u/sqrt(3)) per input: about
# sqrt(2)·u/sqrt(3) = 0.82u of the output, in norm, since the signs are random. A forward pass
# goes through K = 9·L + 1 such products in a row (q, k, v, QK^T, PV, o, gate, up, down per
# layer, then the LM head); backward does two per forward product, 3K in all for a gradient.
# Independent errors add in quadrature: a gradient is ~0.82u·sqrt(3K) off in norm (0.024 for the
# two layers here), the logits ~0.82u·sqrt(K) and the loss at most that relatively. Both
# tolerances are 4x the estimate; a real bug (no causal mask, RoPE dropped, the wrong windows)
# changes the gradients by O(1) of their norm.
STEP_MODEL = {"hidden_size": 256, "num_layers": 2, "num_heads": 4, "max_position_embeddings": 128}
STEP_VOCAB, STEP_LENGTH, STEP_BATCH = 512, 128, 4
BF16_U = 2.0**-8
BF16_PRODUCTS = 9 * STEP_MODEL["num_layers"] + 1
REL_BF16_GRAD = 4 * 0.82 * BF16_U * math.sqrt(3 * BF16_PRODUCTS)
REL_BF16_LOSS = 4 * 0.82 * BF16_U * math.sqrt(BF16_PRODUCTS)


def step_trainer(tmp_path: Path, device: str, dtype: torch.dtype, compiled: bool) -> Trainer:
    """The Trainer pretrain.py would build for STEP_MODEL on `device` (seeded weights, random
    tokens, no clipping so the raw gradients compare)."""
    config = TrainConfig(
        output_dir=str(tmp_path), batch_size=STEP_BATCH, gradient_accumulation_steps=1,
        max_length=STEP_LENGTH, grad_clip=0.0, eval_max_batches=1, vocab_size=STEP_VOCAB,
        **STEP_MODEL,
    ).validate()  # fmt: skip
    tokens = np.random.default_rng(0).integers(0, STEP_VOCAB, 20_000).astype(np.uint16)
    windows = TokenWindows(tokens, STEP_LENGTH)
    torch.manual_seed(0)
    model = LlamaForTraining(config.model_config()).to(device)
    if device == "cuda":
        devices.setup_backend(torch.device(device))  # as pretrain.py: TF32 for fp32 matmuls
    return Trainer(
        config, model, windows, windows, device=torch.device(device), dtype=dtype,
        compile_model=compiled,
    )  # fmt: skip


def step_gradients(trainer: Trainer) -> tuple[float, dict[str, torch.Tensor]]:
    """One train_step on the first STEP_BATCH windows: (loss, gradients in float64 on the CPU)."""
    loss, _ = trainer.train_step(np.arange(STEP_BATCH))
    grads = {n: p.grad.detach().double().cpu() for n, p in trainer.model.named_parameters()}
    return float(loss), grads


def test_compiled_bf16_step_matches_fp32_eager_within_bf16_rounding(tmp_path):
    ours = step_gradients(step_trainer(tmp_path / "a", "cuda", torch.bfloat16, compiled=True))
    reference = step_gradients(step_trainer(tmp_path / "b", "cpu", torch.float32, compiled=False))
    (loss, grads), (loss_ref, grads_ref) = ours, reference
    assert abs(loss - loss_ref) <= REL_BF16_LOSS * abs(loss_ref), (loss, loss_ref)
    ratios = {n: float((grads[n] - g).norm() / g.norm()) for n, g in grads_ref.items()}
    worst = max(ratios, key=ratios.get)
    assert ratios[worst] <= REL_BF16_GRAD, f"{worst}: {ratios[worst]:.3g} > {REL_BF16_GRAD:.3g}"


# ---- what the step runs on the GPU ---------------------------------------------------------

FUSED_ATTENTION = ("flash", "fmha", "efficient_attention", "cudnn_attention")
"""Op and kernel names of SDPA's fused backends: flash (aten::_scaled_dot_product_flash_attention,
flash_fwd_kernel), memory-efficient (..._efficient_attention, fmha_cutlassF...) and cuDNN's
(..._cudnn_attention, a flash-style kernel that torch may pick on Hopper)."""


def test_attention_runs_a_fused_sdpa_kernel(tmp_path):
    """The compiled bf16 step, as pretrain.py runs it, launches flash or memory-efficient
    attention kernels, never SDPA's math fallback (which keeps batch x heads x T x T)."""
    trainer = step_trainer(tmp_path, "cuda", torch.bfloat16, compiled=True)
    trainer.train_step(np.arange(STEP_BATCH))  # compiles outside the profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        trainer.train_step(np.arange(STEP_BATCH))
        torch.cuda.synchronize()
    names = {event.key for event in prof.key_averages()}
    fused = sorted(n for n in names if any(k in n.lower() for k in FUSED_ATTENTION))
    assert fused, f"no fused attention kernel among {sorted(names)[:80]}"
    assert not any("attention_math" in n for n in names), sorted(names)


def test_batches_arrive_pinned_and_non_blocking(tmp_path, monkeypatch):
    """Every host-to-GPU copy of a step's token ids goes from pinned memory without blocking
    (devices.to_device), and the profiler sees pinned copies only."""
    trainer = step_trainer(tmp_path, "cuda", torch.float32, compiled=False)
    copies: list[tuple[bool, bool]] = []
    to = torch.Tensor.to

    def spy(self: torch.Tensor, *args, **kwargs):  # noqa: ANN002, ANN003
        out = to(self, *args, **kwargs)
        if self.device.type == "cpu" and out.device.type == "cuda" and not self.is_floating_point():
            copies.append((self.is_pinned(), bool(kwargs.get("non_blocking"))))
        return out

    monkeypatch.setattr(torch.Tensor, "to", spy)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        trainer.train_step(np.arange(STEP_BATCH))
        torch.cuda.synchronize()
    assert copies and all(pinned and non_blocking for pinned, non_blocking in copies), copies
    memcpy = {e.key for e in prof.key_averages() if "HtoD" in e.key}
    assert any("Pinned" in k for k in memcpy), memcpy
    assert not any("Pageable" in k for k in memcpy), memcpy


# ---- pretrain.py on CUDA: resume across devices ---------------------------------------------


def pretrain(data: Path, out: Path, tokenizer: Path, device: str, *extra, **flags):
    """pretrain.py with TINY_RUN, fp32 eager, for EPOCHS epochs on `device`; fails on an error."""
    args = pretrain_args(
        data, out, tokenizer, TINY_RUN, FP32_EAGER, device=device, num_epochs=EPOCHS, **flags
    )
    result = run_script("pretrain.py", *args, *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def cuda_run(tiny_dataset, gpt2_tokenizer_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cuda") / "out"
    pretrain(tiny_dataset, out, gpt2_tokenizer_dir, "cuda")
    return out


@pytest.fixture(scope="module")
def cpu_run(tiny_dataset, gpt2_tokenizer_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cpu") / "out"
    pretrain(tiny_dataset, out, gpt2_tokenizer_dir, "cpu")
    return out


def resume_on(device: str, run: Path, data: Path, tokenizer: Path, tmp_path: Path) -> Path:
    """`run`'s checkpoint_epoch_1.pt, copied to a fresh folder, resumed there on `device`."""
    out = tmp_path / f"resumed_on_{device}"
    out.mkdir()
    shutil.copy(run / "checkpoint_epoch_1.pt", out)
    result = pretrain(data, out, tokenizer, device, resume="auto")
    assert f"at step {RESUME_STEP}" in result.stderr, result.stderr[-3000:]
    return out


def assert_continues(resumed: Path, straight: Path, rel: float) -> None:
    """The resumed run logged the steps after RESUME_STEP the straight run logged, with close
    values, and ended with weights `rel` of the travel from the straight run's."""
    for tag in ["train/loss", "val/loss"]:
        ours = [p for p in scalars(resumed / "tensorboard", tag) if p[0] > RESUME_STEP]
        theirs = [p for p in scalars(straight / "tensorboard", tag) if p[0] > RESUME_STEP]
        assert ours and [s for s, _ in ours] == [s for s, _ in theirs], tag
        assert_close_values([v for _, v in ours], [v for _, v in theirs], rel=max(rel, 1e-3))
    reference = read_checkpoint(straight / f"checkpoint_epoch_{EPOCHS}.pt")
    start = initial_weights(reference["model_config"])
    assert_same_update(final_weights(resumed, EPOCHS), reference["model"], start, rel=rel)


def test_resume_on_cuda_continues_as_the_uninterrupted_run(
    cuda_run, tiny_dataset, gpt2_tokenizer_dir, tmp_path
):
    resumed = resume_on("cuda", cuda_run, tiny_dataset, gpt2_tokenizer_dir, tmp_path)
    assert_continues(resumed, cuda_run, REL_SPLIT)


def test_checkpoint_written_on_cuda_resumes_on_the_cpu(
    cuda_run, tiny_dataset, gpt2_tokenizer_dir, tmp_path
):
    resumed = resume_on("cpu", cuda_run, tiny_dataset, gpt2_tokenizer_dir, tmp_path)
    assert_continues(resumed, cuda_run, REL_TF32)


def test_checkpoint_written_on_the_cpu_resumes_on_cuda(
    cpu_run, tiny_dataset, gpt2_tokenizer_dir, tmp_path
):
    resumed = resume_on("cuda", cpu_run, tiny_dataset, gpt2_tokenizer_dir, tmp_path)
    assert_continues(resumed, cpu_run, REL_TF32)


# ---- out of memory ---------------------------------------------------------------------------

# The 124M shape (12 x 768) at 8192 x 32 tokens a micro-batch: owt.memory counts ~250 GB for
# the step (~0.95 MB a token), far over any single card (80 GB H100, 141 GB H200); halved
# twice or three times (2048 x 32, ~60 GB) it fits either.
OOM_FLAGS = {
    "hidden_size": 768, "num_layers": 12, "num_heads": 12, "max_position_embeddings": 1024,
    "max_length": 32, "batch_size": 8192, "gradient_accumulation_steps": 1,
    "max_steps": 1, "eval_max_batches": 1, "dtype": "bfloat16", "compile": "off", "device": "cuda",
}  # fmt: skip


@pytest.fixture(scope="module")
def oom_data(tmp_path_factory, documents) -> Path:
    """Python's documentation 3 times over (~400k tokens, ~12,000 windows of 33): enough windows
    for the oversized micro-batch; a small validation set, so validating stays small."""
    return write_layout(tmp_path_factory.mktemp("oom") / "data", documents * 3, documents[-20:])


def test_real_out_of_memory_gives_the_advice_and_auto_batch_recovers(
    oom_data, gpt2_tokenizer_dir, tmp_path
):
    args = pretrain_args(oom_data, tmp_path / "advice", gpt2_tokenizer_dir, OOM_FLAGS)
    result = run_script("pretrain.py", *args)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    message = error_line(result)
    assert "Out of memory on cuda at --batch_size 8192 --max_length 32" in message, message
    assert "--auto_batch" in message

    auto = tmp_path / "auto"
    args = pretrain_args(oom_data, auto, gpt2_tokenizer_dir, OOM_FLAGS, auto_batch=True)
    result = run_script("pretrain.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "out of memory: micro-batch now 4096" in result.stderr, result.stderr[-3000:]
    assert read_checkpoint(auto / "checkpoint_last.pt")["step"] == 1


# ---- torchrun and NCCL -----------------------------------------------------------------------


def test_nccl_group_of_one_all_reduces():
    """The process group pretrain.py joins under torchrun on CUDA (owt.distributed.init_world:
    gloo for CPU tensors, NCCL for CUDA ones) works on this machine's NCCL."""
    dist.init_process_group("cpu:gloo,cuda:nccl", store=dist.HashStore(), rank=0, world_size=1)
    try:
        value = torch.ones(4, device="cuda")
        dist.all_reduce(value)
        flag = torch.ones(1)
        dist.all_reduce(flag)  # the CPU tensor goes through gloo
        assert value.sum().item() == 4 and flag.item() == 1
    finally:
        dist.destroy_process_group()


def test_torchrun_one_process_trains_as_the_plain_run(
    cuda_run, tiny_dataset, gpt2_tokenizer_dir, tmp_path
):
    """torchrun --nproc_per_node 1: a world of one (no process group), the same run."""
    out = tmp_path / "torchrun"
    args = pretrain_args(
        tiny_dataset, out, gpt2_tokenizer_dir, TINY_RUN, FP32_EAGER, device="cuda",
        num_epochs=EPOCHS,
    )  # fmt: skip
    result = run_script("pretrain.py", *args, torchrun=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["world_size"] == 1
    start = initial_weights(read_checkpoint(cuda_run / "checkpoint_epoch_1.pt")["model_config"])
    assert_same_update(final_weights(out, EPOCHS), final_weights(cuda_run, EPOCHS), start)


@pytest.mark.skipif(GPUS < 2, reason=f"needs 2 CUDA devices, this machine has {GPUS}")
def test_two_gpus_over_nccl_match_one_gpu(cuda_run, tiny_dataset, gpt2_tokenizer_dir, tmp_path):
    """Two ranks of 4 windows a step (DDP over NCCL) against one GPU accumulating 4 x 2."""
    out = tmp_path / "two"
    args = pretrain_args(
        tiny_dataset, out, gpt2_tokenizer_dir, TINY_RUN, FP32_EAGER, device="cuda",
        num_epochs=EPOCHS, gradient_accumulation_steps=1,
    )  # fmt: skip
    result = run_script("pretrain.py", *args, ranks=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    start = initial_weights(read_checkpoint(cuda_run / "checkpoint_epoch_1.pt")["model_config"])
    assert_same_update(final_weights(out, EPOCHS), final_weights(cuda_run, EPOCHS), start)


# ---- generate.py and export_hf.py on CUDA ----------------------------------------------------

PROMPT = "The meaning of life is"


def greedy(checkpoint: Path, device: str) -> subprocess.CompletedProcess:
    args = ["--checkpoint", checkpoint, "--prompt", PROMPT, "--device", device]
    result = run_script("generate.py", *args, "--temperature", "0", "--max_new_tokens", "20")
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_generate_on_cuda_writes_the_cpu_text(cuda_run):
    checkpoint = cuda_run / f"checkpoint_epoch_{EPOCHS}.pt"
    on_cuda, on_cpu = greedy(checkpoint, "cuda"), greedy(checkpoint, "cpu")
    assert "params on cuda" in on_cuda.stderr, on_cuda.stderr
    assert on_cuda.stdout.startswith(PROMPT) and on_cuda.stdout == on_cpu.stdout


def test_export_of_a_cuda_run_gives_our_logits_on_cuda(cuda_run, tmp_path):
    from transformers import AutoModelForCausalLM

    checkpoint = cuda_run / f"checkpoint_epoch_{EPOCHS}.pt"
    result = run_script("export_hf.py", "--checkpoint", checkpoint, "--output_dir", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # fp32 matmuls, no TF32, for both models
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(tmp_path).to("cuda").eval()
        ours, _ = model_from_checkpoint(checkpoint, "cuda")
        ids = torch.randint(0, ours.config.vocab_size, (2, 24), device="cuda")
        with torch.no_grad():
            theirs = hf_model(ids).logits.float()
            mine, _ = ours(ids)
        torch.testing.assert_close(mine.float(), theirs, rtol=1e-4, atol=1e-4)
    finally:
        torch.set_float32_matmul_precision(precision)
