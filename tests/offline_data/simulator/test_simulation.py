"""simulate(): schema types, referential integrity, exact propensities, determinism, and the calibrated rates."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from offline_data.schemas import SCHEMAS
from offline_data.simulator import SimulationError, StudioWorld, read_truth_table, simulate

from .conftest import small_config

TABLES = ("impressions", "dwell", "preferences", "assets")


def _read(sim: Path, table: str):
    return pq.read_table(sim / f"{table}.parquet").to_pandas()


@pytest.mark.parametrize("table", TABLES)
def test_tables_have_exactly_the_schema_arrow_types(small_sim: Path, table: str) -> None:
    schema = pq.read_schema(small_sim / f"{table}.parquet").remove_metadata()
    assert schema == SCHEMAS[table].arrow_schema()


def test_logs_are_consistent_with_each_other_and_the_files(small_sim: Path) -> None:
    config = small_config()
    impressions, dwell, preferences, assets = (_read(small_sim, t) for t in TABLES)
    assert len(impressions) == config.logging.requests * config.logging.slots
    for frame, key in ((impressions, "event_id"), (dwell, "event_id"), (preferences, "pair_id"), (assets, "image_id")):
        assert frame[key].is_unique
    generated = assets[assets["kind"] == "generated"].set_index("image_id")
    assert set(impressions["image_id"]) <= set(generated.index)
    assert (
        generated.loc[impressions["image_id"], "product_id"].to_numpy() == impressions["product_id"].to_numpy()
    ).all()
    assert set(dwell["event_id"]) == set(impressions.loc[impressions["clicked"], "event_id"])
    assert set(preferences["image_a"]) | set(preferences["image_b"]) <= set(generated.index)
    assert (preferences["image_a"] != preferences["image_b"]).all()
    assert impressions["position"].between(1, config.logging.slots).all()
    assert ((impressions["propensity"] > 0) & (impressions["propensity"] <= 1)).all()
    # Every request shows distinct products in slots 1..S, and time moves forward with request ids.
    slots = config.logging.slots
    assert (impressions.groupby("request_id")["product_id"].nunique() == slots).all()
    assert np.all(impressions["position"].to_numpy().reshape(-1, slots) == np.arange(1, slots + 1))
    assert impressions["shown_at"].is_monotonic_increasing
    start = np.datetime64(config.logging.start_time.replace(tzinfo=None), "us")
    span = np.timedelta64(int(config.logging.period_days * 86400e6), "us")
    times = impressions["shown_at"].dt.tz_convert(None).to_numpy().astype("datetime64[us]")
    assert times.min() >= start and times.max() < start + span
    # Each kind of asset per product, the right files, the right hashes.
    assert sorted(assets["kind"].value_counts().items()) == [("generated", 48), ("mask", 12), ("product", 12)]
    for row in assets.itertuples():
        data = (small_sim / row.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row.sha256
    assert assets.loc[assets["kind"] == "generated", "prompt"].notna().all()
    assert assets.loc[assets["kind"] != "generated", "prompt"].isna().all()


def test_asset_files_hold_the_world(small_sim: Path) -> None:
    world = StudioWorld(small_config())
    product = world.products[5]
    rgba = np.asarray(Image.open(small_sim / f"images/products/{product.product_id}.png"))
    assert np.array_equal(rgba, product.rgba)
    mask = np.asarray(Image.open(small_sim / f"images/masks/{product.product_id}.png")) == 255
    assert np.array_equal(mask, world.noisy_masks[5])
    exact = np.asarray(Image.open(small_sim / f"truth/masks/{product.product_id}.png")) == 255
    assert np.array_equal(exact, product.mask)
    image = np.asarray(Image.open(small_sim / f"images/generated/{product.product_id}-v2.png"))
    assert np.array_equal(image, world.variants.images[5 * 4 + 2])


def test_propensity_is_the_product_of_variant_and_slot_probabilities(small_sim: Path) -> None:
    impressions = _read(small_sim, "impressions")
    truth = read_truth_table(small_sim, "impressions")
    images = read_truth_table(small_sim, "images")
    np.testing.assert_allclose(impressions["propensity"], truth["p_variant"] * truth["p_slot"], rtol=1e-15)
    p_variant = dict(zip(images["image_id"], images["p_variant"]))
    np.testing.assert_allclose(truth["p_variant"], [p_variant[i] for i in impressions["image_id"]])
    # Ranked placement: p_slot is (1 - eps) [slot = rank] + eps / S with eps = 0.5, S = 4.
    assert set(np.round(np.unique(truth["p_slot"]), 12)) <= {0.125, 0.625}
    assert np.all(truth["click_probability"] == truth["examination"] * truth["attractiveness"])


def test_uniform_shuffled_logging_has_propensity_one_over_k_times_s(tmp_path: Path) -> None:
    config = small_config(logging={"variant_policy": "uniform", "placement": "shuffle", "requests": 300})
    simulate(config, tmp_path, progress=False)
    assert np.allclose(_read(tmp_path, "impressions")["propensity"], 1 / (4 * 4))


def _files(root: Path) -> dict[str, bytes]:
    skip = {"summary.json", "contact_sheet.png"}  # summary.json carries the wall-clock time
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name not in skip
    }


def test_same_seed_gives_identical_bytes_and_another_seed_differs(small_sim: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    simulate(small_config(), again, progress=False)
    first, second = _files(small_sim), _files(again)
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []
    other = tmp_path / "other"
    simulate(small_config(seed=4), other, progress=False)
    third = _files(other)
    for table in TABLES:
        assert third[f"{table}.parquet"] != first[f"{table}.parquet"]


def test_ctr_ratio_under_shuffle_matches_the_examination_ratio(tmp_path: Path) -> None:
    config = small_config(logging={"placement": "shuffle", "requests": 6000, "chunk_requests": 2500})
    simulate(config, tmp_path, progress=False)
    impressions = _read(tmp_path, "impressions")
    clicks = impressions.groupby("position")["clicked"].agg(["mean", "size"])
    theta = np.asarray(config.users.examination)
    p1, n1 = clicks.loc[1, "mean"], clicks.loc[1, "size"]
    for k in range(2, config.logging.slots + 1):
        pk, nk = clicks.loc[k, "mean"], clicks.loc[k, "size"]
        ratio = pk / p1
        # Delta method: var(pk / p1) ≈ ratio² (var(pk) / pk² + var(p1) / p1²), var(p) = p (1 - p) / n.
        se = ratio * np.sqrt((1 - pk) / (pk * nk) + (1 - p1) / (p1 * n1))
        assert abs(ratio - theta[k - 1] / theta[0]) < 3 * se, (k, ratio, theta[k - 1], se)


@pytest.mark.parametrize("target", [0.15, 0.6])
def test_censoring_rate_matches_the_target(tmp_path: Path, target: float) -> None:
    config = small_config(users={"target_censoring_rate": target}, annotators={"pairs": 10})
    simulate(config, tmp_path, progress=False)
    censored = _read(tmp_path, "dwell")["censored"].to_numpy()
    se = np.sqrt(target * (1 - target) / censored.size)
    assert abs(censored.mean() - target) < 3 * se, (censored.mean(), target, censored.size)
    # Censored dwell is the time left in the session, shorter than the true dwell.
    truth = read_truth_table(tmp_path, "dwell")
    assert np.all(truth["true_dwell_ms"][censored] > truth["session_left_ms"][censored])


def test_tie_rate_matches_the_target(small_sim: Path) -> None:
    choices = _read(small_sim, "preferences")["choice"].to_numpy()
    target = small_config().annotators.target_tie_rate
    se = np.sqrt(target * (1 - target) / choices.size)
    assert abs(np.mean(choices == "tie") - target) < 3 * se
    truth = read_truth_table(small_sim, "preferences")
    assert truth["p_tie"].mean() == pytest.approx(target, abs=1e-9)  # calibrated exactly in expectation
    assert truth["cross_product"].mean() == pytest.approx(0.15, abs=4 * np.sqrt(0.1275 / choices.size))


def test_truth_sidecar_and_summary(small_sim: Path) -> None:
    world = json.loads((small_sim / "truth/world.json").read_text())
    assert world["examination"][0] == 1.0 and world["dwell"]["gold_slope"] == 0.35
    assert world["dwell"]["session_scale_ms"] > 0 and len(world["panel"]["annotators"]["temperature"]) == 6
    assert "evaluation only" in (small_sim / "truth/README.txt").read_text().lower()
    summary = json.loads((small_sim / "summary.json").read_text())
    assert summary["rows"] == {
        "impressions": 6000,
        "dwell": len(_read(small_sim, "dwell")),
        "preferences": 2000,
        "assets": 72,
    }
    impressions = _read(small_sim, "impressions")
    ctr = impressions.groupby("position")["clicked"].mean().to_numpy()
    np.testing.assert_allclose(summary["ctr_per_slot"], ctr)
    assert summary["ceilings"] == world["ceilings"]
    assert (small_sim / "contact_sheet.png").stat().st_size > 10_000


def test_existing_output_is_refused_unless_overwriting(small_sim: Path, tmp_path: Path) -> None:
    with pytest.raises(SimulationError, match="already holds simulation output"):
        simulate(small_config(), small_sim, progress=False)
    out = tmp_path / "sim"
    config = small_config(logging={"requests": 200}, annotators={"pairs": 50})
    simulate(config, out, progress=False)
    (out / "notes.txt").write_text("mine")
    summary = simulate(config, out, progress=False, overwrite=True)
    assert summary.rows["impressions"] == 800 and (out / "notes.txt").read_text() == "mine"


def test_real_photo_products(tmp_path: Path) -> None:
    config = small_config(
        world={"products": 4, "variants_per_product": 2, "real_photos": True},
        logging={"requests": 50},
        annotators={"pairs": 20},
    )
    simulate(config, tmp_path, progress=False)
    assets = _read(tmp_path, "assets")
    photo = assets[(assets["product_id"] == "photo00") & (assets["kind"] == "product")]
    assert len(photo) == 1 and photo["category"].item() == "photo"
