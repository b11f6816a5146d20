"""Prompts: canonical round trip, order-free parsing, modest vocabulary, families, and named errors."""

from __future__ import annotations

import numpy as np
import pytest

from offline_data.simulator import (
    PROMPT_FAMILIES,
    PROMPT_VOCABULARY,
    PromptError,
    PromptSpec,
    parse_prompt,
    prompt_family,
    sample_prompt,
)


def test_sampled_prompts_round_trip_and_cover_every_family() -> None:
    rng = np.random.default_rng(0)
    prompts = [sample_prompt(rng) for _ in range(400)]
    for prompt in prompts:
        assert parse_prompt(prompt).text == prompt
        assert set(prompt.replace(",", " ").split()) <= set(PROMPT_VOCABULARY)
    assert {prompt_family(p) for p in prompts} == set(PROMPT_FAMILIES)


def test_vocabulary_is_modest_sorted_and_families_number_about_six() -> None:
    assert list(PROMPT_VOCABULARY) == sorted(set(PROMPT_VOCABULARY))
    assert 20 <= len(PROMPT_VOCABULARY) <= 40
    assert len(PROMPT_FAMILIES) == 6


def test_parse_is_order_free_with_defaults() -> None:
    spec = parse_prompt("Golden Hour Light,  with plants navy MARBLE floor")
    assert spec == PromptSpec(material="marble", surface="floor", lighting="golden", scene="plants", colour="navy")
    assert parse_prompt("oak wood") == PromptSpec(material="wood")
    assert parse_prompt("oak wood").text == "oak wood tabletop, bright studio light, minimal"


def test_sample_prompt_is_deterministic() -> None:
    assert sample_prompt(np.random.default_rng(5)) == sample_prompt(np.random.default_rng(5))


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("oak wood tabletop, neon light", "word 4 'neon' is not in the vocabulary"),
        ("marbel tabletop", "word 1 'marbel' is not in the vocabulary (did you mean 'marble'?)"),
        ("marble tabletop, golden light", "word 3 'golden' only occurs in the phrase(s) golden hour light"),
        ("marble concrete", "material given twice ('marble' and 'concrete')"),
        ("navy tabletop, moody low light", "names no material"),
        ("", "names no material"),
    ],
)
def test_bad_prompts_name_the_problem(prompt: str, message: str) -> None:
    with pytest.raises(PromptError) as info:
        parse_prompt(prompt)
    assert message in str(info.value)


def test_prompt_error_is_also_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_prompt("pizza")


def test_spec_validates_keys() -> None:
    with pytest.raises(PromptError, match="lighting 'disco'"):
        PromptSpec(material="wood", lighting="disco")
