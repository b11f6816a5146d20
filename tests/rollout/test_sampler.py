"""The sampler on the tiny policy: product pixels kept, reproducible, trajectories that re-score exactly."""

from __future__ import annotations

from pathlib import Path

import matplotlib.cbook
import numpy as np
import pytest
import torch
from PIL import Image

from offline_data.errors import PreservationError
from offline_data.simulator.segmenter import segment_mask
from policy.config import InpaintModelConfig
from policy.model import InpaintPolicy
from rollout import sampler as sampler_module
from rollout.config import EdgeBandConfig, SamplerConfig
from rollout.ddim_logprob import background_mean
from rollout.denoise import conditioning_from_trajectory, denoise_step
from rollout.preservation import replacement_alphas
from rollout.protocols import InpaintingModel
from rollout.request import InpaintRequest, expand_requests, request_from_rgba
from rollout.sampler import sample_trajectories
from rollout.trajectory import Trajectory

from .conftest import build_policy, random_request

FAST = SamplerConfig(num_steps=4, guidance_scale=5.0, eta=1.0)


def requests(count: int, seed: int = 0) -> list[InpaintRequest]:
    return [random_request(i, seed=seed) for i in range(count)]


def rescore(policy: InpaintPolicy, trajectory: Trajectory) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and Gaussian means of every stored step under the model's current weights: ``[B, T]``, list."""
    policy.scheduler.set_timesteps(trajectory.num_steps)
    conditioning = conditioning_from_trajectory(trajectory, dtype=policy.dtype)
    log_probs, means = [], []
    with torch.no_grad():
        for i in range(trajectory.num_steps):
            out = denoise_step(
                policy,
                trajectory.latents[:, i],
                trajectory.timesteps[i],
                conditioning,
                eta=trajectory.eta,
                prev_sample=trajectory.latents[:, i + 1],
            )
            log_probs.append(out.log_prob)
            means.append(out.mean)
    return torch.stack(log_probs, dim=1), torch.stack(means, dim=1)


def test_outputs_keep_every_product_pixel(policy: InpaintPolicy) -> None:
    batch = requests(6)
    rollout = sample_trajectories(policy, batch, list(range(6)), FAST)
    assert isinstance(policy, InpaintingModel)
    assert rollout.images.shape == (6, 3, 64, 64) and rollout.images.dtype == torch.uint8
    for image, request in zip(rollout.images, batch):
        mask = request.product_mask
        assert torch.equal(image[:, mask], request.product_rgb[:, mask])
        assert not torch.equal(image[:, ~mask], request.product_rgb[:, ~mask])  # the background was painted
    report = rollout.preservation
    assert report.ok and report.max_abs_diff == 0 and report.samples == 6
    assert report.mask_pixels == sum(int(r.product_mask.sum()) for r in batch)


def test_real_photo_with_a_noisy_mask_and_edge_band(policy: InpaintPolicy) -> None:
    with matplotlib.cbook.get_sample_data("Minduka_Present_Blue_Pack.png") as handle:
        rgba = np.asarray(Image.open(handle).convert("RGBA"))  # 128 x 128 photo with a soft alpha
    exact = request_from_rgba(rgba, request_id="photo", product_id="minduka", segment="all", prompt="oak wood floor")
    noisy_mask, confidence = segment_mask(exact.product_mask.numpy(), np.random.default_rng(0), error_level=0.8)
    assert (noisy_mask != exact.product_mask.numpy()).sum() > 50  # the segmenter really erred
    request = InpaintRequest(
        request_id="photo-noisy",
        product_id="minduka",
        segment="all",
        prompt="white marble tabletop, soft window light",
        product_rgb=exact.product_rgb,
        product_mask=torch.from_numpy(noisy_mask),
        confidence=torch.from_numpy(confidence).float(),
    )
    config = SamplerConfig(num_steps=3, band=EdgeBandConfig(width=2, min_confidence=0.05))
    rollout = sample_trajectories(policy, [request, exact], [5, 6], config)
    for image, req in zip(rollout.images, [request, exact]):
        assert torch.equal(image[:, req.product_mask], req.product_rgb[:, req.product_mask])
    assert rollout.preservation.ok and rollout.preservation.band_pixels > 0
    assert rollout.trajectory.latents.shape[-2:] == (32, 32)


