"""Configuration of the studio world (``backdrop simulate``; default file ``experiments/configs/studio_world.toml``).

One frozen dataclass per section. The defaults are the default world: 600 products x 8 variants at 64 px
(4,800 generated images: enough distinct images for a small CNN to learn gold on held-out products),
20,000 requests x 4 slots (80,000 impressions), 20,000 pairwise judgements; under half a minute on 2 CPU cores.
Scale it with ``--set logging.requests=1000000`` (impressions are generated and written in chunks).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Literal

from offline_data.simulator.engagement import SHOPPER_SEGMENTS
from offline_data.simulator.products import PRODUCT_KINDS


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low:g}, {high:g}], got {value}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class WorldConfig:
    """Catalogue and images: how many products, how they look, how many generated variants each has."""

    image_size: int = 64
    """Side of every image in pixels (products, masks, backgrounds, composites)."""
    products: int = 600
    """Procedurally rendered products (real photos come on top of these)."""
    product_kinds: tuple[str, ...] = PRODUCT_KINDS
    """Kinds to draw from, uniformly (each of bottle, box, can, ball, shoe, jar, mug)."""
    product_height: tuple[float, float] = (0.45, 0.72)
    """(min, max) product extent as a fraction of the image side."""
    real_photos: bool = False
    """Also add matplotlib's sample RGBA product photo (Minduka_Present_Blue_Pack.png) as a product."""
    photo_paths: tuple[str, ...] = ()
    """Further RGBA product photos to add as products (alpha >= 128 is the mask)."""
    variants_per_product: int = 8
    """Generated composites (K) per product; the logging policy picks one of them per slot."""
    prompts_per_product: int = 2
    """Distinct background prompts per product; variants cycle through them (so most pairs share a prompt)."""
    colour_probability: float = 0.6
    """Probability that a sampled prompt names a colour (else the material's own colour)."""

    def __post_init__(self) -> None:
        if self.image_size < 32 or self.image_size > 512:
            raise ValueError(f"image_size must be in [32, 512] pixels, got {self.image_size}")
        if self.products < 0:
            raise ValueError(f"products must be >= 0, got {self.products}")
        gib = self.products * (self.variants_per_product + 1) * self.image_size**2 * 4 / 2**30
        if gib > MAX_WORLD_GIB:
            raise ValueError(
                f"products={self.products:,} x (variants_per_product={self.variants_per_product} + 1) images of "
                f"{self.image_size} px hold {gib:,.1f} GiB in memory (RGB + mask); the world is built in memory, at "
                f"most {MAX_WORLD_GIB} GiB: use fewer products or variants"
            )
        unknown = [k for k in self.product_kinds if k not in PRODUCT_KINDS]
        if unknown or not self.product_kinds:
            raise ValueError(f"product_kinds must be a non-empty subset of {', '.join(PRODUCT_KINDS)}, got {unknown}")
        low, high = self.product_height
        if not 0.1 <= low <= high <= 0.9:
            raise ValueError(f"product_height must satisfy 0.1 <= min <= max <= 0.9, got {self.product_height}")
        if self.variants_per_product < 2:
            raise ValueError(f"variants_per_product must be >= 2 (pairs compare two), got {self.variants_per_product}")
        if not 1 <= self.prompts_per_product <= self.variants_per_product:
            raise ValueError(
                f"prompts_per_product must be in [1, variants_per_product={self.variants_per_product}], "
                f"got {self.prompts_per_product}"
            )
        _check_range("colour_probability", self.colour_probability, 0.0, 1.0)


