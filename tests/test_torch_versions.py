"""The oldest torch pyproject.toml claims (2.6) runs the code; what needs a newer one refuses in
one line naming the version. Checked on the locked torch by taking the newer API away."""

from __future__ import annotations

import pytest
import torch

from owt import devices, distributed
from owt.cli import UsageError
from owt.optim import build_optimizer, check_available
from tiny import tiny_model


def test_muon_without_torch_optim_muon_names_the_version(monkeypatch):
    monkeypatch.delattr(torch.optim, "Muon", raising=False)
    with pytest.raises(UsageError, match=r"--optimizer muon needs torch 2\.9 or later"):
        check_available("muon")
    with pytest.raises(UsageError, match="use --optimizer adamw"):
        build_optimizer(tiny_model(), 1e-3, 0.1, "cpu", "muon")
    check_available("adamw")


def test_fsdp_on_the_cpu_without_cpu_stream_events_names_the_version(monkeypatch):
    monkeypatch.delattr(torch.cpu.Stream, "record_event", raising=False)
    with pytest.raises(UsageError, match=r"--fsdp on the CPU needs torch 2\.7 or later"):
        distributed.check_launch("cpu", 2, fsdp=True)
    distributed.check_launch("cuda", 2, fsdp=True)
    distributed.check_launch("cpu", 2, fsdp=False)


def test_compile_leaves_the_embedding_out_through_a_plain_function(monkeypatch):
    """torch 2.6's disable(recursive=False) sets an attribute on what it is given, which a
    bound method refuses: compile_for_training must hand it a function."""

    def disable_as_torch_2_6(fn, recursive=True):  # noqa: ANN001, ANN202
        fn._torchdynamo_disable = True  # AttributeError for a bound method
        return fn

    monkeypatch.setattr(torch.compiler, "disable", disable_as_torch_2_6)
    monkeypatch.setattr(torch, "compile", lambda model: model)
    model = tiny_model()
    devices.compile_for_training(model)
    assert model.model.embed_tokens.forward._torchdynamo_disable
    x = torch.randint(0, 64, (2, 8))
    assert model(x, x)[1].isfinite()
