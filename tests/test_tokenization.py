"""The tiktoken engine gives the transformers ids exactly; other tokenizers use transformers."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from owt import tokenization
from owt.tokenization import (
    NotByteLevelBPE,
    TextEncoder,
    backend_spec,
    byte_level_bpe_encoding,
    hf_encode_batch,
    load_encoder,
)

# Pre-tokenizer corners: whitespace runs (the `\s+(?!\S)` rule), newlines, unicode letters and
# numbers, emoji sequences, contractions, special-token strings, control characters.
TRICKY_TEXTS = [
    "",
    " ",
    "a  b",
    "a   \n  b",
    "   leading and trailing   ",
    "\n\n\nparagraphs\n\n\n\n",
    "windows\r\nline\r\nends\r\n",
    "\t tab \t\t mix \x0b\x0c",
    "nbsp\u00a0ideographic\u3000space\u2028line sep\u2029",
    " " * 5000 + "x",
    "a" * 10000,
    "naïve café Ελληνικά русский 中文字符 日本語 한국어 العربية עברית",
    "combining e\u0301 and ﬁ ligature, ß ẞ, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢, \U0010ffff \ufffd",
    "emoji 🤖🚀 👩‍👩‍👧‍👦 🇫🇷 👍🏽 ❤️",
    "1234567890 3.14159 1,000,000 2024-01-01 ٣٤٥ Ⅻ ½ ²³",
    "I'm you're they've he'd she'll it's DON'T Y'ALL rock'n'roll ’s ’t 'quoted'",
    "<|endoftext|>",
    "the model emits <|endoftext|> at the end<|endoftext|><|endoftext|>\n",
    "def f(x):\n    return x**2  # code\n\x00\x01\x7f",
]


@pytest.fixture(scope="module")
def gpt2(gpt2_tokenizer_dir: Path) -> TextEncoder:
    return load_encoder(str(gpt2_tokenizer_dir))


def assert_same_ids_as_transformers(encoder: TextEncoder, texts: list[str]) -> None:
    """encode_batch equals the transformers tokenizer's ids, text by text."""
    expected = hf_encode_batch(encoder.hf_tokenizer, texts)
    got = encoder.encode_batch(texts)
    mismatched = [t[:60] for t, a, b in zip(texts, got, expected, strict=True) if a != b]
    assert not mismatched, f"{len(mismatched)} texts differ, e.g. {mismatched[:3]}"


def test_gpt2_runs_on_tiktoken_with_gpt2_ids(gpt2: TextEncoder) -> None:
    assert gpt2.backend == "tiktoken"
    assert (gpt2.vocab_size, gpt2.eos_token_id) == (50257, 50256)
    # The ids tiktoken documents for its own (downloaded) gpt2 encoding.
    assert gpt2.encode_batch(["hello world"]) == [[31373, 995]]


def test_identical_ids_on_real_english(gpt2: TextEncoder, documents: list[str]) -> None:
    assert_same_ids_as_transformers(gpt2, documents)
    assert_same_ids_as_transformers(gpt2, ["\n\n".join(documents)])  # one ~450 kB document


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_identical_ids_on_tricky_text(gpt2: TextEncoder, text: str) -> None:
    assert_same_ids_as_transformers(gpt2, [text])


def test_identical_ids_on_every_vocabulary_token(gpt2: TextEncoder) -> None:
    """Each token's own text, which tiktoken maps straight to the token when it is one piece."""
    encoding = gpt2.tiktoken_encoding
    texts = [encoding.decode([i]) for i in range(gpt2.vocab_size)]
    assert_same_ids_as_transformers(gpt2, texts)


@pytest.mark.parametrize("engine", ["tiktoken", "transformers"])
def test_encode_documents_is_encode_batch_with_eos(
    gpt2: TextEncoder, documents: list[str], engine: str
) -> None:
    encoder = gpt2 if engine == "tiktoken" else replace(gpt2, tiktoken_encoding=None)
    assert encoder.backend == engine
    texts = documents[:30] + TRICKY_TEXTS
    if engine == "tiktoken":  # transformers rejects lone surrogates (Arrow text never has them)
        texts.append("lone \ud800 surrogate")
    expected = [token for ids in encoder.encode_batch(texts) for token in [*ids, 50256]]
    for dtype in (np.uint16, np.uint32):
        array = encoder.encode_documents(texts, dtype)
        assert array.dtype == dtype
        assert array.tolist() == expected
    assert encoder.encode_documents([], np.uint16).tolist() == encoder.encode_batch([]) == []


