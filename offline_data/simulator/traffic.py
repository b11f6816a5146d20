"""Requests, impressions, clicks and dwell, generated in chunks so millions of impressions fit in memory.

One chunk of requests goes through the whole chain of the module docstrings it cites:
segment ~ shares; S distinct products; variant and slot from the logging policy (``logging_policy.py``,
exact propensities); click ~ Bernoulli(θ_slot · attractiveness) and censored dwell (``users.py``).
Request r of R is served at ``start + (r + U) / R · period`` (stratified uniform), so shown_at increases
with request id and time-based splits are meaningful.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np

from offline_data.simulator.logging_policy import Placement, place, sample_products, sample_variants
from offline_data.simulator.users import attractiveness, censoring_probability, sample_dwell


@dataclasses.dataclass(frozen=True, eq=False)
class TrafficModel:
    """Everything a chunk of traffic depends on (fixed for a simulation).

    Attributes:
        image_ids: [N] object array of variant image ids (index = product * K + variant).
        product_ids: [P] object array of product ids.
        variants_per_product: K.
        variant_probabilities: [P, K] P(variant | product) of the logging policy.
        logging_scores: [N] float64 production-model score of each image.
        segment_gold: [N, G] float64 gold of each image for each shopper segment.
        segments: G segment names (columns of ``segment_gold``).
        segment_shares: [G] float64 traffic share of each segment.
        examination: [S] θ per slot (θ_1 = 1).
        attractiveness_intercept, attractiveness_slope: α0, α1.
        placement, placement_epsilon: the slot rule.
        dwell_log_mean, dwell_gold_slope, dwell_log_sd: μ0, β, σ.
        session_scale_ms: λ, or None for no censoring.
        start: first request time (aware UTC).
        period_seconds: span of all requests.
        total_requests: R (for timestamps).
    """

    image_ids: np.ndarray
    product_ids: np.ndarray
    variants_per_product: int
    variant_probabilities: np.ndarray
    logging_scores: np.ndarray
    segment_gold: np.ndarray
    segments: tuple[str, ...]
    segment_shares: np.ndarray
    examination: np.ndarray
    attractiveness_intercept: float
    attractiveness_slope: float
    placement: Placement
    placement_epsilon: float
    dwell_log_mean: float
    dwell_gold_slope: float
    dwell_log_sd: float
    session_scale_ms: float | None
    start: dt.datetime
    period_seconds: float
    total_requests: int

    @property
    def slots(self) -> int:
        return int(self.examination.size)


@dataclasses.dataclass(frozen=True, eq=False)
class TrafficChunk:
    """One chunk's rows, ordered by request then slot. Arrays are [n] for impressions, [c] for clicks."""

    impressions: dict[str, np.ndarray]
    """Log columns: event_id, request_id, image_id, product_id, position, clicked, propensity, shown_at (µs
    since the epoch, int64), segment."""
    impressions_truth: dict[str, np.ndarray]
    """Truth columns: event_id, segment, position, clicked, examination, attractiveness, gold,
    click_probability, p_variant, p_slot."""
    dwell: dict[str, np.ndarray]
    """Log columns: event_id, dwell_ms, censored."""
    dwell_truth: dict[str, np.ndarray]
    """Truth columns: event_id, gold, true_dwell_ms, session_left_ms, censored, p_censored."""


