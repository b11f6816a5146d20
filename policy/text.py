"""Text conditioning: a CLIP tokenizer built offline from a word list, a tiny CLIP text encoder, a prompt cache.

No tokenizer can be downloaded here, so :func:`build_clip_tokenizer` writes its own byte-level BPE vocabulary:
the 256 byte symbols (alone and with CLIP's end-of-word marker ``</w>``, so that any text tokenizes: byte
fallback) plus one merge chain per vocabulary word, so that every word of the studio prompts is one token.
The result is a genuine ``transformers.CLIPTokenizer``; diffusers' pipelines use it natively and
``save_pretrained`` writes vocab.json + merges.txt + tokenizer.json.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from policy.config import TextEncoderConfig

logger = logging.getLogger(__name__)

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"


def build_clip_tokenizer(vocabulary: Iterable[str], max_length: int) -> CLIPTokenizer:
    """A CLIP BPE tokenizer in which every word of ``vocabulary`` is a single token.

    Args:
        vocabulary: words or phrases (e.g. the simulator's prompt vocabulary); they are normalised and split
            exactly as the tokenizer will split prompts (lower-cased, letter runs, digits, punctuation), and
            every piece of two or more symbols gets a merge chain.
        max_length: ``model_max_length``: prompts are padded/truncated to this many tokens.

    Raises:
        ValueError: ``max_length`` < 3, or (a bug) a vocabulary word does not end up as one token.
    """
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3 (start, one token, end), got {max_length}")
    alphabet = sorted(ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for symbol in alphabet:
        vocab[symbol] = len(vocab)
    for symbol in alphabet:
        vocab[symbol + END_OF_WORD] = len(vocab)
    # A merge-free tokenizer only to reuse CLIP's own normaliser and pre-tokeniser on the vocabulary.
    splitter = _tokenizer_from(dict(vocab) | {BOS_TOKEN: len(vocab), EOS_TOKEN: len(vocab) + 1}, [], max_length)
    backend = splitter.backend_tokenizer
    pieces: list[str] = []
    for phrase in vocabulary:
        normalised = backend.normalizer.normalize_str(phrase)
        for piece, _ in backend.pre_tokenizer.pre_tokenize_str(normalised):
            if len(piece) > 1 and piece not in pieces:
                pieces.append(piece)
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for piece in pieces:
        # Chain onto whatever the merges so far make of this piece, so that earlier (higher-priority) merges
        # from words sharing a prefix cannot leave it in two tokens.
        parts = _apply_merges([*piece[:-1], piece[-1] + END_OF_WORD], ranks)
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            merged = parts[0] + parts[1]
            vocab.setdefault(merged, len(vocab))
            parts = [merged, *parts[2:]]
    vocab[BOS_TOKEN] = len(vocab)
    vocab[EOS_TOKEN] = len(vocab)
    tokenizer = _tokenizer_from(vocab, merges, max_length)
    for piece in pieces:
        tokens = tokenizer.backend_tokenizer.model.tokenize(piece)
        if len(tokens) != 1:
            raise ValueError(f"vocabulary piece {piece!r} tokenizes to {[t.value for t in tokens]}, expected 1 token")
    return tokenizer


def _tokenizer_from(vocab: dict[str, int], merges: list[tuple[str, str]], max_length: int) -> CLIPTokenizer:
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=max_length,
    )


def _apply_merges(parts: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding of one word: repeatedly merge the adjacent pair with the lowest rank."""
    while len(parts) > 1:
        candidates = [(ranks[p], i) for i, p in enumerate(itertools.pairwise(parts)) if p in ranks]
        if not candidates:
            break
        _, i = min(candidates)
        parts = [*parts[:i], parts[i] + parts[i + 1], *parts[i + 2 :]]
    return parts


def save_tokenizer(tokenizer: CLIPTokenizer, folder: Path) -> None:
    """Write ``tokenizer`` to ``folder`` as tokenizer.json + config, plus vocab.json and merges.txt.

    The two plain files are what older ``CLIPTokenizer`` versions (and other BPE readers) load.
    """
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    tokenizer.backend_tokenizer.model.save(str(folder))


def build_text_encoder(config: TextEncoderConfig, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """A randomly initialised ``CLIPTextModel`` sized by ``config`` for ``tokenizer``'s vocabulary."""
    if tokenizer.model_max_length != config.max_length:
        raise ValueError(
            f"tokenizer.model_max_length={tokenizer.model_max_length} but text.max_length={config.max_length}"
        )
    clip_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        max_position_embeddings=config.max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(clip_config)


class PromptEncoder:
    """Prompt strings -> CLIP hidden states, computed as diffusers' Stable Diffusion pipelines do, and cached.

    The text encoder is frozen, so each distinct prompt is encoded once per device/dtype; the empty prompt
    is the unconditional branch of classifier-free guidance.
    """

    def __init__(self, tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self._cache: dict[str, torch.Tensor] = {}

    def clear(self) -> None:
        """Forget cached embeddings (call after changing the text encoder's weights, device or dtype)."""
        self._cache.clear()

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], dtype: torch.dtype) -> torch.Tensor:
        """Hidden states of the last layer for each prompt.

        Returns:
            ``[N, L, D]`` in ``dtype`` on the text encoder's device, L = tokenizer.model_max_length.
        """
        if isinstance(prompts, str):
            raise TypeError("prompts must be a sequence of strings, not a single string")
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            for prompt, embeds in zip(missing, self._encode_uncached(missing)):
                self._cache[prompt] = embeds
        if not prompts:
            length, width = self.tokenizer.model_max_length, self.text_encoder.config.hidden_size
            return torch.empty(0, length, width, dtype=dtype, device=self.text_encoder.device)
        return torch.stack([self._cache[p] for p in prompts]).to(dtype)

    def _encode_uncached(self, prompts: list[str]) -> torch.Tensor:
        max_length = self.tokenizer.model_max_length
        inputs = self.tokenizer(
            prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
        )
        lengths = self.tokenizer(prompts, padding="longest", return_tensors="pt").attention_mask.sum(dim=1)
        for prompt, length in zip(prompts, lengths.tolist()):
            if length > max_length:
                logger.warning("prompt %r has %d tokens; truncated to %d", prompt, length, max_length)
        device = self.text_encoder.device
        attention_mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            attention_mask = inputs.attention_mask.to(device)
        return self.text_encoder(inputs.input_ids.to(device), attention_mask=attention_mask)[0]
