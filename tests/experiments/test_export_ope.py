"""The candidate's propensities over logged variants: the DDIM inference chain, the ELBO log-ratio, and the
re-weighting of the logged propensities, by hand and on the shipped studio base."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch

from experiments.export.logged_ope import (
    THIN_CELL_IMPRESSIONS,
    LoggedImpressions,
    candidate_propensities,
    elbo_log_ratio_draws,
    elbo_log_ratios,
    forward_chain,
)
from experiments.ope.evaluate import OPEConfig, build_candidate, build_impression_log, evaluate
from policy.config import LoraConfig, NoiseScheduleConfig
from policy.model import build_scheduler
from rollout.config import SamplerConfig
from rollout.ddim_logprob import step_alphas


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_forward_chain_has_the_forward_process_marginals(eta: float) -> None:
    """Every x_t of q's chain is N(√a_t x0, 1 − a_t) (DDIM paper, eq. 7 keeps the marginals for any σ)."""
    scheduler = build_scheduler(NoiseScheduleConfig())
    scheduler.set_timesteps(5)
    timesteps = scheduler.timesteps.long()
    draws = 4000
    x0 = torch.full((draws, 1, 2, 2), 0.8)
    noise = torch.randn((draws, 6, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    no_product = torch.zeros(draws, 1, 2, 2, dtype=torch.bool)
    chain, means = forward_chain(scheduler, x0, x0, no_product, noise, timesteps=timesteps, eta=eta)
    assert chain.shape == (draws, 6, 1, 2, 2) and means.shape == (draws, 5, 1, 2, 2)
    levels = [step_alphas(scheduler, timesteps[:1])[0]] + [step_alphas(scheduler, t[None])[1] for t in timesteps]
    for i, alpha in enumerate(levels):
        values = chain[:, i].flatten()
        assert float(values.mean()) == pytest.approx(float(alpha.sqrt() * 0.8), abs=0.03)
        assert float(values.var()) == pytest.approx(float(1 - alpha), abs=0.03 + 0.05 * float(1 - alpha))


def test_forward_chain_keeps_the_product_latents_of_the_sampler() -> None:
    scheduler = build_scheduler(NoiseScheduleConfig())
    scheduler.set_timesteps(3)
    timesteps = scheduler.timesteps.long()
    x0, product_latents = torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2, 2)
    product = torch.tensor([[[[True, False], [False, False]]]])
    noise = torch.zeros(1, 4, 2, 2, 2)
    chain, _ = forward_chain(scheduler, x0, product_latents, product, noise, timesteps=timesteps, eta=1.0)
    # With zero noise the product position is √a (the clean product latent scaled), the background stays 0.
    assert torch.all(chain[0, :, :, 0, 0] > 0) and torch.all(chain[0, :, :, 1, 1] == 0)
    assert torch.allclose(chain[0, -1, :, 0, 0], torch.ones(2))  # clean after the last step, as the sampler


@pytest.fixture(scope="module")
def studio_images() -> dict:
    from offline_data.simulator import SimulatorConfig, StudioWorld, WorldConfig

    world = StudioWorld(SimulatorConfig(world=WorldConfig(products=6, variants_per_product=2)))
    variants = world.variants
    return {
        "pixels": torch.from_numpy(variants.images).permute(0, 3, 1, 2).contiguous(),
        "masks": torch.from_numpy(world.noisy_masks[variants.product_index]),
        "prompts": list(variants.prompts),
    }


SAMPLER = SamplerConfig(num_steps=4, guidance_scale=3.0)


def test_a_fresh_adapter_has_a_zero_log_ratio(studio_images: dict) -> None:
    from policy.model import InpaintPolicy

    policy = InpaintPolicy.studio_base(lora=LoraConfig())  # B = 0: candidate == base
    ratio = elbo_log_ratios(
        policy,
        studio_images["pixels"][:4],
        studio_images["masks"][:4],
        studio_images["prompts"][:4],
        SAMPLER,
        draws=1,
        seed=0,
    )
    assert np.array_equal(ratio, np.zeros(4))


def test_the_per_draw_columns_are_the_draws_the_mean_averages(studio_images: dict) -> None:
    """Column d is draw d of elbo_log_ratios with the same seed: the first n columns' mean is its draws=n value."""
    from policy.model import InpaintPolicy

    policy = InpaintPolicy.studio_base(lora=LoraConfig())
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in policy.trainable_parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    args = (policy, studio_images["pixels"][:3], studio_images["masks"][:3], studio_images["prompts"][:3], SAMPLER)
    # The same batch size everywhere: float32 convolutions round differently with another batch composition.
    per_draw = elbo_log_ratio_draws(*args, draws=3, seed=4, batch_size=2)
    assert per_draw.shape == (3, 3) and per_draw.dtype == np.float64
    assert np.array_equal(elbo_log_ratios(*args, draws=1, seed=4, batch_size=2), per_draw[:, 0])
    np.testing.assert_allclose(
        elbo_log_ratios(*args, draws=2, seed=4, batch_size=2), per_draw[:, :2].mean(axis=1), rtol=1e-12
    )
    assert np.all(per_draw.std(axis=1) > 0)  # the draws differ: there is Monte Carlo noise to average
    with pytest.raises(ValueError, match="draws must be >= 1"):
        elbo_log_ratio_draws(*args, draws=0, seed=4)


def test_the_log_ratio_points_at_the_model_that_painted_the_image(studio_images: dict) -> None:
    """Backgrounds sampled by the candidate score a higher ELBO ratio than the base's on the same requests."""
    from policy.model import InpaintPolicy
    from rollout.request import InpaintRequest
    from rollout.sampler import sample_trajectories

    policy = InpaintPolicy.studio_base(lora=LoraConfig())
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in policy.trainable_parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    requests = [
        InpaintRequest(
            request_id=f"r{i}",
            product_id=f"p{i}",
            segment="warm",
            prompt=studio_images["prompts"][i],
            product_rgb=studio_images["pixels"][i],
            product_mask=studio_images["masks"][i],
        )
        for i in range(6)
    ]
    seeds = list(range(6))
    candidate = sample_trajectories(policy, requests, seeds, SAMPLER).images
    with policy.as_base():
        base = sample_trajectories(policy, requests, seeds, SAMPLER).images
    masks, prompts = studio_images["masks"][:6], studio_images["prompts"][:6]
    on_candidate = elbo_log_ratios(policy, candidate, masks, prompts, SAMPLER, draws=2, seed=0)
    on_base = elbo_log_ratios(policy, base, masks, prompts, SAMPLER, draws=2, seed=0)
    assert on_candidate.mean() > on_base.mean()
    assert (on_candidate > on_base).sum() >= 4


def impressions(**overrides) -> LoggedImpressions:
    values = {
        "image_row": np.array([0, 0, 1, 2]),
        "product": np.array(["p", "p", "p", "q"], dtype=object),
        "segment": np.array(["warm", "cool", "cool", "warm"], dtype=object),
        "slot": np.array([0, 1, 0, 1]),
        "propensity": np.array([0.5, 0.5, 0.25, 0.6]),
    }
    return LoggedImpressions(**(values | overrides))


def test_candidate_propensities_by_hand() -> None:
    # Log-ratios 0, ln 2, 7 -> ρ = 1, 2, e^7. Cells (product, slot):
    #   (p, slot 1): rows 0 and 2 show images 0 and 1 -> ρ = 1, 2, Z = 3/2, weights 2/3, 4/3;
    #   (p, slot 2): row 1 alone -> weight 1 (the logger's choice); (q, slot 2): row 3 alone -> weight 1.
    # A per-product Z would have pooled rows 0-2 (Z = 4/3, weights 3/4, 3/4, 3/2: slot 2 would get 3/4).
    click = {"warm": np.array([0.2, 0.4, 0.3]), "cool": np.array([0.1, 0.5, 0.9])}
    examination = np.array([1.0, 0.5])
    columns, diagnostics = candidate_propensities(impressions(), np.array([0.0, math.log(2), 7.0]), click, examination)
    # candidate_propensity = π_0 · w
    assert columns["candidate_propensity"] == pytest.approx([0.5 * 2 / 3, 0.5, 0.25 * 4 / 3, 0.6])
    # dm_logged = θ_slot q(image, segment)
    assert columns["dm_logged"] == pytest.approx([0.2, 0.5 * 0.1, 0.5, 0.5 * 0.3])
    # dm_prediction = θ_slot · mean over the cell's impressions of w · q(image, the row's segment)
    warm_p1 = np.mean([2 / 3 * 0.2, 4 / 3 * 0.4])  # = 1/3
    cool_p1 = np.mean([2 / 3 * 0.1, 4 / 3 * 0.5])  # = 11/30
    assert columns["dm_prediction"] == pytest.approx([warm_p1, 0.5 * 0.1, cool_p1, 0.5 * 0.3])
    assert columns["dm_prediction"][[0, 2]] == pytest.approx([1 / 3, 11 / 30])
    assert diagnostics["clipped_share"] == 0.0 and diagnostics["max_weight"] == pytest.approx(4 / 3)
    assert diagnostics["products"] == 2 and diagnostics["cells"] == 3
    assert diagnostics["thin_cell_share"] == 1.0  # every cell has fewer than THIN_CELL_IMPRESSIONS impressions


def test_weights_average_one_in_every_product_slot_cell() -> None:
    rng = np.random.default_rng(4)
    n = 400
    log = LoggedImpressions(
        image_row=rng.integers(0, 12, size=n),
        product=np.array([f"p{i}" for i in rng.integers(0, 5, size=n)], dtype=object),
        segment=np.array(["warm", "cool"], dtype=object)[rng.integers(0, 2, size=n)],
        slot=rng.integers(0, 4, size=n),
        propensity=np.full(n, 0.01),
    )
    # Log-ratios up to ±400 nats: the per-cell shift keeps exp from overflowing.
    log_ratio = rng.normal(scale=200.0, size=12)
    click = {"warm": rng.uniform(size=12), "cool": rng.uniform(size=12)}
    columns, diagnostics = candidate_propensities(log, log_ratio, click, np.ones(4), temperature=0.5)
    weights = columns["candidate_propensity"] / log.propensity
    assert diagnostics["clipped_share"] == 0.0 and np.isfinite(weights).all()
    for product in np.unique(log.product):
        for slot in range(4):
            cell = (log.product == product) & (log.slot == slot)
            assert weights[cell].mean() == pytest.approx(1.0)


def test_thin_cell_share_counts_impressions_in_small_cells() -> None:
    # Product a: 5 impressions in slot 1 (not thin) and 1 in slot 2; product b: 2 in slot 1 -> 3 of 8 thin.
    log = LoggedImpressions(
        image_row=np.zeros(8, dtype=np.int64),
        product=np.array(["a"] * 6 + ["b"] * 2, dtype=object),
        segment=np.full(8, "warm", dtype=object),
        slot=np.array([0, 0, 0, 0, 0, 1, 0, 0]),
        propensity=np.full(8, 0.5),
    )
    assert THIN_CELL_IMPRESSIONS == 5
    _, diagnostics = candidate_propensities(log, np.zeros(1), {"warm": np.ones(1)}, np.ones(2))
    assert diagnostics["cells"] == 3 and diagnostics["thin_cell_share"] == pytest.approx(3 / 8)


def test_candidate_propensities_temperature_clipping_and_missing_propensities() -> None:
    click = {"warm": np.ones(3), "cool": np.ones(3)}
    flat, _ = candidate_propensities(impressions(), np.array([0.0, 1e6, 0.0]), click, np.ones(2), temperature=1e9)
    assert flat["candidate_propensity"] == pytest.approx([0.5, 0.5, 0.25, 0.6], rel=1e-3)  # τ → ∞: the logger
    high = impressions(propensity=np.array([0.9, 0.9, 0.9, 0.6]))
    columns, diagnostics = candidate_propensities(high, np.array([0.0, math.log(2), 0.0]), click, np.ones(2))
    assert columns["candidate_propensity"].max() == 1.0 and diagnostics["clipped_share"] == 0.25
    with pytest.raises(ValueError, match="lack propensities"):
        candidate_propensities(
            impressions(propensity=np.array([0.5, np.nan, 0.2, 0.1])), np.zeros(3), click, np.ones(2)
        )


# A ranked-placement world small enough to enumerate: P products with K variants each, S slots. A request shows S
# distinct products (uniform subset); each product's variant is drawn from π_base(v | p) ∝ exp(score / 1.5); the
# images go to slots by descending logging score with probability 1 − ε, else a uniform shuffle (as
# offline_data/simulator/logging_policy.py ``place``); propensity = π_base(v | p) · P(slot | chosen set); a click is
# Bernoulli(θ_slot · attr(p, v)). The candidate prefers low-score variants, π_cand ∝ exp(−score / 1.5), so its ρ
# is highest for the images the logger puts in the low slots: the case where a per-product Z moves impressions.
EXAMINATION = np.array([1.0, 0.72, 0.52, 0.38])
RANKED_EPSILON = 0.1


@dataclasses.dataclass(frozen=True)
class RankedWorld:
    score: np.ndarray  # [P, K] logging score
    base: np.ndarray  # [P, K] π_base(v | p), the logger's variant choice
    candidate: np.ndarray  # [P, K] π_cand(v | p)
    attractiveness: np.ndarray  # [P, K] P(click | examined)


def ranked_world(seed: int = 0, products: int = 6, variants: int = 3) -> RankedWorld:
    rng = np.random.default_rng(seed)
    score = rng.normal(size=(products, variants))
    base = np.exp(score / 1.5) / np.exp(score / 1.5).sum(axis=1, keepdims=True)
    candidate = np.exp(-score / 1.5) / np.exp(-score / 1.5).sum(axis=1, keepdims=True)
    return RankedWorld(score, base, candidate, rng.uniform(0.1, 0.5, size=(products, variants)))


def expected_impressions(world: RankedWorld, slots: int) -> np.ndarray:
    """[P, S, K] expected impressions of (product, slot, variant) per request, by enumerating subsets and variants."""
    products, variants = world.score.shape
    out = np.zeros((products, slots, variants))
    subsets = list(itertools.combinations(range(products), slots))
    for shown in subsets:
        for chosen in itertools.product(range(variants), repeat=slots):
            probability = np.prod(world.base[shown, chosen]) / len(subsets)
            rank = np.argsort(np.argsort(-world.score[shown, chosen]))  # highest score -> slot 0
            for i, (product, variant) in enumerate(zip(shown, chosen)):
                out[product, :, variant] += probability * RANKED_EPSILON / slots
                out[product, rank[i], variant] += probability * (1 - RANKED_EPSILON)
    return out


def draw_ranked_log(world: RankedWorld, requests: int, slots: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Flat per-impression arrays (request, product, variant, 0-based slot, propensity, click) of ``requests``."""
    products = world.score.shape[0]
    shown = np.argsort(rng.uniform(size=(requests, products)), axis=1)[:, :slots]
    variant = (rng.uniform(size=(requests, slots, 1)) > np.cumsum(world.base[shown], axis=2)).sum(axis=2)
    rank = np.argsort(np.argsort(-world.score[shown, variant], axis=1), axis=1)
    shuffled = np.argsort(rng.uniform(size=(requests, slots)), axis=1)
    slot = np.where((rng.uniform(size=requests) < RANKED_EPSILON)[:, None], shuffled, rank)
    p_slot = (1 - RANKED_EPSILON) * (slot == rank) + RANKED_EPSILON / slots
    click = rng.uniform(size=(requests, slots)) < EXAMINATION[slot] * world.attractiveness[shown, variant]
    return {
        "request": np.repeat(np.arange(requests), slots),
        "product": shown.ravel(),
        "variant": variant.ravel(),
        "slot": slot.ravel(),
        "propensity": (world.base[shown, variant] * p_slot).ravel(),
        "click": click.ravel().astype(np.float64),
    }


def test_ranked_placement_estimate_matches_the_exact_value_of_the_keep_the_slot_candidate() -> None:
    world = ranked_world()
    variants = world.score.shape[1]
    slots = EXAMINATION.size
    rho = world.candidate / world.base
    # Exact value (clicks per request) of the candidate that keeps the logger's (product, slot) and re-chooses the
    # variant with P_0(v | p, k) ρ(v) / Z_{p,k}: Σ_{p,k,v} E[impressions (p, k, v)] ρ(v) / Z_{p,k} θ_k attr(v).
    occupancy = expected_impressions(world, slots)
    assert occupancy.sum() == pytest.approx(slots)
    z_cell = (occupancy * rho[:, None, :]).sum(axis=2) / occupancy.sum(axis=2)
    click_rate = EXAMINATION[None, :, None] * world.attractiveness[:, None, :]
    truth = float((occupancy * rho[:, None, :] / z_cell[:, :, None] * click_rate).sum())
    logger_value = float((occupancy * click_rate).sum())
    assert truth - logger_value > 0.03  # the candidate's real lift, well above the tolerance below

    requests = 20_000
    log = draw_ranked_log(world, requests, slots, np.random.default_rng(7))
    product_ids = np.array([f"p{p}" for p in log["product"]], dtype=object)
    logged = LoggedImpressions(
        image_row=log["product"] * variants + log["variant"],
        product=product_ids,
        segment=np.full(product_ids.size, "all", dtype=object),
        slot=log["slot"],
        propensity=log["propensity"],
    )
    attractiveness = {"all": world.attractiveness.ravel()}
    columns, diagnostics = candidate_propensities(logged, np.log(rho).ravel(), attractiveness, EXAMINATION)
    assert diagnostics["clipped_share"] < 1e-3 and diagnostics["thin_cell_share"] == 0.0
    weights = columns["candidate_propensity"] / log["propensity"]
    per_request = np.bincount(log["request"], weights=weights * log["click"])
    estimate = per_request.mean()
    standard_error = per_request.std(ddof=1) / math.sqrt(requests)
    # Tolerance: 4 request-level standard errors (≈ 0.03; a two-sided normal miss has probability 6e-5). The
    # estimator's other error, the O(1/n) bias of estimating Z_{p,k} by a cell mean, measured −0.0005 over 40 seeds
    # with the expected click as reward (no click noise), is far below it.
    assert abs(estimate - truth) < 4 * standard_error
    # The same through experiments.ope.evaluate (IPS at the request level equals the sum above; DR with the exact q̂).
    impression_log = build_impression_log(log["request"], log["slot"] + 1, log["click"], log["propensity"])
    candidate = build_candidate(impression_log, **columns)
    report = evaluate(impression_log, candidate, OPEConfig(n_bootstrap=0))
    assert report.result("ips", "request").value == pytest.approx(estimate)
    assert abs(report.result("dr", "request").value - truth) < 4 * standard_error

    # Without the click noise (reward = the expected click θ_k attr(v) of the shown image) the standard error is
    # ≈ 0.003 (conservative: it ignores that Z is fitted on the same log), small enough to see the normalisation's
    # own error: the per-cell estimate is on the truth, and a per-product Z (every impression put in one slot's cell)
    # lands ≈ 0.05 low: it moves impressions from slot 1 to slot 4 (weights average ≈ 0.6 in slot 1 and ≈ 1.5 in
    # slot 4) and even reverses the sign of the lift.
    expected_click = EXAMINATION[log["slot"]] * world.attractiveness[log["product"], log["variant"]]
    noiseless = np.bincount(log["request"], weights=weights * expected_click)
    noiseless_error = noiseless.std(ddof=1) / math.sqrt(requests)
    assert abs(noiseless.mean() - truth) < 4 * noiseless_error
    pooled = dataclasses.replace(logged, slot=np.zeros_like(log["slot"]))
    per_product, _ = candidate_propensities(pooled, np.log(rho).ravel(), attractiveness, np.ones(1))
    pooled_weights = per_product["candidate_propensity"] / log["propensity"]
    assert pooled_weights[log["slot"] == 0].mean() < 0.8 and pooled_weights[log["slot"] == 3].mean() > 1.3
    pooled_estimate = np.bincount(log["request"], weights=pooled_weights * expected_click).mean()
    assert truth - pooled_estimate > 10 * noiseless_error and pooled_estimate < logger_value
