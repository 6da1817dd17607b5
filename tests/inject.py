"""Run a script of train/ with one fault injected, for tests:

    python tests/inject.py FAULT SCRIPT ARGS...     (SCRIPT: pretrain.py; scripts.run_script's
                                                   fault= argument builds this command)

Faults (the product code has no test hooks; this wrapper patches it from outside):
    nan:I,J,...    training forward calls number I, J... (0-based) return a NaN loss
    nan:all        every training forward returns a NaN loss
    oom:N          a micro-batch of more than N sequences raises torch.OutOfMemoryError
    enospc:MODULE  writes through os.fdopen in MODULE (token_cache, checkpointing) fail with
                   ENOSPC after 4 KiB, as on a full disk
    enospc:MODULE:K  only the K-th file MODULE opens that way (1-based) fails so: the disk fills
                   up after K - 1 files were written (checkpointing: the K-th checkpoint save)
    signal:NAME:I  training forward call I sends signal NAME (e.g. SIGTERM) to this process
    slow:SECONDS   every training forward sleeps SECONDS first: a slow step, so that a signal
                   sent during a step lands while the step is still running
    hang_save:K:MARKER  the K-th checkpoint save (1-based) writes half its bytes, creates
                   MARKER, then sleeps: the test kills the process there
    pause_step:I:MARKER  training forward call I creates MARKER and waits until the test
                   removes it (at most PAUSE_SECONDS): the run is held mid-training
    pause_cache:MARKER  the token cache build creates MARKER before tokenizing and waits
                   likewise: the builder is held while it holds the cache's lock
"""

from __future__ import annotations

import errno
import importlib
import io
import os
import runpy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))

import torch  # noqa: E402

import model  # noqa: E402

PAUSE_SECONDS = 300


def pause(marker: Path) -> None:
    """Create `marker`, then wait until it is removed (the test's go-ahead)."""
    marker.touch()
    deadline = time.monotonic() + PAUSE_SECONDS
    while marker.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"inject: {marker} was not removed in {PAUSE_SECONDS} s")
        time.sleep(0.02)


def at_forward_call(at: int, action) -> None:
    """Run `action()` at training forward call `at` (0-based), before the forward."""
    original = model.LlamaForTraining.forward
    calls = {"n": 0}

    def forward(self, input_ids, targets=None, **kwargs):
        if self.training:
            if calls["n"] == at:
                action()
            calls["n"] += 1
        return original(self, input_ids, targets, **kwargs)

    model.LlamaForTraining.forward = forward


def inject(fault: str) -> None:
    kind, _, spec = fault.partition(":")
    if kind == "none":
        return
    if kind == "nan":
        original = model.LlamaForTraining.forward
        calls = {"n": 0}
        which = None if spec == "all" else {int(i) for i in spec.split(",")}

        def nan_forward(self, input_ids, targets=None, **kwargs):
            logits, loss = original(self, input_ids, targets, **kwargs)
            if self.training:
                if which is None or calls["n"] in which:
                    loss = loss * float("nan")
                calls["n"] += 1
            return logits, loss

        model.LlamaForTraining.forward = nan_forward
    elif kind == "oom":
        limit = int(spec)
        original = model.LlamaForTraining.forward

        def oom_forward(self, input_ids, targets=None, **kwargs):
            if self.training and input_ids.size(0) > limit:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return original(self, input_ids, targets, **kwargs)

        model.LlamaForTraining.forward = oom_forward
    elif kind == "enospc":
        module, _, nth = spec.partition(":")
        target = importlib.import_module(f"owt.{module}")
        real_fdopen = os.fdopen
        opened = {"n": 0}

        class FullDisk(io.RawIOBase):
            def __init__(self, f):
                self.f, self.budget = f, 4096

            def writable(self):
                return True

            def write(self, data):
                if len(data) > self.budget:
                    raise OSError(errno.ENOSPC, "No space left on device")
                self.budget -= len(data)
                return self.f.write(data)

            def flush(self):
                if not self.f.closed:
                    self.f.flush()

            def fileno(self):
                return self.f.fileno()

            def close(self):
                self.f.close()
                super().close()

        class PatchedOs:
            def __getattr__(self, name):
                return getattr(os, name)

            @staticmethod
            def fdopen(fd, *args, **kwargs):
                opened["n"] += 1
                f = real_fdopen(fd, *args, **kwargs)
                return FullDisk(f) if not nth or opened["n"] == int(nth) else f

        target.os = PatchedOs()
    elif kind == "signal":
        import signal

        name, at = spec.split(":")
        at_forward_call(int(at), lambda: os.kill(os.getpid(), getattr(signal, name)))
    elif kind == "slow":
        seconds = float(spec)
        original = model.LlamaForTraining.forward

        def slow_forward(self, input_ids, targets=None, **kwargs):
            if self.training:
                time.sleep(seconds)
            return original(self, input_ids, targets, **kwargs)

        model.LlamaForTraining.forward = slow_forward
    elif kind == "hang_save":
        count, marker = spec.split(":", 1)
        from owt import checkpointing

        real_save = torch.save
        calls = {"n": 0}

        def hanging_save(obj, f, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] != int(count):
                return real_save(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            f.write(buffer.getvalue()[: buffer.tell() // 2])
            f.flush()
            Path(marker).touch()
            time.sleep(600)

        checkpointing.torch.save = hanging_save
    elif kind == "pause_step":
        at, marker = spec.split(":", 1)
        at_forward_call(int(at), lambda: pause(Path(marker)))
    elif kind == "pause_cache":
        from owt import token_cache

        original_build = token_cache.build_token_cache
        builds = {"n": 0}

        def pausing_build(*args, **kwargs):
            if builds["n"] == 0:  # before the first split
                pause(Path(spec))
            builds["n"] += 1
            return original_build(*args, **kwargs)

        token_cache.build_token_cache = pausing_build
    else:
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    inject(sys.argv[1])
    script = Path(__file__).resolve().parents[1] / "train" / sys.argv[2]
    sys.argv = [str(script), *sys.argv[3:]]
    runpy.run_path(str(script), run_name="__main__")  # the real script, with the fault in place
