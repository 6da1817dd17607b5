"""Decoding: pick the next token, stream a continuation with a KV cache, sample text for logs.

generate_ids() yields token ids as they are chosen; TextStream turns them into printable text;
sample_text() is the cheap one-shot call pretrain.py makes at each validation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from model import KVCache, LlamaForTraining
from owt.tokenization import TokenizerLoadError

# generate.py's flag defaults; export_hf.py writes the same into generation_config.json.
DEFAULT_MAX_NEW_TOKENS = 200
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_K = 200
DEFAULT_TOP_P = 1.0


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise ValueError naming the valid range if a sampling setting is out of it."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be >= 1, or 0/None to disable it, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1 disables it), got {top_p}")


def pick_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """Choose the next token from one position's logits (vocab,), on any device.

    temperature == 0 is greedy (argmax, as transformers' do_sample=False). Otherwise sample from
    softmax(logits / temperature), keeping only the top_k most likely tokens, then the smallest
    set whose probability reaches top_p (the order transformers applies them in).

    Everything after the copy of the logits runs on the CPU in fp32 with `generator` (a CPU
    generator): MPS `multinomial` has returned masked-out tokens (pytorch#192577, #136623), and
    the same logits and seed then give the same token on every device.
    """
    logits = logits.detach().to("cpu", torch.float32)
    if temperature == 0:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k and top_k < logits.size(-1):
        kth_best = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens ranked above it already reach top_p (the best always stays).
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.index_fill(0, order[drop], float("-inf"))
    return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))


@torch.no_grad()
def generate_ids(
    model: LlamaForTraining,
    prompt_ids: list[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Iterator[int]:
    """Yield up to `max_new_tokens` token ids continuing `prompt_ids`, one at a time.

    Stops after yielding `eos_token_id`. With use_cache the prompt runs once and each new token
    runs alone against the KV cache; use_cache=False re-runs the whole sequence per token (the
    reference the cache is tested against). Runs on the model's device in its parameter dtype.
    """
    check_sampling_args(temperature, top_k, top_p)
    if not prompt_ids:
        raise ValueError("prompt_ids is empty: start from the tokenizer's BOS or EOS token.")
    total = len(prompt_ids) + max_new_tokens
    context = model.config.max_position_embeddings
    if total > context:
        raise ValueError(
            f"{len(prompt_ids)} prompt tokens + {max_new_tokens} new tokens > the model's "
            f"context of {context}; shorten the prompt or lower max_new_tokens."
        )
    weight = model.lm_head.weight
    ids = torch.tensor([prompt_ids], device=weight.device)
    cache = KVCache(model.config, 1, total, weight.device, weight.dtype) if use_cache else None
    logits, _ = model(ids, kv_cache=cache)
    for i in range(max_new_tokens):
        token = pick_token(logits[0, -1], temperature, top_k, top_p, generator)
        yield token
        if token == eos_token_id or i == max_new_tokens - 1:
            return
        new = torch.tensor([[token]], device=ids.device)
        if use_cache:
            logits, _ = model(new, kv_cache=cache)
        else:
            ids = torch.cat((ids, new), dim=1)
            logits, _ = model(ids)


class TextStream:
    """Collects generated token ids and returns the text each one completes, ready to print.

    Decodes all ids so far and returns only the new tail: byte-level BPE splits one character
    over several tokens, so decoding token by token would print replacement characters. A tail
    ending in an incomplete character (U+FFFD) waits for the next token. Special tokens (EOS)
    are not printed.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""  # returned so far

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self._decode()
        return "" if text.endswith("\ufffd") else self._advance(text)

    def finish(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        return self._advance(self._decode())

    def _decode(self) -> str:
        return self.tokenizer.decode(
            self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    def _advance(self, text: str) -> str:
        new, self.text = text[len(self.text) :], text
        return new


def checkpoint_tokenizer(state: dict[str, Any], override: str | None = None) -> Any:
    """The transformers tokenizer a checkpoint was trained with, or `override` (name or folder).

    Raises TokenizerLoadError if it cannot be loaded or if its ids do not fit the model's
    vocabulary (the wrong tokenizer).
    """
    from transformers import AutoTokenizer

    name = override or state["tokenizer_name"]
    try:
        # Not tokenization.load_encoder: its fast-encoding setup costs seconds, useless here.
        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as exc:  # OSError, ValueError, HTTP errors...
        raise TokenizerLoadError(
            f"Cannot load tokenizer '{name}' ({type(exc).__name__}); pass a local tokenizer "
            "folder or an available hub name with --tokenizer_name."
        ) from exc
    vocab_size = state["model_config"]["vocab_size"]
    if len(tokenizer) > vocab_size:
        raise TokenizerLoadError(
            f"Tokenizer '{name}' has {len(tokenizer)} tokens but the model's vocab_size is "
            f"{vocab_size}: pass the tokenizer the checkpoint was trained with (--tokenizer_name)."
        )
    return tokenizer


def prompt_to_ids(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of `prompt` as transformers would feed them (BOS if the tokenizer adds one).

    An empty prompt starts a fresh document: BOS, or EOS for GPT-2 style tokenizers whose
    documents are separated by EOS.
    """
    ids = tokenizer(prompt)["input_ids"]
    if not ids:
        bos = tokenizer.bos_token_id
        ids = [bos if bos is not None else tokenizer.eos_token_id]
    return ids


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside torch.compile and DistributedDataParallel wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif isinstance(model, DistributedDataParallel):
            model = model.module
        else:
            return model


def sample_text(
    model: nn.Module,
    tokenizer: Any,
    prompt: str,
    max_new_tokens: int = 48,
    temperature: float = DEFAULT_TEMPERATURE,
    top_k: int | None = DEFAULT_TOP_K,
    top_p: float | None = DEFAULT_TOP_P,
    seed: int = 0,
) -> str:
    """Return `prompt` plus a short sampled continuation, for logging during training.

    Accepts a TextEncoder or a transformers tokenizer, and a model wrapped by torch.compile or
    DistributedDataParallel (it decodes with the plain module, so nothing recompiles). Runs in
    the parameters' dtype even inside an autocast block, with its own seeded generator so the
    training RNG is untouched and samples at different steps are comparable. Leaves the model
    in the train/eval mode it found.
    """
    tokenizer = getattr(tokenizer, "hf_tokenizer", tokenizer)
    model = unwrap_model(model)
    device = model.lm_head.weight.device
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(device.type, enabled=False):
            generator = torch.Generator().manual_seed(seed)  # tokens are drawn on the CPU
            new_ids = generate_ids(
                model,
                prompt_to_ids(tokenizer, prompt),
                max_new_tokens,
                temperature,
                top_k,
                top_p,
                eos_token_id=tokenizer.eos_token_id,
                generator=generator,
            )
            text = tokenizer.decode(
                list(new_ids), skip_special_tokens=True, clean_up_tokenization_spaces=False
            )
            return prompt + text
    finally:
        model.train(was_training)
