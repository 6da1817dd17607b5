"""torchrun with 2 CPU processes (gloo) against one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from test_pretrain import scalars

from scripts import REPO, tiny_model_args
from textdata import write_layout


def test_two_ranks_match_one_rank_with_the_same_global_batch(
    tmp_path, documents, gpt2_tokenizer_dir
):
    data = write_layout(tmp_path / "data", documents[:10], documents[-3:])
    common = [
        "--data_dir", data, *tiny_model_args(gpt2_tokenizer_dir), "--batch_size", "4",
        "--num_epochs", "1", "--learning_rate", "2e-3", "--log_interval", "1",
        "--eval_max_batches", "2",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    script = str(REPO / "train" / "pretrain.py")
    one = subprocess.run(
        [sys.executable, script, *map(str, common), "--output_dir", tmp_path / "one",
         "--gradient_accumulation_steps", "2"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         script, *map(str, common), "--output_dir", tmp_path / "two",
         "--gradient_accumulation_steps", "1"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]

    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["world_size"] == 2 and config["tokens_per_optimizer_step"] == 8 * 32
    assert two.stderr.count("token cache built") + two.stderr.count("token cache reused") == 1
    assert len(list((tmp_path / "two" / "tensorboard").iterdir())) == 1  # one writer

    a = torch.load(tmp_path / "one" / "checkpoint_epoch_1.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "two" / "checkpoint_epoch_1.pt", weights_only=True)["model"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5)
    for tag in ["train/loss", "val/loss"]:
        curve_one = scalars(tmp_path / "one" / "tensorboard", tag)
        curve_two = scalars(tmp_path / "two" / "tensorboard", tag)
        assert [s for s, _ in curve_one] == [s for s, _ in curve_two]
        for (_, x), (_, y) in zip(curve_one, curve_two, strict=True):
            assert abs(x - y) < 1e-4, (tag, x, y)
