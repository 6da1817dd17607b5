"""Load a tokenizer by hub name or local folder and encode documents in batches.

Two engines produce the same ids:

* tiktoken, when the tokenizer is a GPT-2-style byte-level BPE (ByteLevel pre-tokenizer with
  GPT-2's regex, ByteLevel decoder, BPE model). The Encoding is built from the tokenizer's own
  vocab and merges, nothing is downloaded. It is 3-6x faster than the `tokenizers` engine on the
  same vocab (benchmarks/README.md, "Tokenization").
* the transformers tokenizer itself, for everything else.

A special-token string that occurs literally in a document (say "<|endoftext|>" in a web page
about GPT-2) is encoded as ordinary text by both engines, never as the special token: documents
are data, and only the token cache decides where a document ends (it appends the real EOS).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt
import tiktoken

from owt.cli import UsageError

log = logging.getLogger(__name__)

# GPT-2's pre-tokenizer regex, as tiktoken's own GPT-2 encoding spells it (equivalent to the
# original ByteLevel one, faster with possessive quantifiers). Copied, not imported from
# tiktoken_ext, since that module is tiktoken's plugin registry rather than a public API.
GPT2_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)

# Hashed into every fingerprint: the ids of a text depend on this policy as well as on the
# tokenizer files, and caches built under an earlier policy must not be reused.
ENCODING_POLICY = "special-token strings in text are encoded as text"

# Texts that exercise the pre-tokenizer's corners. Both engines encode them once at load time and
# the tiktoken engine is only used if the ids agree, a cheap guard for byte-level tokenizers that
# pass the structural checks yet were built in some unusual way.
_PROBE_TEXTS = [
    "Hello world! It's 2024; we'll see 3.14159 and 1,000,000 users.",
    "  leading spaces,\ttabs,\n\nnewlines   \n  and trailing spaces   ",
    "naïve café, Ελληνικά, русский, 中文字符, 日本語のテキスト, 한국어",
    "emoji 🤖🚀 👩‍👩‍👧 and ZWJ, combining e\u0301, NBSP\u00a0here",
    "I'm, you're, they've, he'd, she'll, it's, DON'T, 'quoted'",
    "literal <|endoftext|> and <s></s> inside a document",
    "def f(x):\n    return x**2  # code\r\n\x00\x7f",
]


class TokenizerLoadError(UsageError):
    """The tokenizer could not be loaded; the message says what to try."""


@dataclass
class TextEncoder:
    """What the token cache needs from a tokenizer."""

    name: str
    vocab_size: int  # number of token ids the tokenizer can produce (len(tokenizer))
    eos_token_id: int
    fingerprint: str  # changes whenever the ids a text maps to could change
    hf_tokenizer: Any
    # The fast engine, set for GPT-2-style byte-level BPE; gives the same ids as hf_tokenizer.
    tiktoken_encoding: tiktoken.Encoding | None = None
    num_threads: int = field(default_factory=lambda: os.cpu_count() or 1)

    @property
    def backend(self) -> str:
        """Which engine `encode_batch` uses: "tiktoken" or "transformers"."""
        return "tiktoken" if self.tiktoken_encoding is not None else "transformers"

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens (special-token strings count as text)."""
        if not texts:  # transformers raises IndexError on an empty batch
            return []
        if self.tiktoken_encoding is not None:
            # Threads run in parallel: tiktoken's Rust core releases the GIL.
            return self.tiktoken_encoding.encode_ordinary_batch(texts, num_threads=self.num_threads)
        return hf_encode_batch(self.hf_tokenizer, texts)

    def token_byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes each token id stands for (special tokens such as EOS: 0), the
        denominator of bits per byte. Exact for byte-level BPE, where a text's bytes are its
        tokens' bytes; for other tokenizers the length of each id decoded alone."""
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        special = set(getattr(self.hf_tokenizer, "all_special_ids", []) or [])
        for token in range(self.vocab_size):
            if token in special:
                continue
            if self.tiktoken_encoding is not None:
                lengths[token] = len(self.tiktoken_encoding.decode_single_token_bytes(token))
            else:
                text = self.hf_tokenizer.decode([token], skip_special_tokens=True)
                lengths[token] = len(text.encode())
        return lengths

    def encode_documents(self, texts: list[str], dtype: npt.DTypeLike) -> np.ndarray:
        """The ids of each text followed by EOS, all in one array of `dtype`.

        Exactly `encode_batch` with EOS appended to each document, flattened; what the token
        cache writes. On tiktoken the ids never become Python ints (encode_to_numpy runs with
        the GIL released), which makes a cache build ~1.3x faster than encode_batch + fromiter.
        """
        if not texts:
            return np.empty(0, dtype=dtype)
        if self.tiktoken_encoding is None:
            ids = self.encode_batch(texts)
            for doc in ids:
                doc.append(self.eos_token_id)
            return np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype)
        eos = np.array([self.eos_token_id], dtype=np.uint32)
        with ThreadPoolExecutor(self.num_threads) as pool:
            arrays = list(pool.map(self._tiktoken_array, texts))
        return np.concatenate([part for ids in arrays for part in (ids, eos)], dtype=dtype)

    def _tiktoken_array(self, text: str) -> np.ndarray:
        try:
            # No special token allowed nor disallowed: encode_ordinary, as a uint32 array.
            return self.tiktoken_encoding.encode_to_numpy(text, disallowed_special=())
        except UnicodeEncodeError:  # lone surrogates, which encode_ordinary repairs
            return np.array(self.tiktoken_encoding.encode_ordinary(text), dtype=np.uint32)


