"""The candidate's propensities over logged variants: the DDIM inference chain, the ELBO log-ratio, and the
re-weighting of the logged propensities, by hand and on the shipped studio base."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from experiments.export_ope import LoggedImpressions, candidate_propensities, elbo_log_ratios, forward_chain
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
    with policy.reference():
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
        "segment": np.array(["warm", "cool", "warm", "warm"], dtype=object),
        "slot": np.array([0, 1, 0, 1]),
        "propensity": np.array([0.5, 0.5, 0.25, 0.6]),
    }
    return LoggedImpressions(**(values | overrides))


def test_candidate_propensities_by_hand() -> None:
    # Product p: impressions show images 0, 0, 1 with log-ratios 0, 0, ln 2 -> ρ = 1, 1, 2, Z_p = 4/3,
    # weights 0.75, 0.75, 1.5. Product q: one impression, weight 1.
    click = {"warm": np.array([0.2, 0.4, 0.3]), "cool": np.array([0.1, 0.5, 0.9])}
    examination = np.array([1.0, 0.5])
    columns, diagnostics = candidate_propensities(impressions(), np.array([0.0, math.log(2), 7.0]), click, examination)
    assert columns["candidate_propensity"] == pytest.approx([0.375, 0.375, 0.375, 0.6])
    # dm_logged = θ_slot q(image, segment)
    assert columns["dm_logged"] == pytest.approx([0.2, 0.5 * 0.1, 0.4, 0.5 * 0.3])
    # dm_prediction = θ_slot · mean over the product's impressions of w · q(image, the row's segment)
    warm_p = np.mean([0.75 * 0.2, 0.75 * 0.2, 1.5 * 0.4])
    cool_p = np.mean([0.75 * 0.1, 0.75 * 0.1, 1.5 * 0.5])
    assert columns["dm_prediction"] == pytest.approx([warm_p, 0.5 * cool_p, warm_p, 0.5 * 0.3])
    assert diagnostics["clipped_share"] == 0.0 and diagnostics["max_weight"] == pytest.approx(1.5)
    assert diagnostics["products"] == 2


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
