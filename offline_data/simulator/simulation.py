"""``simulate()``: build the studio world and write its logs, assets, truth sidecar, summary and contact sheet.

Output folder:

    assets.parquet  impressions.parquet  dwell.parquet  preferences.parquet   (offline_data.schemas types)
    images/            PNG files the assets table points to (``asset_files.py``)
    truth/             evaluation-only sidecar (``truth.py``)
    summary.json       ``SimulationSummary``
    contact_sheet.png  products, noisy masks, backgrounds per family, composites with their gold

Impressions and dwell are generated and written chunk by chunk (``logging.chunk_requests``) with Parquet
writers, so a world with millions of impressions never holds them all in memory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from offline_data.errors import BackdropError
from offline_data.schemas import SCHEMAS
from offline_data.simulator.annotators import (
    calibrate_tie_strength,
    davidson_probabilities,
    sample_choices,
    sample_pairs,
    sample_panel,
)
from offline_data.simulator.asset_files import write_png, write_world_assets
from offline_data.simulator.ceilings import bayes_ceilings
from offline_data.simulator.config import SimulatorConfig
from offline_data.simulator.contact_sheet import draw_contact_sheet
from offline_data.simulator.engagement import (
    ADHERENCE_SCALES,
    FEATURES,
    GOLD_NORMALISATION,
    PANEL_SEGMENT,
    SEGMENT_WEIGHTS,
    SEGMENTS,
    SHOPPER_SEGMENTS,
)
from offline_data.simulator.logging_policy import logging_scores, variant_probabilities
from offline_data.simulator.prompts import prompt_family
from offline_data.simulator.summary import SimulationSummary
from offline_data.simulator.traffic import TrafficModel, draw_impressions, simulate_chunk
from offline_data.simulator.truth import MASKS_DIR, README, TRUTH_DIR, WORLD_FILE, truth_path
from offline_data.simulator.users import attractiveness, calibrate_session_scale
from offline_data.simulator.world import StudioWorld, stream

logger = logging.getLogger(__name__)

OUTPUTS = (
    "images", TRUTH_DIR, "assets.parquet", "impressions.parquet", "dwell.parquet", "preferences.parquet",
    "summary.json", "contact_sheet.png", "config.toml",
)  # fmt: skip
"""Everything a simulation writes at the top of its output folder (removed first when overwriting);
config.toml is written by ``backdrop simulate``."""

PILOT_REQUESTS = 20_000
"""Requests in the pilot sample used to calibrate the session-end scale (its own random stream)."""


class SimulationError(BackdropError):
    """The output folder cannot be used (already holds a simulation, or is a file)."""

    exit_code = 2


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise SimulationError(f"{out_dir}: exists and is not a folder")
    present = [name for name in OUTPUTS if (out_dir / name).exists()]
    if present and not overwrite:
        raise SimulationError(
            f"{out_dir}: already holds simulation output ({', '.join(present)}); choose another folder or "
            "overwrite it (backdrop simulate --overwrite)"
        )
    for name in present:
        path = out_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def _log_table(name: str, columns: dict[str, np.ndarray | list]):
    """A pyarrow table of a log table with exactly the Arrow types of ``offline_data.schemas``."""
    schema = SCHEMAS[name].arrow_schema(present=tuple(columns))
    arrays = [pa.array(columns[field.name], type=field.type) for field in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def _truth_table(columns: dict[str, np.ndarray | list]):
    return pa.table({name: pa.array(values) for name, values in columns.items()})


def _write_parquet(table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


class _ChunkedWriter:
    """Parquet writers opened on the first chunk; tracks row counts."""

    def __init__(self) -> None:
        self.writers: dict[Path, object] = {}
        self.rows: dict[Path, int] = {}

    def write(self, table, path: Path) -> None:
        if path not in self.writers:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.writers[path] = pq.ParquetWriter(path, table.schema)
            self.rows[path] = 0
        self.writers[path].write_table(table)
        self.rows[path] += table.num_rows

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


def build_traffic_model(world: StudioWorld) -> tuple[TrafficModel, np.ndarray, np.ndarray]:
    """The logging policy and user model of ``world`` (session scale calibrated on a pilot).

    Returns:
        ``(model, logging_scores [N], p_variant [P, K])``.
    """
    config = world.config
    log_cfg, users = config.logging, config.users
    variants = world.variants
    k_count = config.world.variants_per_product
    panel = world.variant_gold[:, world.segment_column(PANEL_SEGMENT)]
    scores = logging_scores(
        panel,
        world.variant_features["colour"],
        stream(config.seed, "logging_scores"),
        gold_weight=log_cfg.score_gold_weight,
        spurious_weight=log_cfg.score_spurious_weight,
        noise=log_cfg.score_noise,
    )
    probabilities = variant_probabilities(
        scores.reshape(-1, k_count),
        log_cfg.variant_policy,
        epsilon=log_cfg.variant_epsilon,
        temperature=log_cfg.softmax_temperature,
    )
    segments = tuple(s for s in SHOPPER_SEGMENTS if s in users.segment_shares)
    model = TrafficModel(
        image_ids=np.asarray(variants.image_ids, dtype=object),
        product_ids=np.asarray(world.product_ids, dtype=object),
        variants_per_product=k_count,
        variant_probabilities=probabilities,
        logging_scores=scores,
        segment_gold=np.stack([world.variant_gold[:, world.segment_column(s)] for s in segments], axis=1),
        segments=segments,
        segment_shares=np.array([users.segment_shares[s] for s in segments]),
        examination=np.asarray(users.examination, dtype=np.float64),
        attractiveness_intercept=users.attractiveness_intercept,
        attractiveness_slope=users.attractiveness_slope,
        placement=log_cfg.placement,
        placement_epsilon=log_cfg.placement_epsilon,
        dwell_log_mean=users.dwell_log_mean,
        dwell_gold_slope=users.dwell_gold_slope,
        dwell_log_sd=users.dwell_log_sd,
        session_scale_ms=None,
        start=log_cfg.start_time,
        period_seconds=log_cfg.period_days * 86_400.0,
        total_requests=log_cfg.requests,
    )
    pilot = draw_impressions(model, 0, PILOT_REQUESTS, stream(config.seed, "dwell_pilot"))
    scale = calibrate_session_scale(
        pilot["gold"][pilot["clicked"]],
        users.target_censoring_rate,
        log_mean=users.dwell_log_mean,
        gold_slope=users.dwell_gold_slope,
        log_sd=users.dwell_log_sd,
    )
    model = dataclasses.replace(model, session_scale_ms=scale)
    return model, scores, probabilities


def _write_traffic(model: TrafficModel, config: SimulatorConfig, out_dir: Path, progress: bool) -> dict:
    """Generate and write impressions + dwell in chunks; return the counters the summary needs."""
    requests, chunk_size = config.logging.requests, config.logging.chunk_requests
    slots = model.slots
    shown = np.zeros(slots, dtype=np.int64)
    clicks = np.zeros(slots, dtype=np.int64)
    censored = 0
    writer = _ChunkedWriter()
    bar = tqdm(total=requests, desc="simulating traffic", unit="req", disable=not progress)
    try:
        for chunk_index, first in enumerate(range(0, requests, chunk_size)):
            count = min(chunk_size, requests - first)
            chunk = simulate_chunk(model, first, count, stream(config.seed, "traffic", chunk_index))
            writer.write(_log_table("impressions", chunk.impressions), out_dir / "impressions.parquet")
            writer.write(_log_table("dwell", chunk.dwell), out_dir / "dwell.parquet")
            writer.write(_truth_table(chunk.impressions_truth), truth_path(out_dir, "impressions"))
            writer.write(_truth_table(chunk.dwell_truth), truth_path(out_dir, "dwell"))
            position = chunk.impressions["position"] - 1
            shown += np.bincount(position, minlength=slots)
            clicks += np.bincount(position, weights=chunk.impressions["clicked"], minlength=slots).astype(np.int64)
            censored += int(chunk.dwell["censored"].sum())
            bar.update(count)
    finally:
        writer.close()
        bar.close()
    return {
        "impressions": int(shown.sum()),
        "dwell": int(clicks.sum()),
        "ctr_per_slot": tuple(float(c / s) if s else 0.0 for c, s in zip(clicks, shown)),
        "censoring_rate": censored / max(int(clicks.sum()), 1),
    }


def _write_preferences(world: StudioWorld, out_dir: Path) -> dict:
    """Draw the panel and its judgements; write the log table and its truth. Returns panel parameters."""
    config = world.config
    ann = config.annotators
    panel = sample_panel(
        ann.annotators,
        stream(config.seed, "annotators"),
        temperature=ann.temperature,
        temperature_spread=ann.temperature_spread,
        side_bias_mean=ann.side_bias_mean,
        side_bias_sd=ann.side_bias_sd,
    )
    rng = stream(config.seed, "pairs")
    design = sample_pairs(
        ann.pairs,
        len(world.products),
        config.world.variants_per_product,
        ann.annotators,
        rng,
        cross_product_fraction=ann.cross_product_fraction,
    )
    gold = world.variant_gold[:, world.segment_column(PANEL_SEGMENT)]
    gold_a, gold_b = gold[design.image_a], gold[design.image_b]
    temperature = panel.temperatures[design.annotator]
    bias = panel.side_biases[design.annotator]
    nu = calibrate_tie_strength((gold_a - gold_b) / temperature + bias, ann.target_tie_rate) if ann.pairs else 0.0
    p_a, p_b, p_tie = davidson_probabilities(gold_a, gold_b, temperature, bias, nu)
    choice = sample_choices(p_a, p_b, rng)
    image_ids = np.asarray(world.variants.image_ids, dtype=object)
    pair_ids = np.array([f"q{i:08d}" for i in range(ann.pairs)], dtype=object)
    annotator_ids = np.asarray(panel.annotator_ids, dtype=object)[design.annotator]
    log = {
        "pair_id": pair_ids,
        "image_a": image_ids[design.image_a],
        "image_b": image_ids[design.image_b],
        "choice": choice,
        "annotator_id": annotator_ids,
        "source": np.full(ann.pairs, "panel", dtype=object),
    }
    _write_parquet(_log_table("preferences", log), out_dir / "preferences.parquet")
    truth = {
        "pair_id": pair_ids,
        "image_a": log["image_a"],
        "image_b": log["image_b"],
        "annotator_id": annotator_ids,
        "cross_product": design.cross_product,
        "gold_a": gold_a,
        "gold_b": gold_b,
        "p_a": p_a,
        "p_b": p_b,
        "p_tie": p_tie,
        "choice": choice,
    }
    _write_parquet(_truth_table(truth), truth_path(out_dir, "preferences"))
    return {
        "annotators": {
            "annotator_id": list(panel.annotator_ids),
            "temperature": panel.temperatures.tolist(),
            "side_bias": panel.side_biases.tolist(),
        },
        "tie_strength": nu,
        "tie_rate": float(np.mean(choice == "tie")) if ann.pairs else 0.0,
    }


def _write_world_truth(world: StudioWorld, out_dir: Path, scores: np.ndarray, p_variant: np.ndarray) -> None:
    config = world.config
    variants = world.variants
    images = {
        "image_id": list(variants.image_ids),
        "product_id": [world.products[i].product_id for i in variants.product_index],
        "variant": variants.variant_index,
        "prompt": list(variants.prompts),
        "family": [prompt_family(p) for p in variants.prompts],
    }
    for segment in SEGMENTS:
        images[f"gold_{segment}"] = world.variant_gold[:, world.segment_column(segment)]
    for segment in SHOPPER_SEGMENTS:
        images[f"attractiveness_{segment}"] = attractiveness(
            images[f"gold_{segment}"], config.users.attractiveness_intercept, config.users.attractiveness_slope
        )
    for name in FEATURES:
        images[name] = world.variant_features[name]
    images["logging_score"] = scores
    images["p_variant"] = p_variant.reshape(-1)
    _write_parquet(_truth_table(images), truth_path(out_dir, "images"))

    products = {
        "product_id": list(world.product_ids),
        "kind": [p.kind for p in world.products],
        "source": [p.source for p in world.products],
        "hue": [p.hue for p in world.products],
        "saturation": [p.saturation for p in world.products],
        "value": [p.value for p in world.products],
        "segmenter_error_level": world.segmenter_error_levels,
        "segmenter_iou": world.segmenter_iou,
        "mask_path": [f"{MASKS_DIR}/{p.product_id}.png" for p in world.products],
    }
    _write_parquet(_truth_table(products), truth_path(out_dir, "products"))
    for product in world.products:
        write_png(
            out_dir / TRUTH_DIR / MASKS_DIR / f"{product.product_id}.png",
            np.where(product.mask, 255, 0).astype(np.uint8),
        )
    (out_dir / TRUTH_DIR / "README.txt").write_text(README, encoding="utf-8")


def simulate(
    config: SimulatorConfig | None = None,
    out_dir: str | Path = "studio_world",
    progress: bool = True,
    *,
    overwrite: bool = False,
) -> SimulationSummary:
    """Simulate the studio world and write everything to ``out_dir`` (module docstring has the layout).

    Args:
        config: the world (defaults: ``SimulatorConfig()``).
        out_dir: output folder; created if missing.
        progress: tqdm progress bars.
        overwrite: replace an earlier simulation's outputs in ``out_dir`` (other files are left alone).

    Returns:
        The :class:`SimulationSummary` (also written to ``summary.json``).

    Raises:
        SimulationError: ``out_dir`` already holds a simulation and ``overwrite`` is False.
    """
    started = time.perf_counter()
    config = config or SimulatorConfig()
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir, overwrite)

    world = StudioWorld(config, progress=progress)
    logger.info("world: %d products, %d variants", len(world.products), len(world.variants))
    assets = write_world_assets(world, out_dir, progress)
    _write_parquet(_log_table("assets", assets), out_dir / "assets.parquet")

    model, scores, p_variant = build_traffic_model(world)
    traffic = _write_traffic(model, config, out_dir, progress)
    panel = _write_preferences(world, out_dir)
    _write_world_truth(world, out_dir, scores, p_variant)
    ceilings = bayes_ceilings(out_dir)

    users = config.users
    world_truth = {
        "warning": "evaluation only: training code must never read truth/",
        "examination": list(users.examination),
        "examination_reference": "theta_1 = 1: examination is identifiable only relative to slot 1",
        "attractiveness": {"intercept": users.attractiveness_intercept, "slope": users.attractiveness_slope},
        "dwell": {
            "log_mean": users.dwell_log_mean,
            "gold_slope": users.dwell_gold_slope,
            "log_sd": users.dwell_log_sd,
            "session_scale_ms": model.session_scale_ms,
            "target_censoring_rate": users.target_censoring_rate,
            "session_model": "time left in session ~ Exponential(mean = session_scale_ms)",
        },
        "segment_shares": dict(users.segment_shares),
        "panel": panel,
        "gold": {
            "features": list(FEATURES),
            "weights": SEGMENT_WEIGHTS,
            "normalisation": {s: list(v) for s, v in GOLD_NORMALISATION.items()},
            "adherence_scales": ADHERENCE_SCALES.tolist(),
        },
        "logging_policy": {
            "variant_policy": config.logging.variant_policy,
            "placement": config.logging.placement,
            "score": "gold_weight * panel_gold + spurious_weight * standardised colourfulness + noise * N(0, 1)",
        },
        "ceilings": ceilings.as_dict(),
    }
    (out_dir / TRUTH_DIR / WORLD_FILE).write_text(json.dumps(world_truth, indent=2) + "\n", encoding="utf-8")
    draw_contact_sheet(world, out_dir / "contact_sheet.png")

    gold = world.variant_gold
    summary = SimulationSummary(
        out_dir=str(out_dir),
        seed=config.seed,
        rows={
            "impressions": traffic["impressions"],
            "dwell": traffic["dwell"],
            "preferences": config.annotators.pairs,
            "assets": len(assets["image_id"]),
        },
        products=len(world.products),
        variants=len(world.variants),
        requests=config.logging.requests,
        ctr_per_slot=traffic["ctr_per_slot"],
        examination=tuple(users.examination),
        censoring_rate=traffic["censoring_rate"],
        target_censoring_rate=users.target_censoring_rate,
        tie_rate=panel["tie_rate"],
        target_tie_rate=config.annotators.target_tie_rate,
        segmenter_iou_mean=float(world.segmenter_iou.mean()),
        segmenter_iou_min=float(world.segmenter_iou.min()),
        gold_mean={s: float(gold[:, j].mean()) for j, s in enumerate(SEGMENTS)},
        gold_std={s: float(gold[:, j].std()) for j, s in enumerate(SEGMENTS)},
        ceilings=ceilings.as_dict(),
        seconds=time.perf_counter() - started,
    )
    summary.write(out_dir / "summary.json")
    return summary
