"""The three preservation mechanisms: latent replacement, pixel composite, verification."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from offline_data.errors import PreservationError
from rollout.preservation import (
    composite_product,
    noise_product_latents,
    replace_product_latents,
    replacement_alphas,
    verify_preservation,
)


def sd_scheduler(steps: int) -> DDIMScheduler:
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                          clip_sample=False, set_alpha_to_one=False)  # fmt: skip
    sched.set_timesteps(steps)
    return sched


def test_forward_noise_matches_diffusers_add_noise() -> None:
    sched = sd_scheduler(10)
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    for t in (1, 451, 951):
        expected = sched.add_noise(x0, noise, torch.tensor([t, t]))
        ours = noise_product_latents(x0, noise, sched.alphas_cumprod[t])
        torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-6)
    assert torch.equal(noise_product_latents(x0, noise, torch.tensor(1.0)), x0)


def test_replacement_levels_follow_the_chain() -> None:
    sched = sd_scheduler(10)  # leading spacing: 901, 801, ..., 1
    alphas = replacement_alphas(sched, sched.timesteps)
    ac = sched.alphas_cumprod
    assert alphas.shape == (11,)
    assert alphas[0] == ac[901]  # x_T is at the first timestep's level
    for i in range(1, 10):  # after step i the latent is at the next timestep's level
        assert alphas[i] == ac[int(sched.timesteps[i])]
    assert alphas[10] == 1.0  # after the last step: the clean original latent


def test_replace_product_latents() -> None:
    latents, replacement = torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2, 2)
    product = torch.tensor([[[[True, False], [False, False]]]])
    out = replace_product_latents(latents, product, replacement)
    assert out[0, :, 0, 0].tolist() == [1.0, 1.0] and out.sum() == 2
    with pytest.raises(ValueError, match="do not match"):
        replace_product_latents(latents, product[:, :, :1], replacement)


def test_composite_by_hand() -> None:
    generated = torch.zeros(1, 3, 2, 3, dtype=torch.uint8)
    original = torch.full((1, 3, 2, 3), 200, dtype=torch.uint8)
    mask = torch.tensor([[[True, False, False], [False, False, False]]])
    band = torch.tensor([[[0.9, 0.25, 0.0], [0.0, 0.0, 0.0]]])  # a weight inside the mask must be ignored
    out = composite_product(generated, original, mask, band)
    assert out[0, :, 0, 0].tolist() == [200, 200, 200]  # hard mask: exact copy
    assert out[0, :, 0, 1].tolist() == [50, 50, 50]  # band: round(0.25 * 200 + 0.75 * 0)
    assert int(out[0, :, :, 2:].sum()) == 0 and int(out[0, :, 1].sum()) == 0
    assert torch.equal(composite_product(generated, original, mask), torch.where(mask[:, None], original, generated))


def test_verify_counts_and_enforces() -> None:
    generator = torch.Generator().manual_seed(0)
    original = torch.randint(0, 256, (3, 3, 8, 8), generator=generator, dtype=torch.uint8)
    mask = torch.zeros(3, 8, 8, dtype=torch.bool)
    mask[:, 2:6, 2:6] = True
    output = original.clone()
    output[:, :, 0, 0] = original[:, :, 0, 0] ^ 1  # outside the mask: allowed
    clean = verify_preservation(original, output, mask, enforce=True)
    assert clean.ok and clean.mask_pixels == 48 and clean.max_abs_diff == 0 and clean.samples == 3
    output[1, 0, 3, 3] = original[1, 0, 3, 3] ^ 4  # channel 0 of one product pixel, off by 4
    output[2, :, 4, 4] = original[2, :, 4, 4] ^ 1  # all channels of another
    report = verify_preservation(original, output, mask)
    assert not report.ok
    assert (report.max_abs_diff, report.differing_pixels, report.violating_samples) == (4, 2, (1, 2))
    with pytest.raises(PreservationError, match=r"max \|diff\| 4, 2 differing pixel\(s\) in image\(s\) \[1, 2\]"):
        verify_preservation(original, output, mask, enforce=True)
    single = verify_preservation(original[1], output[1], mask[1])
    assert (single.samples, single.differing_pixels) == (1, 1)


def test_band_is_reported_and_must_stay_outside_the_mask() -> None:
    original = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 1, 1] = True
    band = torch.zeros(1, 4, 4)
    band[0, 0, :3] = 0.5
    assert verify_preservation(original, original, mask, band_weight=band).band_pixels == 3
    band[0, 1, 1] = 0.5
    report = verify_preservation(original, original, mask, band_weight=band)
    assert report.band_pixels_in_mask == 1 and not report.ok
    assert report.metrics()["preservation/band_pixels"] == 3.0


@pytest.mark.parametrize(
    ("output", "mask", "message"),
    [
        (torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.bool), "images must be uint8"),
        (torch.zeros(1, 3, 4, 5, dtype=torch.uint8), torch.zeros(1, 4, 4, dtype=torch.bool), "must both be"),
        (torch.zeros(1, 3, 4, 4, dtype=torch.uint8), torch.zeros(1, 4, 4), r"mask must be bool \[1, 4, 4\]"),
    ],
)
def test_bad_inputs(output: torch.Tensor, mask: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        verify_preservation(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), output, mask)
