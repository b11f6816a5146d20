"""Offline methods: Diffusion-DPO and reward-weighted regression on logged images, with a tiny policy."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from policy.dpo import DPOObjective, preference_pairs
from policy.evaluation import EvaluationConfig, PolicyEvaluator
from policy.offline import LoggedImages, OfflineTrainer, encode_logged_images, noise_prediction_errors
from policy.offline_config import DPOConfig, OfflineConfig, RWRConfig
from policy.rwr import RWRObjective, combine_heads, rwr_weights
from rollout.ddim_logprob import background_mean
from rollout.denoise import predict_guided_noise, prepare_conditioning

from .test_trainer import SAMPLER, red_background, tiny_policy, tiny_requests


def logged_images(count: int = 8) -> LoggedImages:
    """Two products, four composites each: the request photos with a background tinted red to blue."""
    requests = tiny_requests(2)
    pixels, masks, prompts, products = [], [], [], []
    for i in range(count):
        request = requests[i % 2]
        image = request.product_rgb.clone()
        tint = i // 2 / max(count // 2 - 1, 1)  # 0 (blue) .. 1 (red)
        background = ~request.product_mask
        image[0][background] = int(255 * tint)
        image[2][background] = int(255 * (1 - tint))
        pixels.append(image)
        masks.append(request.product_mask)
        prompts.append(request.prompt)
        products.append(request.product_id)
    return LoggedImages(
        image_ids=tuple(f"img{i}" for i in range(count)),
        product_ids=tuple(products),
        prompts=tuple(prompts),
        pixels=torch.stack(pixels),
        masks=torch.stack(masks),
    )


def test_preference_pairs_orient_count_and_skip() -> None:
    products = ["p0", "p0", "p1", "p0"]
    choices = ["a", "b", "a", "tie", "b"]
    pairs = preference_pairs([0, 1, 0, 3, 0], [1, 3, 2, 0, 3], choices, products, DPOConfig())
    # pair 3 (0 vs 2) is cross-product and skipped; pair 4 is a tie kept as half a label.
    assert pairs.preferred.tolist() == [0, 3, 3, 3] and pairs.rejected.tolist() == [1, 1, 0, 0]
    assert pairs.tie.tolist() == [False, False, True, False]
    assert pairs.counts == {"read": 5, "used": 4, "ties_used": 1, "ties_skipped": 0, "cross_product_skipped": 1}
    skipping = preference_pairs([0, 3], [1, 0], ["a", "tie"], products, DPOConfig(ties="skip", cross_product="use"))
    assert len(skipping) == 1 and skipping.counts["ties_skipped"] == 1
    with pytest.raises(ValueError, match="pair 2: choice must be 'a', 'b' or 'tie', got 'A'"):
        preference_pairs([0, 1], [1, 0], ["a", "A"], products, DPOConfig())
    with pytest.raises(ValueError, match="no usable preference pair"):
        preference_pairs([0], [2], ["a"], products, DPOConfig())


def test_rwr_weights_and_head_combination_by_hand() -> None:
    weights = rwr_weights(torch.tensor([0.0, 1.0, 2.0]), temperature=1.0, max_weight=20.0)
    raw = torch.tensor([math.exp(-1), 1.0, math.exp(1)])  # z = -1, 0, 1 (unbiased std 1)
    torch.testing.assert_close(weights, raw / raw.mean())
    clipped = rwr_weights(torch.tensor([0.0, 1.0, 2.0]), temperature=0.25, max_weight=1.5)
    assert clipped.max().item() == 1.5 and clipped[0].item() < 0.05
    heads = {
        "click": torch.tensor([0.1, 0.2, 0.3]),
        "dwell": torch.tensor([5.0, 3.0, 4.0]),
        "preference": torch.ones(3),
    }
    combined = combine_heads(heads, {"click": 1.0, "dwell": 0.5, "preference": 0.0})
    torch.testing.assert_close(combined, torch.tensor([-1.0, 0.0, 1.0]) + 0.5 * torch.tensor([1.0, -1.0, 0.0]))
    with pytest.raises(ValueError, match="not \\['conversion'\\]"):
        combine_heads(heads, {"conversion": 1.0})
    with pytest.raises(ValueError, match="head 'preference' is constant"):
        combine_heads(heads, {"preference": 1.0})
    with pytest.raises(ValueError, match="all equal"):
        rwr_weights(torch.ones(4), 1.0, 10.0)


def test_noise_prediction_errors_use_the_sampler_conditioning_and_the_background_only() -> None:
    policy = tiny_policy()
    images = logged_images(4)
    encoded = encode_logged_images(policy, images)
    # Product latent positions of x0 come from the masked image, as in the sampler's replacement.
    product = encoded.latent_product.expand_as(encoded.latents)
    assert torch.equal(encoded.latents[product], encoded.masked_image_latents[product])
    index, t = torch.tensor([0, 3]), torch.tensor([500, 21])
    noise = torch.randn(2, *encoded.latents.shape[1:], generator=torch.Generator().manual_seed(0))
    got = noise_prediction_errors(policy, encoded, index, t, noise)
    noisy = policy.scheduler.add_noise(encoded.latents[index], noise, t)
    embeds = encoded.prompt_embeds[encoded.prompt_index[index]]
    conditioning = prepare_conditioning(
        prompt_embeds=embeds, negative_prompt_embeds=embeds, latent_product=encoded.latent_product[index],
        masked_image_latents=encoded.masked_image_latents[index], guidance_scale=1.0, dtype=policy.dtype,
    )  # fmt: skip
    with torch.no_grad():
        prediction = predict_guided_noise(policy, noisy, t, conditioning)
    expected = background_mean((prediction - noise) ** 2, ~encoded.latent_product[index])
    torch.testing.assert_close(got.detach(), expected)


def test_dpo_loss_is_log_two_at_the_start_and_falls_with_training() -> None:
    policy = tiny_policy()
    images = logged_images(8)
    encoded = encode_logged_images(policy, images)
    # Redder backgrounds win: pairs (k, k + 2) of the same product, the later (redder) one preferred.
    a = [0, 1, 2, 3, 4, 5]
    pairs = preference_pairs(a, [i + 2 for i in a], ["b"] * 6, images.product_ids, DPOConfig(beta=500.0))
    objective = DPOObjective(encoded, pairs, DPOConfig(beta=500.0))
    timesteps = torch.tensor([101, 301, 501, 701])
    loss, metrics = objective.loss(policy, torch.Generator().manual_seed(0), 16, timesteps)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert metrics["dpo/margin"] == 0.0

    config = OfflineConfig(method="dpo", steps=40, batch_size=12, learning_rate=3e-3, eval_every=0)
    history = OfflineTrainer(policy, objective, config, seed=0, sampling_steps=4).train()
    assert history[0]["dpo/data/used"] == 6.0 and history[-1]["step"] == 40.0
    # The same pairs, timesteps and noise as before training: the preferred images' errors fell relative to
    # the rejected ones'.
    after, metrics = objective.loss(policy, torch.Generator().manual_seed(0), 16, timesteps)
    assert after.item() < math.log(2) - 0.02 and metrics["dpo/margin"] > 0


def test_rwr_training_saves_evaluated_adapters_and_changes_only_lora(tmp_path: Path) -> None:
    policy = tiny_policy()
    images = logged_images(8)
    encoded = encode_logged_images(policy, images)
    weights = rwr_weights(red_background(images.pixels, tiny_requests(2) * 4), temperature=0.5, max_weight=10.0)
    objective = RWRObjective(encoded, weights, RWRConfig())
    summary = objective.summary()
    assert summary["images"] == 8 and 1.0 <= summary["effective_images"] < 8.0
    frozen = {n: p.detach().clone() for n, p in policy.unet.named_parameters() if ".lora_" not in n}
    evaluator = PolicyEvaluator(
        tiny_requests(2, offset=60), reward_fn=red_background, gold_fn=red_background, sampler=SAMPLER,
        config=EvaluationConfig(seeds_per_request=2),
    )  # fmt: skip
    config = OfflineConfig(method="rwr", steps=4, batch_size=4, eval_every=2)
    history = OfflineTrainer(
        policy, objective, config, seed=1, sampling_steps=SAMPLER.num_steps, evaluator=evaluator, output_dir=tmp_path
    ).train()
    assert [h["step"] for h in history] == [0.0, 2.0, 4.0]
    assert history[0]["eval/kl_nats"] == 0.0 and history[-1]["eval/kl_nats"] > 0.0
    assert history[0]["rwr/data/images"] == 8.0
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == ["step-000000", "step-000002", "step-000004"]
    assert (tmp_path / "overoptimisation.png").is_file()
    assert all(torch.equal(p, frozen[n]) for n, p in policy.unet.named_parameters() if ".lora_" not in n)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"product_ids": ("p",)}, "expected 2 product ids and prompts, got 1, 2"),
        ({"masks": torch.zeros(2, 32, 32, dtype=torch.bool)}, "empty product mask"),
        ({"masks": torch.ones(2, 32, 32, dtype=torch.bool)}, "covers the whole image"),
        ({"pixels": torch.zeros(2, 3, 32, 32)}, "pixels must be uint8"),
    ],
)
def test_logged_images_are_validated(change: dict, message: str) -> None:
    mask = torch.zeros(2, 32, 32, dtype=torch.bool)
    mask[:, 5:9, 5:9] = True
    fields = {
        "image_ids": ("a", "b"), "product_ids": ("p", "p"), "prompts": ("oak wood", "oak wood"),
        "pixels": torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "masks": mask,
    }  # fmt: skip
    with pytest.raises(ValueError, match=message):
        LoggedImages(**{**fields, **change})
