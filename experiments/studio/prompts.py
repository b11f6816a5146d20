"""The studio world's prompts as the policy half needs them: the tiny base's vocabulary and training prompts.

``policy`` and ``rollout`` never read the simulator's prompt grammar: a model built from a config takes its
tokenizer's vocabulary as an argument (:func:`studio_vocabulary` for the studio world's tiny base), and the
prompt guard compares prompts with the training prompts recorded beside a base model
(``rollout.guards.TRAINING_PROMPTS_FILE``; :func:`studio_training_prompts` for the shipped ``studio_tiny``).
"""

from __future__ import annotations

import itertools

from offline_data.simulator.prompts import (
    COLOURS,
    LIGHTINGS,
    MATERIALS,
    PROMPT_VOCABULARY,
    SCENES,
    SURFACES,
    PromptSpec,
)


def studio_vocabulary() -> tuple[str, ...]:
    """Every word a studio prompt may contain (32, sorted): single tokens of the tiny base's tokenizer."""
    return PROMPT_VOCABULARY


def studio_training_prompts() -> tuple[str, ...]:
    """Every canonical prompt of the studio world (each attribute combination, with and without a colour)."""
    combos = itertools.product([None, *COLOURS], MATERIALS, SURFACES, LIGHTINGS, SCENES)
    return tuple(
        PromptSpec(material=m, surface=s, lighting=lit, scene=sc, colour=c).text for c, m, s, lit, sc in combos
    )
