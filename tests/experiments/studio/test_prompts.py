"""The studio world's prompts for the policy half: the tiny base's vocabulary and recorded training prompts."""

from __future__ import annotations

from experiments.studio.prompts import studio_training_prompts, studio_vocabulary
from offline_data.simulator import parse_prompt
from policy.model import STUDIO_TINY, InpaintPolicy
from rollout.guards import read_training_prompts


def test_studio_training_prompts_are_every_canonical_prompt() -> None:
    prompts = studio_training_prompts()
    assert len(prompts) == 9 * 6 * 3 * 4 * 3 == len(set(prompts))
    assert all(parse_prompt(p).text == p for p in prompts[::97])


def test_the_shipped_base_records_its_training_prompts_and_vocabulary() -> None:
    assert read_training_prompts(STUDIO_TINY) == studio_training_prompts()
    tokenizer = InpaintPolicy.studio_base().tokenizer
    for word in studio_vocabulary():
        assert len(tokenizer.tokenize(word)) == 1, word
