"""Background prompts of the studio world: a small templated vocabulary, a sampler and a strict parser.

A prompt names five attributes, each from a closed list of words or phrases:

    [colour] material surface, lighting, scene        e.g. "navy marble tabletop, golden hour light, with plants"

- colour (optional): white, cream, charcoal, terracotta, mustard, sage, navy, blush. Sets the palette's
  hue, saturation and value; without one the material's own colour is used.
- material (required; it is the prompt's *family*): oak wood, marble, concrete, linen, foliage, seamless
  paper. Sets the texture: grain, veins, speckle, weave, leaves, a smooth sweep.
- surface: tabletop, backdrop, floor. Sets the layout: a horizon at ~52 %, none, or at ~30 % of the height.
- lighting: soft window light, bright studio light, golden hour light, moody low light. Sets a gain field
  (side light, vignette, spot) and a colour tint.
- scene: minimal, with plants, with props. Props placed around the frame.

The vocabulary is deliberately modest (:data:`PROMPT_VOCABULARY`, 32 words) so a tiny diffusion model can learn
every word at 64 px. Parsing is order-free and comma/space tolerant; surface, lighting and scene default to
tabletop, bright studio light and minimal when absent; any other word is an error that names it.
"""

from __future__ import annotations

import dataclasses
import difflib

import numpy as np

from offline_data.errors import BackdropError

COLOURS: dict[str, tuple[float, float, float]] = {
    "white": (0.10, 0.04, 0.93),
    "cream": (0.11, 0.22, 0.90),
    "charcoal": (0.60, 0.08, 0.26),
    "terracotta": (0.04, 0.62, 0.74),
    "mustard": (0.13, 0.72, 0.80),
    "sage": (0.27, 0.28, 0.64),
    "navy": (0.62, 0.62, 0.40),
    "blush": (0.97, 0.28, 0.90),
}
"""Colour word -> HSV palette (hue in [0, 1), saturation, value)."""

MATERIALS: dict[str, str] = {
    "wood": "oak wood",
    "marble": "marble",
    "concrete": "concrete",
    "linen": "linen",
    "foliage": "foliage",
    "paper": "seamless paper",
}
"""Material key (the prompt family) -> its phrase in prompts."""

MATERIAL_COLOURS: dict[str, tuple[float, float, float]] = {
    "wood": (0.08, 0.50, 0.62),
    "marble": (0.10, 0.03, 0.90),
    "concrete": (0.10, 0.05, 0.60),
    "linen": (0.10, 0.16, 0.82),
    "foliage": (0.30, 0.55, 0.45),
    "paper": (0.00, 0.00, 0.90),
}
"""HSV palette of a material when the prompt has no colour word."""

SURFACES: dict[str, str] = {"tabletop": "tabletop", "backdrop": "backdrop", "floor": "floor"}
"""Surface key -> phrase."""

LIGHTINGS: dict[str, str] = {
    "window": "soft window light",
    "studio": "bright studio light",
    "golden": "golden hour light",
    "moody": "moody low light",
}
"""Lighting key -> phrase."""

SCENES: dict[str, str] = {"minimal": "minimal", "plants": "with plants", "props": "with props"}
"""Scene key -> phrase."""

PROMPT_FAMILIES: tuple[str, ...] = tuple(MATERIALS)
"""Coarse prompt families for audit slices: one per material."""

DEFAULT_SURFACE, DEFAULT_LIGHTING, DEFAULT_SCENE = "tabletop", "studio", "minimal"


class PromptError(BackdropError, ValueError):
    """A prompt uses a word outside the vocabulary, repeats an attribute or names no material."""

    exit_code = 2