def test_product_latents_are_replaced_at_every_step(policy: InpaintPolicy) -> None:
    batch = requests(2, seed=1)
    trajectory = sample_trajectories(policy, batch, [11, 12], FAST).trajectory
    product = trajectory.latent_product.expand(-1, 4, -1, -1)
    noise = torch.stack([torch.randn((FAST.num_steps + 1, 4, 16, 16), generator=torch.Generator().manual_seed(s))
                         for s in (11, 12)])[:, 0]  # fmt: skip
    x0 = trajectory.masked_image_latents
    alphas = replacement_alphas(policy.scheduler, trajectory.timesteps)
    for i in range(FAST.num_steps + 1):
        if i < FAST.num_steps:  # the forward-noised original at the step's own timestep (diffusers' add_noise)
            level = trajectory.timesteps[i]
            expected = policy.scheduler.add_noise(x0, noise, level.repeat(2))
            assert alphas[i] == policy.scheduler.alphas_cumprod[level]
        else:  # after the last step: the clean original latent
            expected = x0
        torch.testing.assert_close(trajectory.latents[:, i][product], expected[product], atol=1e-6, rtol=0)
    assert product.any() and (~product).any()


@pytest.mark.parametrize("guidance_scale", [5.0, 1.0])
def test_recomputed_log_probs_equal_sampled_ones(guidance_scale: float, tmp_path: Path) -> None:
    policy = build_policy()
    config = SamplerConfig(num_steps=5, guidance_scale=guidance_scale)
    trajectory = sample_trajectories(policy, requests(3), [1, 2, 3], config).trajectory
    assert trajectory.log_probs.shape == (3, 5) and torch.isfinite(trajectory.log_probs).all()
    log_probs, means = rescore(policy, trajectory)
    assert torch.equal(log_probs, trajectory.log_probs)  # ratio exactly 1 before any update
    assert torch.equal(torch.exp(log_probs - trajectory.log_probs), torch.ones(3, 5))
    reloaded = Trajectory.load(trajectory.save(tmp_path / "t.safetensors"))
    assert torch.equal(rescore(policy, reloaded)[0], trajectory.log_probs)
    # KL(pi_theta || pi_ref) = ||mu_theta - mu_ref||^2 / (2 sigma^2): exactly 0 while B = 0
    with policy.as_base():
        _, ref_means = rescore(policy, trajectory)
    assert torch.equal(means, ref_means)
    with torch.no_grad():
        for param in policy.trainable_parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=torch.Generator().manual_seed(param.numel())))
    moved_log_probs, moved_means = rescore(policy, trajectory)
    assert not torch.equal(moved_log_probs, trajectory.log_probs)
    kl = background_mean((moved_means[:, 0] - ref_means[:, 0]) ** 2, trajectory.background)
    assert bool((kl > 0).all())


def test_sampling_is_reproducible_per_seed(policy: InpaintPolicy) -> None:
    batch = requests(4, seed=2)
    first = sample_trajectories(policy, batch, [7, 8, 9, 10], FAST)
    again = sample_trajectories(policy, batch, [7, 8, 9, 10], FAST)
    assert torch.equal(first.images, again.images) and torch.equal(first.trajectory.latents, again.trajectory.latents)
    other = sample_trajectories(policy, batch, [7, 8, 9, 99], FAST)
    assert torch.equal(other.trajectory.latents[:3, 0], first.trajectory.latents[:3, 0])
    assert not torch.equal(other.images[3], first.images[3])
    # chunking changes only float rounding (batch-size-dependent kernels), never the noise
    chunked = sample_trajectories(policy, batch, [7, 8, 9, 10], SamplerConfig(num_steps=4, batch_size=3))
    torch.testing.assert_close(chunked.trajectory.latents, first.trajectory.latents, atol=1e-4, rtol=0)
    assert chunked.trajectory.seeds == (7, 8, 9, 10) and chunked.preservation.samples == 4


def test_shared_start_seeds_share_x_T_and_nothing_else(policy: InpaintPolicy) -> None:
    batch = [requests(1, seed=3)[0]] * 3
    own = sample_trajectories(policy, batch, [5, 6, 7], FAST)
    shared = sample_trajectories(policy, batch, [5, 6, 7], FAST, start_seeds=[5, 5, 5])
    start = shared.trajectory.latents[:, 0]
    assert torch.equal(start[1], start[0]) and torch.equal(start[2], start[0])
    assert torch.equal(start[0], own.trajectory.latents[0, 0])  # x_T of the sample whose own seed is 5
    assert torch.equal(shared.images[0], own.images[0])  # sample 0 is unchanged: its start seed is its seed
    assert not torch.equal(shared.images[1], shared.images[0])  # the step noise still differs
    assert not torch.equal(shared.trajectory.latents[1, 1], own.trajectory.latents[1, 1])
    assert shared.preservation.ok


