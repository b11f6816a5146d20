"""The offline CLIP tokenizer and the prompt encoder."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import CLIPTokenizer

from policy.config import TextEncoderConfig
from policy.text import (
    BOS_TOKEN,
    EOS_TOKEN,
    PromptEncoder,
    build_clip_tokenizer,
    build_text_encoder,
    save_tokenizer,
)

WORDS = ["warm oak table, soft window light", "white marble", "stable tab", "Café crème", "table"]


@pytest.fixture(scope="module")
def tokenizer() -> CLIPTokenizer:
    return build_clip_tokenizer(WORDS, max_length=12)


def test_every_vocabulary_word_is_one_token(tokenizer: CLIPTokenizer) -> None:
    # "table", "tab" and "stable" share merges; each must still be a single token.
    for word in ["warm", "oak", "table", "soft", "window", "light", "white", "marble", "stable", "tab"]:
        assert tokenizer.tokenize(word) == [word + "</w>"], word
    assert len(tokenizer.tokenize("Café")) == 1  # one token, spelled in CLIP's byte-level alphabet


def test_prompt_ids_by_hand(tokenizer: CLIPTokenizer) -> None:
    ids = tokenizer("White  marble", padding="max_length", max_length=12).input_ids
    vocab = tokenizer.get_vocab()
    bos, eos = vocab[BOS_TOKEN], vocab[EOS_TOKEN]
    # lower-cased, whitespace collapsed, start + 2 words + end, padded with the end token (CLIP's pad)
    assert ids == [bos, vocab["white</w>"], vocab["marble</w>"], eos] + [eos] * 8


def test_unknown_words_fall_back_to_bytes(tokenizer: CLIPTokenizer) -> None:
    tokens = tokenizer.tokenize("zebra 42 ünïcode!")
    assert "zebra</w>" not in tokenizer.get_vocab()
    assert len(tokens) > 4
    assert tokenizer.unk_token_id not in tokenizer.convert_tokens_to_ids(tokens)
    text = "zebra ünïcode"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False).input_ids) == text


def test_saved_tokenizer_reloads_identically(tokenizer: CLIPTokenizer, tmp_path) -> None:
    save_tokenizer(tokenizer, tmp_path)
    assert {"vocab.json", "merges.txt", "tokenizer.json"} <= {p.name for p in tmp_path.iterdir()}
    loaded = CLIPTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").unlink()  # Stable Diffusion checkpoints ship only vocab.json + merges.txt
    from_plain_files = CLIPTokenizer.from_pretrained(tmp_path)
    for text in ["warm oak table, soft window light", "zebra on café marble", ""]:
        expected = tokenizer(text).input_ids
        assert loaded(text).input_ids == expected
        assert from_plain_files(text).input_ids == expected
    assert loaded.model_max_length == 12 and from_plain_files.model_max_length == 12


def test_tokenizer_rejects_tiny_max_length() -> None:
    with pytest.raises(ValueError, match="max_length must be >= 3"):
        build_clip_tokenizer(WORDS, max_length=2)


def test_text_encoder_must_match_tokenizer_length(tokenizer: CLIPTokenizer) -> None:
    with pytest.raises(ValueError, match="model_max_length=12 but text.max_length=16"):
        build_text_encoder(TextEncoderConfig(max_length=16), tokenizer)


def test_prompt_encoder_caches_and_matches_uncached(tokenizer: CLIPTokenizer) -> None:
    encoder_model = build_text_encoder(TextEncoderConfig(max_length=12), tokenizer).eval()
    encoder = PromptEncoder(tokenizer, encoder_model)
    first = encoder.encode(["white marble", "", "white marble"], torch.float32)
    assert first.shape == (3, 12, 64)
    assert torch.equal(first[0], first[2])
    assert set(encoder._cache) == {"white marble", ""}
    ids = tokenizer(["white marble"], padding="max_length", max_length=12, return_tensors="pt").input_ids
    with torch.no_grad():
        direct = encoder_model(ids)[0]
    # A batch of 3 prompts against a batch of 1: the matmul kernels may block the rows differently per batch size
    # on another CPU, so equal to float32 rounding (the cache itself is exact: rows 0 and 2 above are one tensor).
    torch.testing.assert_close(first[:1], direct, rtol=0, atol=1e-5)
    assert encoder.encode([], torch.float32).shape == (0, 12, 64)
    with pytest.raises(TypeError, match="not a single string"):
        encoder.encode("white marble", torch.float32)


def test_long_prompt_is_truncated_with_a_warning(tokenizer: CLIPTokenizer, caplog) -> None:
    encoder = PromptEncoder(tokenizer, build_text_encoder(TextEncoderConfig(max_length=12), tokenizer).eval())
    with caplog.at_level(logging.WARNING, logger="policy.text"):
        out = encoder.encode(["oak " * 20], torch.float32)
    assert out.shape == (1, 12, 64)
    assert "22 tokens; truncated to 12" in caplog.text