@dataclasses.dataclass(frozen=True)
class PromptSpec:
    """A parsed prompt: one key per attribute (keys of the tables above; colour may be None)."""

    material: str
    surface: str = DEFAULT_SURFACE
    lighting: str = DEFAULT_LIGHTING
    scene: str = DEFAULT_SCENE
    colour: str | None = None

    def __post_init__(self) -> None:
        for name, table in (
            ("material", MATERIALS), ("surface", SURFACES), ("lighting", LIGHTINGS), ("scene", SCENES)
        ):  # fmt: skip
            if getattr(self, name) not in table:
                raise PromptError(f"{name} {getattr(self, name)!r} is not one of {', '.join(table)}")
        if self.colour is not None and self.colour not in COLOURS:
            raise PromptError(f"colour {self.colour!r} is not one of {', '.join(COLOURS)}")

    @property
    def family(self) -> str:
        """The coarse family (the material key)."""
        return self.material

    @property
    def palette_hsv(self) -> tuple[float, float, float]:
        """HSV of the named colour, or of the material when no colour is named."""
        return COLOURS[self.colour] if self.colour is not None else MATERIAL_COLOURS[self.material]

    @property
    def text(self) -> str:
        """The canonical prompt string (``parse_prompt(spec.text) == spec``)."""
        head = f"{self.colour} " if self.colour is not None else ""
        return (
            f"{head}{MATERIALS[self.material]} {SURFACES[self.surface]}, "
            f"{LIGHTINGS[self.lighting]}, {SCENES[self.scene]}"
        )


# Phrase (tuple of words) -> (attribute, key); matched longest first.
_PHRASES: dict[tuple[str, ...], tuple[str, str]] = {}
for _attribute, _table in (
    ("material", MATERIALS), ("surface", SURFACES), ("lighting", LIGHTINGS), ("scene", SCENES)
):  # fmt: skip
    for _key, _phrase in _table.items():
        _PHRASES[tuple(_phrase.split())] = (_attribute, _key)
for _key in COLOURS:
    _PHRASES[(_key,)] = ("colour", _key)
_LONGEST = max(len(p) for p in _PHRASES)

PROMPT_VOCABULARY: tuple[str, ...] = tuple(sorted({word for phrase in _PHRASES for word in phrase}))
"""Every word a prompt may contain, sorted (for the policy's tokenizer)."""


def parse_prompt(prompt: str) -> PromptSpec:
    """Parse a prompt into its attributes.

    Words are matched against the vocabulary's phrases (longest first) in any order; commas are separators.

    Raises:
        PromptError: a word outside :data:`PROMPT_VOCABULARY` (named, with its 1-based position and a
            suggestion), a phrase that is cut short, an attribute given twice, or no material.
    """
    if not isinstance(prompt, str):
        raise PromptError(f"prompt must be a string, got {type(prompt).__name__}")
    words = prompt.lower().replace(",", " ").split()
    found: dict[str, str] = {}
    i = 0
    while i < len(words):
        for length in range(min(_LONGEST, len(words) - i), 0, -1):
            match = _PHRASES.get(tuple(words[i : i + length]))
            if match is not None:
                break
        else:
            word = words[i]
            if word in PROMPT_VOCABULARY:
                wanted = [" ".join(p) for p in _PHRASES if word in p]
                raise PromptError(
                    f"prompt {prompt!r}: word {i + 1} {word!r} only occurs in the phrase(s) {', '.join(wanted)}"
                )
            close = difflib.get_close_matches(word, PROMPT_VOCABULARY, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise PromptError(
                f"prompt {prompt!r}: word {i + 1} {word!r} is not in the vocabulary{hint}; "
                f"known words: {' '.join(PROMPT_VOCABULARY)}"
            )
        attribute, key = match
        if attribute in found:
            raise PromptError(
                f"prompt {prompt!r}: {attribute} given twice ({found[attribute]!r} and {key!r}); name it once"
            )
        found[attribute] = key
        i += length
    if "material" not in found:
        raise PromptError(f"prompt {prompt!r}: names no material; expected one of {', '.join(MATERIALS.values())}")
    return PromptSpec(**found)


def prompt_family(prompt: str) -> str:
    """The coarse family of a prompt (its material key, one of :data:`PROMPT_FAMILIES`)."""
    return parse_prompt(prompt).material


def sample_prompt(rng: np.random.Generator, *, colour_probability: float = 0.6) -> str:
    """Draw a canonical prompt: every attribute uniform, a colour word with ``colour_probability``."""
    if not 0.0 <= colour_probability <= 1.0:
        raise ValueError(f"colour_probability must be in [0, 1], got {colour_probability}")
    material = str(rng.choice(list(MATERIALS)))
    surface = str(rng.choice(list(SURFACES)))
    lighting = str(rng.choice(list(LIGHTINGS)))
    scene = str(rng.choice(list(SCENES)))
    colour = str(rng.choice(list(COLOURS))) if rng.uniform() < colour_probability else None
    return PromptSpec(material=material, surface=surface, lighting=lighting, scene=scene, colour=colour).text
