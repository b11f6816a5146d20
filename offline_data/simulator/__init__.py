"""The studio world: a simulator with hidden gold engagement, the embedded default for every command.

See docs/architecture.md, "The studio world's seam". Products (``products``), a noisy segmenter (``segmenter``),
background prompts and their renderer (``prompts``, ``backgrounds``), the simulated production generator
(``generator``), the hidden gold engagement model (``engagement``), the deterministic in-memory world (``world``),
users, logging policy and panel (``users``, ``logging_policy``, ``annotators``, ``traffic``), and ``simulate``
which writes it all to disk with an evaluation-only truth sidecar (``truth``) and Bayes ceilings (``ceilings``).
"""

from offline_data.simulator.annotators import davidson_probabilities
from offline_data.simulator.backgrounds import composite, reference_background, render_background
from offline_data.simulator.ceilings import Ceilings, bayes_ceilings, click_auc, pairwise_bayes_accuracy
from offline_data.simulator.config import (
    AnnotatorsConfig,
    GeneratorConfig,
    LoggingConfig,
    SegmenterConfig,
    SimulatorConfig,
    UsersConfig,
    WorldConfig,
)
from offline_data.simulator.engagement import (
    FEATURES,
    PANEL_SEGMENT,
    SEGMENTS,
    SHOPPER_SEGMENTS,
    gold_components,
    gold_engagement,
    measure_features,
)
from offline_data.simulator.generator import generate_composite
from offline_data.simulator.logging_policy import variant_probabilities
from offline_data.simulator.products import PRODUCT_KINDS, Product, load_product_photo, render_product
from offline_data.simulator.prompts import (
    PROMPT_FAMILIES,
    PROMPT_VOCABULARY,
    PromptError,
    PromptSpec,
    parse_prompt,
    prompt_family,
    sample_prompt,
)
from offline_data.simulator.segmenter import mask_iou, segment_mask
from offline_data.simulator.simulation import SimulationError, simulate
from offline_data.simulator.summary import SimulationSummary
from offline_data.simulator.truth import read_truth_table
from offline_data.simulator.users import attractiveness
from offline_data.simulator.world import StudioWorld, VariantSet

__all__ = [
    "FEATURES",
    "PANEL_SEGMENT",
    "PRODUCT_KINDS",
    "PROMPT_FAMILIES",
    "PROMPT_VOCABULARY",
    "SEGMENTS",
    "SHOPPER_SEGMENTS",
    "AnnotatorsConfig",
    "Ceilings",
    "GeneratorConfig",
    "LoggingConfig",
    "Product",
    "PromptError",
    "PromptSpec",
    "SegmenterConfig",
    "SimulationError",
    "SimulationSummary",
    "SimulatorConfig",
    "StudioWorld",
    "UsersConfig",
    "VariantSet",
    "WorldConfig",
    "attractiveness",
    "bayes_ceilings",
    "click_auc",
    "composite",
    "davidson_probabilities",
    "generate_composite",
    "gold_components",
    "gold_engagement",
    "load_product_photo",
    "mask_iou",
    "measure_features",
    "pairwise_bayes_accuracy",
    "parse_prompt",
    "prompt_family",
    "read_truth_table",
    "reference_background",
    "render_background",
    "render_product",
    "sample_prompt",
    "segment_mask",
    "simulate",
    "variant_probabilities",
]