@pytest.mark.parametrize(
    ("start_seeds", "message"), [([1, 2], "start_seeds must be 3 non-negative"), ([1, 2, -1], "non-negative")]
)
def test_bad_start_seeds_are_refused(policy: InpaintPolicy, start_seeds: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sample_trajectories(policy, requests(3), [1, 2, 3], FAST, start_seeds=start_seeds)


def test_trajectory_contents(policy: InpaintPolicy) -> None:
    batch, seeds = expand_requests(requests(2), 2, first_seed=40)
    rollout = sample_trajectories(policy, batch, seeds, FAST)
    trajectory = rollout.trajectory
    assert trajectory.latents.shape == (4, FAST.num_steps + 1, 4, 16, 16)
    assert trajectory.timesteps.tolist() == [751, 501, 251, 1]
    assert trajectory.request_ids == ("req-0-0", "req-0-0", "req-0-1", "req-0-1")
    assert trajectory.seeds == (40, 41, 42, 43) and trajectory.guidance_scale == 5.0 and trajectory.eta == 1.0
    assert trajectory.prompt_embeds.shape == (4, 16, 64)
    assert torch.equal(trajectory.negative_prompt_embeds[0], policy.encode_prompts([""])[0])
    assert torch.equal(trajectory.product_mask, torch.stack([r.product_mask for r in batch]))
    assert rollout.requests == tuple(batch)


def test_enforcement_catches_a_broken_composite(policy: InpaintPolicy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sampler_module, "composite_product", lambda generated, original, mask, band: generated)
    with pytest.raises(PreservationError, match="product pixels changed"):
        sample_trajectories(policy, requests(2), [1, 2], FAST)
    relaxed = SamplerConfig(num_steps=2, enforce_preservation=False)
    report = sample_trajectories(policy, requests(2), [1, 2], relaxed).preservation
    assert not report.ok and report.violating_samples == (0, 1)


def test_bad_calls(policy: InpaintPolicy) -> None:
    batch = requests(2)
    with pytest.raises(ValueError, match="got 2 requests but 1 seeds"):
        sample_trajectories(policy, batch, [1], FAST)
    with pytest.raises(ValueError, match="seeds must be >= 0"):
        sample_trajectories(policy, batch, [1, -1], FAST)
    with pytest.raises(ValueError, match="seeds must be integers"):
        sample_trajectories(policy, batch, [1, 2.5], FAST)
    small = random_request(0, size=32)
    with pytest.raises(ValueError, match="request 1 \\('req-0-0'\\) is 32x32 but request 0 is 64x64"):
        sample_trajectories(policy, [batch[0], small], [1, 2], FAST)
    odd = InpaintRequest(**{**vars(batch[0]), "product_rgb": torch.zeros(3, 62, 62, dtype=torch.uint8),
                            "product_mask": torch.zeros(62, 62, dtype=torch.bool)})  # fmt: skip
    with pytest.raises(ValueError, match="not a multiple of the VAE factor 4"):
        sample_trajectories(policy, [odd], [1], FAST)
    speckled = torch.zeros(64, 64, dtype=torch.bool)
    speckled[::4, ::4] = True  # one product pixel in every latent cell
    covered = InpaintRequest(**{**vars(batch[0]), "request_id": "speckled", "product_mask": speckled})
    with pytest.raises(ValueError, match=r"request\(s\) \['speckled'\]: the product touches every latent position"):
        sample_trajectories(policy, [covered], [1], FAST)


def test_sampler_config_validation() -> None:
    for kwargs, message in [
        ({"eta": 0.0}, r"eta must be in \(0, 1\]"),
        ({"eta": 1.5}, r"eta must be in \(0, 1\]"),
        ({"num_steps": 0}, "num_steps must be >= 1"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"guidance_scale": -1.0}, "guidance_scale must be >= 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            SamplerConfig(**kwargs)


def test_bf16_channels_last_model_keeps_float32_trajectories() -> None:
    policy = build_policy(InpaintModelConfig(channels_last=True), dtype=torch.bfloat16)
    rollout = sample_trajectories(policy, requests(2), [3, 4], FAST)
    trajectory = rollout.trajectory
    assert rollout.preservation.ok
    assert trajectory.latents.dtype == torch.float32 and trajectory.prompt_embeds.dtype == torch.float32
    assert torch.isfinite(trajectory.log_probs).all()
    assert torch.equal(rescore(policy, trajectory)[0], trajectory.log_probs)


@pytest.mark.gpu
def test_denoising_loop_has_no_host_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every call inside the loop (guided UNet forward + DDIM step) runs with CUDA sync debugging set to error."""
    policy = build_policy()
    policy_cuda = InpaintPolicy(
        unet=policy.unet,
        vae=policy.vae,
        text_encoder=policy.text_encoder,
        tokenizer=policy.tokenizer,
        scheduler=policy.scheduler,
        device="cuda",
    )
    step = sampler_module.denoise_step
    calls = []

    def strict(*args: object, **kwargs: object) -> object:
        torch.cuda.set_sync_debug_mode("error")
        try:
            return step(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")
            calls.append(1)

    monkeypatch.setattr(sampler_module, "denoise_step", strict)
    rollout = sample_trajectories(policy_cuda, requests(2), [1, 2], FAST)
    assert rollout.preservation.ok and len(calls) == FAST.num_steps