def hf_encode_batch(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Ids of each text from a transformers tokenizer, under the same policy as the fast engine."""
    return tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def backend_spec(tokenizer: Any) -> dict[str, Any] | None:
    """The tokenizer.json content of a `tokenizers`-backed tokenizer (None for other kinds)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return None if backend is None else json.loads(backend.to_str())


def _fingerprint(tokenizer: Any, spec: dict[str, Any] | None) -> str:
    if spec is not None:
        # Truncation and padding are per-call state that transformers writes into the backend,
        # not part of how a text maps to ids.
        mapping = {k: v for k, v in spec.items() if k not in ("truncation", "padding")}
        blob = json.dumps(mapping, sort_keys=True)
    else:
        blob = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(f"{ENCODING_POLICY}\n{blob}".encode()).hexdigest()[:16]


@cache
def _gpt2_unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the printable character standing for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    byte_to_char = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in byte_to_char:
            byte_to_char[b] = chr(256 + shifted)
            shifted += 1
    return {c: b for b, c in byte_to_char.items()}


def _token_bytes(token: str) -> bytes:
    """The bytes a byte-level token string stands for (KeyError if it is not byte-level)."""
    table = _gpt2_unicode_to_byte()
    return bytes(table[c] for c in token)


class NotByteLevelBPE(ValueError):
    """The tokenizer cannot be run by tiktoken with identical ids; the message says why."""


def _require(condition: bool, reason: str) -> None:
    if not condition:
        raise NotByteLevelBPE(reason)


def byte_level_bpe_encoding(
    spec: dict[str, Any] | None, name: str = "hf-byte-level-bpe"
) -> tiktoken.Encoding:
    """A tiktoken Encoding giving the same ids as the tokenizer whose tokenizer.json is `spec`.

    Raises NotByteLevelBPE, saying why, unless the tokenizer is GPT-2-style byte-level BPE.
    tiktoken merges the adjacent pair whose concatenation has the lowest rank, and its ranks are
    the output ids; the `tokenizers` BPE merges the pair listed first in `merges`. They agree when
    every multi-byte token is the result of exactly one merge and the merge results' ids rise in
    merge order, which is checked here (GPT-2 and tokenizers' own BPE trainer satisfy it).
    """
    _require(spec is not None, "no `tokenizers` backend")
    pre, dec, model = spec.get("pre_tokenizer") or {}, spec.get("decoder") or {}, spec["model"]

    _require(spec.get("normalizer") is None, "has a normalizer")
    _require(
        pre.get("type") == "ByteLevel"
        and pre.get("use_regex", True)
        and not pre.get("add_prefix_space", False),
        f"pre-tokenizer is not GPT-2's ByteLevel: {pre}",
    )
    _require(dec.get("type") == "ByteLevel", f"decoder is not ByteLevel: {dec.get('type')}")
    _require(model.get("type") == "BPE", f"model is {model.get('type')}, not BPE")
    _require(not model.get("dropout"), "BPE dropout is random, tiktoken's is not")
    _require(
        not model.get("continuing_subword_prefix") and not model.get("end_of_word_suffix"),
        "BPE with subword prefix or suffix",
    )

    added = spec.get("added_tokens") or []
    # A non-special added token is still matched in the text by transformers (split_special_tokens
    # only covers special ones), which encode_ordinary would not do.
    _require(all(t["special"] for t in added), "has non-special added tokens")
    added_ids = {t["id"] for t in added}

    vocab: dict[str, int] = model["vocab"]
    try:
        ranks = {_token_bytes(token): vocab[token] for token in _gpt2_unicode_to_byte()}
        previous_id = -1
        for merge in model["merges"]:
            left, right = merge.split(" ") if isinstance(merge, str) else merge
            merged, merged_id = _token_bytes(left + right), vocab[left + right]
            _require(merged not in ranks, f"two merges produce {left + right!r}")
            _require(merged_id > previous_id, f"ids do not rise in merge order at {merge}")
            ranks[merged] = previous_id = merged_id
    except KeyError as exc:
        raise NotByteLevelBPE(f"not a byte-level BPE vocabulary (missing {exc})") from None
    rank_ids = set(ranks.values())
    _require(len(rank_ids) == len(ranks), "two tokens share an id")
    extra = len(set(vocab.values()) - rank_ids - added_ids)
    _require(extra == 0, f"{extra} vocab tokens are neither bytes, merges nor added tokens")

    # Registered so that decode() knows them; encode_ordinary never emits them. An added token
    # that is also a byte or merge result already decodes through the ranks.
    special_tokens = {t["content"]: t["id"] for t in added if t["id"] not in rank_ids}
    return tiktoken.Encoding(
        name, pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=special_tokens
    )


def _fast_encoding(
    tokenizer: Any, spec: dict[str, Any] | None, name: str
) -> tiktoken.Encoding | None:
    """The tiktoken Encoding for `tokenizer` if it gives identical ids, else None (logged why)."""
    try:
        encoding = byte_level_bpe_encoding(spec, name)
    except NotByteLevelBPE as exc:
        log.info("Tokenizer %s runs on transformers, not tiktoken: %s", name, exc)
        return None
    if encoding.encode_ordinary_batch(_PROBE_TEXTS) != hf_encode_batch(tokenizer, _PROBE_TEXTS):
        log.warning(
            "Tokenizer %s: tiktoken ids differ on the probe texts; using transformers", name
        )
        return None
    return encoding


def load_encoder(tokenizer_name: str) -> TextEncoder:
    """Load `tokenizer_name` with AutoTokenizer (hub name or local folder).

    The encoder runs on tiktoken when the tokenizer is GPT-2-style byte-level BPE, else on the
    transformers tokenizer; the ids and the fingerprint are the same either way.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_name)
    except Exception as exc:  # transformers raises OSError, ValueError, HTTP errors...
        raise TokenizerLoadError(
            f"Cannot load tokenizer '{tokenizer_name}': {type(exc).__name__}. "
            "Offline? Set HF_ENDPOINT (and HF_TOKEN for private repos) or pass a local folder "
            "with --tokenizer_name."
        ) from exc
    if tokenizer.eos_token_id is None:
        raise TokenizerLoadError(f"Tokenizer '{tokenizer_name}' has no EOS token.")
    spec = backend_spec(tokenizer)
    return TextEncoder(
        name=tokenizer_name,
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        fingerprint=_fingerprint(tokenizer, spec),
        hf_tokenizer=tokenizer,
        tiktoken_encoding=_fast_encoding(tokenizer, spec, tokenizer_name),
    )
