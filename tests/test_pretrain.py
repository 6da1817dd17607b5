"""pretrain.py end to end, run as a subprocess on real English with the real GPT-2 tokenizer,
with its defaults: --dtype auto and --compile auto (bf16 and compiled on a Linux CPU with native
bf16 and a C++ compiler; machine.py says what to expect here)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

import machine
from owt.token_cache import TokenCache
from same_run import (
    assert_curves_continue,
    assert_same_tensors,
    read_checkpoint,
    scalars,
)
from scripts import (
    DEFAULT_THREADS,
    FP32_EAGER,
    last_line,
    one_line_error,
    pretrain_args,
    run_script,
)
from textdata import save_gpt2_tokenizer, write_layout, write_parquet

# One epoch of 116 steps of 8 windows; validation at 0, 25, 50, 75, 100 and 116; a
# checkpoint_last.pt at step 100 (test_default_path_resume_continues_the_run starts there).
TRAINED = {
    "batch_size": 8, "gradient_accumulation_steps": 1, "learning_rate": 3e-3, "num_epochs": 1,
    "eval_interval": 25, "log_interval": 5, "save_interval": 100,
}  # fmt: skip
TOTAL_STEPS = 116


@pytest.fixture(scope="module")
def trained(tmp_path_factory, gpt2_tokenizer_dir, documents):
    """One epoch of a tiny model on ~31k tokens of Python documentation, default settings."""
    root = tmp_path_factory.mktemp("trained")
    data = write_layout(root / "data", documents[:70], documents[-20:])
    out = root / "out"
    args = pretrain_args(data, out, gpt2_tokenizer_dir, TRAINED)
    result = run_script("pretrain.py", *args, set_env=DEFAULT_THREADS)
    assert result.returncode == 0, result.stderr[-3000:]
    return data, out, result


def test_one_epoch_writes_every_promised_output(trained):
    data, out, result = trained
    config = json.loads((out / "config.json").read_text())
    assert config["model_config"]["hidden_size"] == 32
    assert config["args"]["learning_rate"] == 3e-3
    assert config["tokens_per_optimizer_step"] == 8 * 32
    assert config["num_parameters"] > 0 and config["device"] == "cpu"
    assert config["total_steps"] == TOTAL_STEPS
    # What --dtype auto and --compile auto should pick here, worked out without devices.py.
    assert config["dtype"] == machine.DEFAULT_CPU_DTYPE
    assert config["compiled"] == machine.COMPILES_ON_CPU
    for tag in ["train/loss", "train/lr", "train/grad_norm", "train/tokens_per_sec",
                "val/loss", "val/perplexity"]:  # fmt: skip
        assert scalars(out / "tensorboard", tag), tag
    for name in ["checkpoint_epoch_1.pt", "best_model.pt"]:
        state = read_checkpoint(out / name)
        assert state["model_config"]["num_layers"] == 2
        assert state["epoch"] == 1 and state["step"] == config["total_steps"]
    epoch = read_checkpoint(out / "checkpoint_epoch_1.pt")
    assert "optimizer" in epoch and epoch["val_loss"] > 0
    assert str(out) in last_line(result.stderr)


def unigram_cross_entropy(out: Path) -> float:
    """The validation loss of the best model that knows only how often each token occurs: token
    frequencies counted on the train split (add-alpha smoothed, alpha picked on the validation
    split itself, so no unigram model does better), over the targets validation scores."""
    config = json.loads((out / "config.json").read_text())
    directory = Path(config["token_cache"]["directory"])
    meta = json.loads((directory / "meta.json").read_text())
    cache = TokenCache(directory, meta["fingerprint"], meta["dtype"], meta["num_tokens"])
    train, val = cache.tokens("train"), cache.tokens("validation")
    window = config["args"]["max_length"] + 1
    windows = len(val) // window
    targets = np.asarray(val[: windows * window]).reshape(windows, window)[:, 1:].ravel()
    vocab = config["model_config"]["vocab_size"]
    counts = np.bincount(np.asarray(train), minlength=vocab).astype(np.float64)[targets]
    return min(
        float(-np.log((counts + alpha) / (len(train) + alpha * vocab)).mean())
        for alpha in np.geomspace(1e-4, 10, 41)
    )


def test_validation_loss_falls_below_what_token_frequencies_give(trained):
    _, out, _ = trained
    val = scalars(out / "tensorboard", "val/loss")
    assert [s for s, _ in val] == [0, 25, 50, 75, 100, TOTAL_STEPS]
    assert val[-1][1] < 0.8 * val[0][1]
    # Learning the unigram frequencies alone gets this far (5.0 here); the model has learned
    # more than that (4.8): which tokens follow which.
    assert val[-1][1] < unigram_cross_entropy(out)
    best = read_checkpoint(out / "best_model.pt")
    assert best["val_loss"] == pytest.approx(min(v for _, v in val), rel=1e-5)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    samples = events.Tensors("samples/text_summary")
    assert [e.step for e in samples] == [s for s, _ in val]
    assert samples[-1].tensor_proto.string_val[0].decode().startswith("The meaning of life is")
    perplexity = scalars(out / "tensorboard", "val/perplexity")
    assert perplexity[-1][1] == pytest.approx(math.exp(val[-1][1]), rel=1e-4)


def test_default_path_resume_continues_the_run(trained, tmp_path, gpt2_tokenizer_dir):
    """The main run resumed from its checkpoint_last.pt (step 100) with the same defaults (bf16
    and compiled, here) ends bit for bit where the uninterrupted run ended, and its curves
    continue with the same values."""
    data, straight, _ = trained
    out = tmp_path / "out"
    out.mkdir()
    shutil.copytree(straight / "tensorboard", out / "tensorboard")  # with points after step 100
    shutil.copy(straight / "checkpoint_last.pt", out)
    resume_step = read_checkpoint(out / "checkpoint_last.pt")["step"]
    assert resume_step == 100
    args = pretrain_args(data, out, gpt2_tokenizer_dir, TRAINED, resume="auto")
    result = run_script("pretrain.py", *args, set_env=DEFAULT_THREADS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"at step {resume_step}" in result.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == machine.DEFAULT_CPU_DTYPE
    assert config["compiled"] == machine.COMPILES_ON_CPU

    ours = read_checkpoint(out / "checkpoint_epoch_1.pt")
    theirs = read_checkpoint(straight / "checkpoint_epoch_1.pt")
    assert_same_tensors(ours["model"], theirs["model"])
    for tag in ["train/loss", "val/loss"]:
        a = [p for p in scalars(out / "tensorboard", tag) if p[0] > resume_step]
        b = [p for p in scalars(straight / "tensorboard", tag) if p[0] > resume_step]
        assert a and a == b, tag
    assert_curves_continue(out, TOTAL_STEPS, log_interval=TRAINED["log_interval"])


def test_token_cache_is_reused_then_rebuilt_for_another_tokenizer_or_dataset(tmp_path, documents):
    data = write_layout(tmp_path / "data", documents[:8], documents[-3:])
    short = {"batch_size": 8, "num_epochs": 1, "eval_max_batches": 1, "max_steps": 2}
    tokenizer = save_gpt2_tokenizer(tmp_path / "tok")

    def run(out: str, tokenizer: Path, **flags):
        args = pretrain_args(data, tmp_path / out, tokenizer, FP32_EAGER, short, **flags)
        result = run_script("pretrain.py", *args)
        assert result.returncode == 0, result.stderr[-2000:]
        return result

    assert "token cache built" in run("a", tokenizer).stderr
    reuse = run("b", tokenizer)
    assert "token cache reused" in reuse.stderr and "tokenizing" not in reuse.stderr

    # Same vocabulary plus one added token: a different tokenizer, so a fresh cache.
    from transformers import AutoTokenizer

    changed = AutoTokenizer.from_pretrained(tokenizer)
    changed.add_tokens(["<|owt_extra|>"])
    changed.save_pretrained(tmp_path / "tok2")
    assert "token cache built" in run("c", tmp_path / "tok2", vocab_size=50258).stderr
    assert len(list((data / "token_cache").iterdir())) == 2

    # A train file rewritten with other documents: another dataset, so a fresh cache too.
    write_parquet(data / "train" / "part-0.parquet", documents[1:9])
    assert "token cache built" in run("d", tokenizer).stderr
    assert len(list((data / "token_cache").iterdir())) == 3


def test_missing_dataset_names_the_commands(tmp_path, gpt2_tokenizer_dir):
    args = pretrain_args(tmp_path / "nowhere", tmp_path / "out", gpt2_tokenizer_dir, FP32_EAGER)
    result = run_script("pretrain.py", *args)
    assert result.returncode == 2
    assert "Dataset not found" in result.stderr and "Traceback" not in result.stderr
    assert "download_subset.py" in result.stderr and "prepare_subset.py" in result.stderr
    assert "download_openwebtext.py" in result.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"hidden_size": 30, "num_heads": 4}, "not divisible"),
        ({"hidden_size": 30, "num_heads": 10}, "must be even"),
        ({"max_length": 128}, "max_position_embeddings"),
        ({"batch_size": 0}, "--batch_size must be positive"),
        ({"learning_rate": -1}, "--learning_rate must be a positive"),
        ({"vocab_size": 50000}, "raise --vocab_size to at least 50257"),
        ({"batch_size": "four"}, "invalid int value"),
    ],
)
def test_argument_errors_are_one_line(small_dataset, tmp_path, gpt2_tokenizer_dir, flags, message):
    args = pretrain_args(small_dataset, tmp_path / "out", gpt2_tokenizer_dir, FP32_EAGER, **flags)
    result = run_script("pretrain.py", *args)
    assert result.returncode == 2
    assert message in one_line_error(result) and "Traceback" not in result.stderr


def test_existing_run_is_kept_unless_overwrite_starts_afresh(trained, tmp_path, gpt2_tokenizer_dir):
    data, out, _ = trained
    copy = shutil.copytree(out, tmp_path / "copy")
    before = (copy / "checkpoint_epoch_1.pt").read_bytes()
    result = run_script("pretrain.py", *pretrain_args(data, copy, gpt2_tokenizer_dir, TRAINED))
    assert result.returncode == 2 and "--resume auto" in result.stderr
    assert (copy / "checkpoint_epoch_1.pt").read_bytes() == before

    # --overwrite starts afresh: a 3-step run leaves none of the old run's checkpoints (which
    # --resume auto could pick up) and none of its curves (TensorBoard would mix the two).
    (copy / "notes.txt").write_text("mine")
    args = pretrain_args(data, copy, gpt2_tokenizer_dir, FP32_EAGER, TRAINED, max_steps=3)
    result = run_script("pretrain.py", *args, "--overwrite")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--overwrite: removed the previous run" in result.stderr
    assert not (copy / "checkpoint_epoch_1.pt").exists()
    assert read_checkpoint(copy / "checkpoint_last.pt")["step"] == 3
    assert [s for s, _ in scalars(copy / "tensorboard", "val/loss")] == [0, 3]
    assert (copy / "notes.txt").read_text() == "mine"  # not a file of the run: kept


@pytest.mark.skipif(not machine.COMPILES_ON_CPU, reason="no C++ compiler: auto does not compile")
def test_compiled_default_trains_like_eager(trained, tmp_path, gpt2_tokenizer_dir):
    """The main run is compiled (--compile auto on a Linux CPU with a C++ compiler: inductor);
    the same run eagerly (--compile off) gives the same losses and weights, up to the float
    rounding of fused kernels."""
    data, compiled_out, _ = trained
    assert json.loads((compiled_out / "config.json").read_text())["compiled"]
    out = tmp_path / "eager"
    args = pretrain_args(data, out, gpt2_tokenizer_dir, TRAINED, compile="off")
    result = run_script("pretrain.py", *args, set_env=DEFAULT_THREADS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not json.loads((out / "config.json").read_text())["compiled"]
    for tag in ["train/loss", "val/loss"]:
        compiled = scalars(compiled_out / "tensorboard", tag)
        eager = scalars(out / "tensorboard", tag)
        assert [s for s, _ in compiled] == [s for s, _ in eager]
        for (_, a), (_, b) in zip(eager, compiled, strict=True):
            assert b == pytest.approx(a, rel=1e-3), tag
    a = read_checkpoint(out / "best_model.pt")["model"]
    b = read_checkpoint(compiled_out / "best_model.pt")["model"]
    assert a.keys() == b.keys()  # no "_orig_mod." prefixes from the compile wrapper
    for name in a:  # bf16 (auto here) rounds fused kernels differently; 116 steps drift ~1%
        assert (b[name] - a[name]).norm() <= 5e-2 * a[name].norm(), name