MAX_WORLD_GIB = 16
"""Largest in-memory world (products x (variants + 1) x image_size^2 x 4 bytes) a config may ask for: a typo such as
``world.products=1e20`` is refused at once instead of running until memory runs out."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class SegmenterConfig:
    """The noisy segmenter that produced the product masks users have (``segmenter.py``)."""

    error_level_min: float = 0.1
    """Lowest per-product error level; each product's level is uniform in [min, max]."""
    error_level_max: float = 0.6
    """Highest per-product error level (1 = a poor segmenter); mean IoU falls as it rises."""

    def __post_init__(self) -> None:
        _check_range("error_level_min", self.error_level_min, 0.0, 1.0)
        _check_range("error_level_max", self.error_level_max, self.error_level_min, 1.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GeneratorConfig:
    """The production inpainting generator that made the logged composites (a simulation of its flaws)."""

    model_version: str = "studio-sim-1"
    """Written to assets.model_version of every generated image."""
    seam_probability: float = 0.35
    """Chance that a composite has a lighting-mismatch band hugging the product (a visible seam)."""
    seam_strength: float = 0.3
    """Largest relative brightness change inside that band (uniform in [0.3, 1] x this, either sign)."""

    def __post_init__(self) -> None:
        if not self.model_version:
            raise ValueError("model_version must be non-empty")
        _check_range("seam_probability", self.seam_probability, 0.0, 1.0)
        _check_range("seam_strength", self.seam_strength, 0.0, 1.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class UsersConfig:
    """Shoppers: segments, examination, clicks (position-based model) and dwell (censored log-normal)."""

    segment_shares: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"warm": 0.4, "cool": 0.35, "minimal": 0.25}
    )
    """Share of requests from each shopper segment (keys from warm, cool, minimal; must sum to 1)."""
    examination: tuple[float, ...] = (1.0, 0.72, 0.52, 0.38)
    """θ_k, P(slot k is examined). θ_1 is fixed to 1: only ratios θ_k / θ_1 are identifiable from clicks, so
    the slot-1 attractiveness absorbs the scale. Length = logging.slots."""
    attractiveness_intercept: float = -0.9
    """α0 in attractiveness = σ(α0 + α1 · gold_segment)."""
    attractiveness_slope: float = 1.0
    """α1 (per unit of gold)."""
    dwell_log_mean: float = 9.6
    """μ0: log dwell in ms at gold 0 (e^9.6 ms ≈ 15 s)."""
    dwell_gold_slope: float = 0.35
    """β: the true dwell-gold slope, d log(dwell_ms) / d gold."""
    dwell_log_sd: float = 0.6
    """σ of log dwell around μ0 + β · gold."""
    target_censoring_rate: float = 0.15
    """Fraction of dwell rows cut short by the session ending; the session-end scale is calibrated to it
    (set 0.6 for heavily censored logs)."""

    def __post_init__(self) -> None:
        unknown = [s for s in self.segment_shares if s not in SHOPPER_SEGMENTS]
        if unknown or not self.segment_shares:
            raise ValueError(f"segment_shares keys must be among {', '.join(SHOPPER_SEGMENTS)}, got {unknown}")
        if any(v <= 0 for v in self.segment_shares.values()) or abs(sum(self.segment_shares.values()) - 1) > 1e-6:
            raise ValueError(f"segment_shares must be positive and sum to 1, got {self.segment_shares}")
        if not self.examination or self.examination[0] != 1.0:
            raise ValueError(
                f"examination[0] (θ_1) must be 1.0 (θ is identified relative to slot 1), got {self.examination}"
            )
        if any(not 0.0 < t <= 1.0 for t in self.examination):
            raise ValueError(f"examination probabilities must be in (0, 1], got {self.examination}")
        if self.attractiveness_slope < 0:
            raise ValueError(f"attractiveness_slope must be >= 0, got {self.attractiveness_slope}")
        if self.dwell_log_sd <= 0:
            raise ValueError(f"dwell_log_sd must be > 0, got {self.dwell_log_sd}")
        _check_range("target_censoring_rate", self.target_censoring_rate, 0.0, 0.95)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoggingConfig:
    """The logging policy: which variant each slot shows, where, and when (``logging_policy.py``)."""

    requests: int = 20_000
    """Page views; each shows ``slots`` distinct products (impressions = requests x slots)."""
    slots: int = 4
    """Slots per request (S)."""
    variant_policy: Literal["uniform", "epsilon_greedy", "softmax"] = "softmax"
    """How a product's variant is chosen from its logging scores."""
    variant_epsilon: float = 0.1
    """epsilon_greedy: probability of a uniform choice instead of the top-scored variant."""
    softmax_temperature: float = 1.0
    """softmax: P(variant) ∝ exp(score / temperature)."""
    placement: Literal["shuffle", "ranked"] = "ranked"
    """shuffle: uniform random slots; ranked: order by logging score with prob 1 - placement_epsilon."""
    placement_epsilon: float = 0.5
    """ranked: probability of a uniform shuffle instead of the score order."""
    score_gold_weight: float = 0.6
    """The production model's logging score = this x panel gold + ..."""
    score_spurious_weight: float = 0.5
    """... + this x standardised background colourfulness (what the old model wrongly loves) + ..."""
    score_noise: float = 0.6
    """... + this x N(0, 1) per image (fixed per image, not per request)."""
    start: str = "2024-03-01T00:00:00+00:00"
    """ISO-8601 time of the first request (UTC when no offset)."""
    period_days: float = 28.0
    """Requests are spread uniformly (stratified) over this many days, in request-id order."""
    chunk_requests: int = 50_000
    """Requests generated and written per chunk (bounds memory; part of the world's determinism)."""

    def __post_init__(self) -> None:
        if self.requests < 1:
            raise ValueError(f"requests must be >= 1, got {self.requests}")
        if self.slots < 1:
            raise ValueError(f"slots must be >= 1, got {self.slots}")
        _check_range("variant_epsilon", self.variant_epsilon, 0.0, 1.0)
        _check_range("placement_epsilon", self.placement_epsilon, 0.0, 1.0)
        if self.softmax_temperature <= 0:
            raise ValueError(f"softmax_temperature must be > 0, got {self.softmax_temperature}")
        if self.score_noise < 0:
            raise ValueError(f"score_noise must be >= 0, got {self.score_noise}")
        if self.period_days <= 0:
            raise ValueError(f"period_days must be > 0, got {self.period_days}")
        if self.chunk_requests < 1:
            raise ValueError(f"chunk_requests must be >= 1, got {self.chunk_requests}")
        self.start_time  # noqa: B018 (validates the timestamp)

    @property
    def start_time(self) -> dt.datetime:
        """``start`` as an aware UTC datetime."""
        try:
            parsed = dt.datetime.fromisoformat(self.start.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"start must be an ISO-8601 timestamp, got {self.start!r}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return parsed.astimezone(dt.UTC)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AnnotatorsConfig:
    """Pairwise judgements: Bradley-Terry on panel gold, annotator noise and bias, Davidson ties."""

    pairs: int = 20_000
    """Judgements to draw (preferences rows)."""
    annotators: int = 24
    """Panel members; each judgement is made by one, uniformly."""
    temperature: float = 0.7
    """Median annotator temperature T_j: P(a ≻ b) uses (gold_a − gold_b) / T_j (lower = more reliable)."""
    temperature_spread: float = 2.0
    """T_j = temperature x spread^u, u uniform in [−1, 1] (1 = all annotators equally reliable)."""
    side_bias_mean: float = 0.1
    """Mean of the per-annotator log-odds bias toward the image shown as 'a'."""
    side_bias_sd: float = 0.1
    """Spread of that bias across annotators."""
    target_tie_rate: float = 0.1
    """Fraction of 'tie' judgements; the Davidson tie parameter ν is calibrated to it."""
    cross_product_fraction: float = 0.15
    """Share of pairs comparing two different products (the rest: two variants of one product)."""

    def __post_init__(self) -> None:
        if self.pairs < 0:
            raise ValueError(f"pairs must be >= 0, got {self.pairs}")
        if self.annotators < 1:
            raise ValueError(f"annotators must be >= 1, got {self.annotators}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.temperature_spread < 1:
            raise ValueError(f"temperature_spread must be >= 1, got {self.temperature_spread}")
        if self.side_bias_sd < 0:
            raise ValueError(f"side_bias_sd must be >= 0, got {self.side_bias_sd}")
        _check_range("target_tie_rate", self.target_tie_rate, 0.0, 0.9)
        _check_range("cross_product_fraction", self.cross_product_fraction, 0.0, 1.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SimulatorConfig:
    """The whole studio world. Deterministic: the same config (seed included) gives byte-identical output."""

    seed: int = 0
    """Root seed; every random stream (products, segmenter, prompts, variants, traffic, panel) derives from it."""
    world: WorldConfig = WorldConfig()
    segmenter: SegmenterConfig = SegmenterConfig()
    generator: GeneratorConfig = GeneratorConfig()
    users: UsersConfig = UsersConfig()
    logging: LoggingConfig = LoggingConfig()
    annotators: AnnotatorsConfig = AnnotatorsConfig()

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if len(self.users.examination) != self.logging.slots:
            raise ValueError(
                f"users.examination has {len(self.users.examination)} values but logging.slots = "
                f"{self.logging.slots}; give one examination probability per slot"
            )
        catalogue = self.world.products + len(self.world.photo_paths) + int(self.world.real_photos)
        if catalogue < self.logging.slots:
            raise ValueError(
                f"the catalogue has {catalogue} products but each request shows {self.logging.slots} distinct "
                "ones; add products or reduce logging.slots"
            )
        if self.annotators.pairs and self.annotators.cross_product_fraction > 0 and catalogue < 2:
            raise ValueError("cross-product pairs need at least 2 products")