def test_literal_special_token_is_encoded_as_text(gpt2: TextEncoder) -> None:
    """A document quoting "<|endoftext|>" must not get a document boundary in the middle."""
    text = "GPT-2 separates documents with <|endoftext|> in its training data."
    (ids,) = gpt2.encode_batch([text])
    assert gpt2.eos_token_id not in ids
    assert gpt2.tiktoken_encoding.decode(ids) == text
    # transformers alone would have matched it: the policy is what makes both engines agree.
    plain = gpt2.hf_tokenizer([text], add_special_tokens=False)["input_ids"][0]
    assert gpt2.eos_token_id in plain


def test_fingerprint_and_ids_do_not_depend_on_the_engine(
    gpt2_tokenizer_dir: Path,
    gpt2: TextEncoder,
    documents: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tokenization, "_fast_encoding", lambda *args: None)
    slow = load_encoder(str(gpt2_tokenizer_dir))
    assert slow.backend == "transformers"
    assert slow.fingerprint == gpt2.fingerprint
    assert slow.encode_batch(documents[:50]) == gpt2.encode_batch(documents[:50])
    # Calls leave per-call state in the transformers backend; it must not leak into the hash.
    assert tokenization._fingerprint(slow.hf_tokenizer, backend_spec(slow.hf_tokenizer)) == (
        slow.fingerprint
    )


def _train_tokenizer(folder: Path, documents: list[str], kind: str) -> Path:
    """A small tokenizer trained offline on `documents`, saved as a transformers folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    eos = "<|endoftext|>"
    if kind == "byte-level-bpe":  # what tokenizers' ByteLevelBPETokenizer builds
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=1500,
            special_tokens=[eos],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    elif kind == "whitespace-bpe":
        tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.BpeTrainer(
            vocab_size=1500, special_tokens=["[UNK]", eos], show_progress=False
        )
    else:
        tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.WordLevelTrainer(special_tokens=["[UNK]", eos], show_progress=False)
    tokenizer.train_from_iterator(documents, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=eos).save_pretrained(folder)
    return folder


def test_other_byte_level_bpe_runs_on_tiktoken(tmp_path: Path, documents: list[str]) -> None:
    """Ids laid out unlike GPT-2's (the special token is id 0) still map one to one."""
    encoder = load_encoder(str(_train_tokenizer(tmp_path, documents, "byte-level-bpe")))
    assert encoder.backend == "tiktoken"
    assert encoder.eos_token_id == 0
    assert_same_ids_as_transformers(encoder, documents + TRICKY_TEXTS)
    assert all(0 not in ids for ids in encoder.encode_batch(TRICKY_TEXTS))


@pytest.mark.parametrize("kind", ["word-level", "whitespace-bpe"])
def test_other_tokenizers_fall_back_to_transformers(
    tmp_path: Path, documents: list[str], kind: str
) -> None:
    encoder = load_encoder(str(_train_tokenizer(tmp_path, documents, kind)))
    assert encoder.backend == "transformers"
    assert encoder.tiktoken_encoding is None
    ids = encoder.encode_batch(documents[:20] + TRICKY_TEXTS)
    assert ids == hf_encode_batch(encoder.hf_tokenizer, documents[:20] + TRICKY_TEXTS)
    assert all(encoder.eos_token_id not in doc for doc in ids)  # same special-token policy


def _set(path: str, value: object):
    """An edit of tokenizer.json that sets `path` ("a.b") to `value`."""

    def edit(spec: dict) -> None:
        *parents, key = path.split(".")
        for parent in parents:
            spec = spec[parent]
        spec[key] = value

    edit.__name__ = f"{path}={value}"
    return edit


def _swap_first_merges(spec: dict) -> None:
    merges = spec["model"]["merges"]
    merges[0], merges[1] = merges[1], merges[0]


def _add_unreachable_token(spec: dict) -> None:
    spec["model"]["vocab"]["Ġzzqqzzqq"] = len(spec["model"]["vocab"])


def _add_normal_added_token(spec: dict) -> None:
    spec["added_tokens"].append({**spec["added_tokens"][0], "content": "<x>", "special": False})


@pytest.mark.parametrize(
    "edit",
    [
        _set("normalizer", {"type": "NFC"}),
        _set("pre_tokenizer.add_prefix_space", True),
        _set("pre_tokenizer.use_regex", False),
        _set("pre_tokenizer", {"type": "Whitespace"}),
        _set("decoder", None),
        _set("model.type", "WordPiece"),
        _set("model.dropout", 0.1),
        _set("model.continuing_subword_prefix", "##"),
        _swap_first_merges,
        _add_unreachable_token,
        _add_normal_added_token,
    ],
    ids=lambda edit: edit.__name__,
)
def test_what_tiktoken_cannot_reproduce_is_refused(gpt2: TextEncoder, edit) -> None:
    spec = copy.deepcopy(backend_spec(gpt2.hf_tokenizer))
    byte_level_bpe_encoding(spec)  # the unedited GPT-2 spec is accepted
    edit(spec)
    with pytest.raises(NotByteLevelBPE):
        byte_level_bpe_encoding(spec)
