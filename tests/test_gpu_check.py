"""benchmarks/gpu_check.sh --cpu: the GPU check's every stage at tiny sizes on the CPU, so the
script a GPU session runs once cannot rot between sessions (issue 22)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gpu_check import STAGES
from scripts import REPO, script_env

NANOGPT_COPY = REPO / "benchmarks" / ".nanogpt" / "model.py"


def test_gpu_check_cpu_smoke_run_writes_every_figure(tmp_path: Path):
    out = tmp_path / "out"
    result = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(out), "--cpu"],
        capture_output=True, text=True, timeout=600,
        env=script_env(set_env={"PYTHON": sys.executable}),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "gpu_check.json").read_text())
    assert (out / "gpu_check.log").stat().st_size > 0
    assert {n: s["status"] for n, s in summary["stages"].items()} == dict.fromkeys(STAGES, "ok")
    assert {"environment", "targets", "total_seconds", "ours_over_nanogpt", *STAGES} <= set(summary)
    assert summary["bench_train"]["tokens_per_s"] > 0
    if NANOGPT_COPY.is_file():
        assert summary["nanogpt"]["tokens_per_s"] > 0 and summary["ours_over_nanogpt"] > 0
    else:  # as in CI: the copy is git-ignored
        assert summary["nanogpt"]["skipped"].startswith("nanoGPT copy not present")
        assert summary["ours_over_nanogpt"] is None
    assert summary["pretrain"]["done"].startswith("Done (max_steps, step 20")
    assert summary["resume"]["resumed_at_expected_step"] and summary["resume"]["final_step"] == 25
    assert "model.safetensors" in summary["export_hf"]["files"]
    assert summary["generate"]["text"].startswith("The meaning of life is")
    assert summary["dry_run"]["counted_gb"] >= 0 and summary["dry_run"]["measured_gb"] > 0
    tests = summary["cuda_tests"]
    assert tests["tests"] > 0 and not tests["failed"] and tests["passed"] == 0
    assert all(
        r in ("no CUDA device", *[]) or "needs 2 CUDA" in r for r in tests["skipped"].values()
    )
