"""Load a tokenizer by hub name or local folder and encode documents in batches."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any


class TokenizerLoadError(RuntimeError):
    """The tokenizer could not be loaded; the message says what to try."""


@dataclass
class TextEncoder:
    """What the token cache needs from a tokenizer."""

    name: str
    vocab_size: int  # number of token ids the tokenizer can produce (len(tokenizer))
    eos_token_id: int
    fingerprint: str  # changes whenever the ids a text maps to could change
    hf_tokenizer: Any

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens."""
        return self.hf_tokenizer(texts, add_special_tokens=False)["input_ids"]


def _fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        blob = backend.to_str()
    else:
        blob = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_encoder(tokenizer_name: str) -> TextEncoder:
    """Load `tokenizer_name` with AutoTokenizer (hub name or local folder)."""
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
    return TextEncoder(
        name=tokenizer_name,
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        fingerprint=_fingerprint(tokenizer),
        hf_tokenizer=tokenizer,
    )
