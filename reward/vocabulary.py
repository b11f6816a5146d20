"""Context vocabularies: segment, prompt words and product kind as indices for learned embeddings.

Index 0 of every vocabulary is padding (prompt words only), index 1 is out-of-vocabulary: a value never seen in
training (or seen fewer than ``min_count`` times) maps to it, is counted, and the counts are reported, so
scoring a new segment or an unknown word is never silent. Prompts are lower-cased and split on commas and
whitespace ("warm oak wood tabletop, golden hour light" -> warm, oak, wood, tabletop, golden, hour, light).
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

PAD, OOV = 0, 1
"""Reserved indices."""
_SPLIT = re.compile(r"[\s,;]+")


def prompt_words(prompt: str | None) -> list[str]:
    """The words of a prompt (lower-case, split on commas, semicolons and whitespace); [] for None."""
    if not prompt:
        return []
    return [w for w in _SPLIT.split(prompt.lower()) if w]


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Tokens in index order; ``tokens[i]`` has index ``i + 2`` (0 = padding, 1 = out-of-vocabulary)."""

    tokens: tuple[str, ...]

    @classmethod
    def build(cls, values: Iterable[str | None], min_count: int = 1) -> Vocabulary:
        """The values seen at least ``min_count`` times (None skipped), sorted for a stable order."""
        counts = Counter(v for v in values if v is not None)
        return cls(tuple(sorted(t for t, c in counts.items() if c >= min_count)))

    @property
    def size(self) -> int:
        """Embedding rows needed (tokens + padding + OOV)."""
        return len(self.tokens) + 2

    def index(self, values: Sequence[str | None]) -> tuple[Tensor, int]:
        """Indices [N] int64 of ``values`` and how many were out of vocabulary (None counts as OOV)."""
        lookup = {t: i + 2 for i, t in enumerate(self.tokens)}
        indices = [lookup.get(v, OOV) if v is not None else OOV for v in values]
        return torch.tensor(indices, dtype=torch.long), sum(1 for i in indices if i == OOV)


@dataclasses.dataclass(frozen=True)
class ContextVocabulary:
    """The three vocabularies of a reward model (saved with it)."""

    segments: Vocabulary
    words: Vocabulary
    kinds: Vocabulary

    def to_dict(self) -> dict[str, list[str]]:
        return {
            "segments": list(self.segments.tokens),
            "words": list(self.words.tokens),
            "kinds": list(self.kinds.tokens),
        }

    @classmethod
    def from_dict(cls, data: dict[str, list[str]]) -> ContextVocabulary:
        return cls(
            Vocabulary(tuple(data["segments"])), Vocabulary(tuple(data["words"])), Vocabulary(tuple(data["kinds"]))
        )

    def encode(
        self, segments: Sequence[str | None], prompts: Sequence[str | None], kinds: Sequence[str | None]
    ) -> tuple[ContextBatch, dict[str, int]]:
        """Index a batch of contexts.

        Returns:
            The :class:`ContextBatch` and the out-of-vocabulary counts {"segment", "word", "kind"}.
        """
        if not len(segments) == len(prompts) == len(kinds):
            raise ValueError(f"got {len(segments)} segments, {len(prompts)} prompts, {len(kinds)} kinds")
        segment_index, segment_oov = self.segments.index(segments)
        kind_index, kind_oov = self.kinds.index(kinds)
        split = [prompt_words(p) for p in prompts]
        width = max((len(w) for w in split), default=0) or 1
        words = torch.full((len(split), width), PAD, dtype=torch.long)
        word_oov = 0
        for row, tokens in enumerate(split):
            if tokens:
                index, oov = self.words.index(tokens)
                words[row, : len(tokens)] = index
                word_oov += oov
        return ContextBatch(segment=segment_index, words=words, kind=kind_index), {
            "segment": segment_oov,
            "word": word_oov,
            "kind": kind_oov,
        }


@dataclasses.dataclass(frozen=True)
class ContextBatch:
    """Indexed contexts of B rows.

    Attributes:
        segment: [B] int64.
        words: [B, L] int64 prompt word indices, 0-padded.
        kind: [B] int64 product kind.
    """

    segment: Tensor
    words: Tensor
    kind: Tensor

    def __len__(self) -> int:
        return int(self.segment.shape[0])

    def take(self, rows: Tensor) -> ContextBatch:
        """The contexts of ``rows`` [N] int64."""
        return ContextBatch(segment=self.segment[rows], words=self.words[rows], kind=self.kind[rows])

    def to(self, device: torch.device) -> ContextBatch:
        return ContextBatch(segment=self.segment.to(device), words=self.words.to(device), kind=self.kind.to(device))

    def with_segment(self, segment: int) -> ContextBatch:
        """The same rows with every segment index set to ``segment``."""
        return ContextBatch(segment=torch.full_like(self.segment, segment), words=self.words, kind=self.kind)
