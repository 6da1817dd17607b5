"""How long evaluate.py takes: validation-text tokens/s and HellaSwag items/s of a 124M model.

    uv run benchmarks/bench_evaluate.py [--device auto] [--tokens 16384] [--items 64]

Scores, with evaluate.py's own functions (owt.lm_scores.score_stream, owt.hellaswag.score_items),
two randomly initialised models of the real shapes: ours at the defaults (123.6M) and
transformers' GPT-2 124M (GPT2LMHeadModel, the model `--hf_model gpt2` loads), on Python's
documentation, in fp32 and in the dtype --dtype auto picks. Speed does not depend on the weights.
Forward FLOPs per token are a third of benchmarks/measure.py's training count (2N + 4LHQT), so
MFU is against the same run's measured matmul peak in that dtype. The full validation split of
HellaSwag (10,042 items) then takes about 10,042 / (items/s) seconds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "train"))

from measure import measure_matmul_peak, model_flops_per_token  # noqa: E402
from model import LlamaForTraining, ModelConfig  # noqa: E402
from owt.devices import (  # noqa: E402
    autocast,
    format_dtype,
    resolve_device,
    resolve_dtype,
    setup_backend,
)
from owt.hellaswag import Item, score_items  # noqa: E402
from owt.lm_scores import document_stream, score_stream  # noqa: E402
from textdata import english_documents, save_gpt2_tokenizer  # noqa: E402


def models(device: torch.device) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    ours = LlamaForTraining(ModelConfig()).to(device).eval()
    gpt2 = GPT2LMHeadModel(GPT2Config()).to(device).eval()
    return {
        "ours 124M": lambda ids: ours(ids)[0],
        "GPT-2 124M (transformers)": lambda ids: gpt2(input_ids=ids, use_cache=False).logits,
    }


def items_from(documents: list[str], count: int) -> list[Item]:
    """HellaSwag-shaped items (a ~25-token context, four ~20-token endings) of real text."""
    words = " ".join(documents).split()

    def text(start: int, n: int) -> str:
        return " ".join(words[start : start + n])

    return [
        Item(text(100 * i, 20), tuple(text(100 * i + 20 + 15 * j, 15) for j in range(4)), 0)
        for i in range(count)
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="auto")
    p.add_argument("--tokens", type=int, default=16384, help="validation tokens per model")
    p.add_argument("--items", type=int, default=64, help="HellaSwag items per model")
    p.add_argument("--batch_size", type=int, default=4)
    args = p.parse_args()
    device = resolve_device(args.device)
    setup_backend(device)
    with tempfile.TemporaryDirectory() as folder:  # the real GPT-2 tokenizer, offline
        tokenizer = AutoTokenizer.from_pretrained(save_gpt2_tokenizer(folder))
    documents = english_documents()
    stream = document_stream(tokenizer, documents)[: args.tokens + 1]
    items = items_from(documents, args.items)
    flops_per_token = model_flops_per_token(ModelConfig(), 1024) / 3  # forward only
    for dtype in dict.fromkeys([torch.float32, resolve_dtype(device, "auto")]):
        peak = measure_matmul_peak(device, dtype)
        print(f"{device} {format_dtype(dtype)}: matmul peak {peak / 1e12:.2f} TFLOP/s")
        for name, logits in models(device).items():
            with autocast(device, dtype):
                start = time.perf_counter()
                score_stream(logits, stream, 1024, args.batch_size, device, 1)
                text_seconds = time.perf_counter() - start
                start = time.perf_counter()
                score_items(logits, tokenizer, items, device, 1024, args.batch_size * 1024)
                item_seconds = time.perf_counter() - start
            tokens_per_s = (len(stream) - 1) / text_seconds
            items_per_s = args.items / item_seconds
            mfu = tokens_per_s * flops_per_token / peak
            print(
                f"  {name}: {tokens_per_s:,.0f} tokens/s (MFU {mfu:.2f}), {items_per_s:.1f} "
                f"HellaSwag items/s (all 10,042 in ~{10042 / items_per_s / 60:.0f} min)"
            )


if __name__ == "__main__":
    main()