def draw_impressions(
    model: TrafficModel, first_request: int, count: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Requests ``first_request .. first_request + count - 1`` without dwell, as [count, S] arrays."""
    slots = model.slots
    segment = rng.choice(len(model.segments), size=count, p=model.segment_shares)
    products = sample_products(count, len(model.product_ids), slots, rng)
    variants, p_variant = sample_variants(model.variant_probabilities, products, rng)
    images = products * model.variants_per_product + variants
    slot, p_slot = place(model.logging_scores[images], model.placement, rng, epsilon=model.placement_epsilon)
    gold = model.segment_gold[images, segment[:, None]]
    attract = attractiveness(gold, model.attractiveness_intercept, model.attractiveness_slope)
    click_probability = model.examination[slot] * attract
    clicked = rng.uniform(size=click_probability.shape) < click_probability
    stamp = rng.uniform(size=count)
    # Present each request's images in slot order.
    order = np.argsort(slot, axis=1)

    def by_slot(values: np.ndarray) -> np.ndarray:
        return np.take_along_axis(values, order, axis=1)

    return {
        "request": np.repeat(np.arange(first_request, first_request + count)[:, None], slots, axis=1),
        "segment": np.repeat(segment[:, None], slots, axis=1),
        "stamp": np.repeat(stamp[:, None], slots, axis=1),
        "image": by_slot(images),
        "product": by_slot(products),
        "slot": by_slot(slot),
        "p_variant": by_slot(p_variant),
        "p_slot": by_slot(p_slot),
        "gold": by_slot(gold),
        "attractiveness": by_slot(attract),
        "click_probability": by_slot(click_probability),
        "clicked": by_slot(clicked),
    }


def simulate_chunk(model: TrafficModel, first_request: int, count: int, rng: np.random.Generator) -> TrafficChunk:
    """Generate one chunk of requests with their impressions, clicks and dwell."""
    drawn = {name: values.reshape(-1) for name, values in draw_impressions(model, first_request, count, rng).items()}
    n = drawn["image"].size
    first_row = first_request * model.slots
    event_ids = np.array([f"e{first_row + i:09d}" for i in range(n)], dtype=object)
    request_ids = np.array([f"r{r:08d}" for r in drawn["request"]], dtype=object)
    segments = np.asarray(model.segments, dtype=object)[drawn["segment"]]
    start_us = int(model.start.timestamp() * 1_000_000)
    offset = (drawn["request"] + drawn["stamp"]) / model.total_requests * model.period_seconds
    shown_at = start_us + np.floor(offset * 1_000_000).astype(np.int64)
    propensity = drawn["p_variant"] * drawn["p_slot"]
    position = drawn["slot"] + 1
    clicked = drawn["clicked"]

    dwell_ms, censored, true_dwell, session_left = sample_dwell(
        drawn["gold"][clicked],
        rng,
        log_mean=model.dwell_log_mean,
        gold_slope=model.dwell_gold_slope,
        log_sd=model.dwell_log_sd,
        session_scale_ms=model.session_scale_ms,
    )
    clicked_ids = event_ids[clicked]
    p_censored = censoring_probability(
        drawn["gold"][clicked],
        log_mean=model.dwell_log_mean,
        gold_slope=model.dwell_gold_slope,
        log_sd=model.dwell_log_sd,
        session_scale_ms=model.session_scale_ms,
    )
    return TrafficChunk(
        impressions={
            "event_id": event_ids,
            "request_id": request_ids,
            "image_id": model.image_ids[drawn["image"]],
            "product_id": model.product_ids[drawn["product"]],
            "position": position,
            "clicked": clicked,
            "propensity": propensity,
            "shown_at": shown_at,
            "segment": segments,
        },
        impressions_truth={
            "event_id": event_ids,
            "segment": segments,
            "position": position,
            "clicked": clicked,
            "examination": model.examination[drawn["slot"]],
            "attractiveness": drawn["attractiveness"],
            "gold": drawn["gold"],
            "click_probability": drawn["click_probability"],
            "p_variant": drawn["p_variant"],
            "p_slot": drawn["p_slot"],
        },
        dwell={"event_id": clicked_ids, "dwell_ms": dwell_ms, "censored": censored},
        dwell_truth={
            "event_id": clicked_ids,
            "gold": drawn["gold"][clicked],
            "true_dwell_ms": true_dwell,
            "session_left_ms": session_left,
            "censored": censored,
            "p_censored": p_censored,
        },
    )
