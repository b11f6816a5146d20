"""Base-model pretraining: data, losses that decrease on tiny runs, schedule/EMA by hand, exact resume."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.studio.pretrain.autoencoder import gradient_l1, psnr, train_vae, vae_loss, vae_training_images
from experiments.studio.pretrain.checkpoint import Checkpointer
from experiments.studio.pretrain.config import (
    DenoiserStageConfig,
    DenoiserTrainConfig,
    MaskDecoderTrainConfig,
    PretrainConfig,
    PretrainDataConfig,
    PretrainEvalConfig,
    VAETrainConfig,
)
from experiments.studio.pretrain.data import random_known_masks, render_scene_pool, to_unit_range
from experiments.studio.pretrain.optim import WeightEMA, learning_rate_at
from experiments.studio.pretrain.train import (
    build_cache,
    denoiser_loss,
    make_denoiser_batch,
    pretrain,
    render_data,
    train_denoiser,
)
from experiments.studio.prompts import studio_vocabulary
from offline_data.simulator import prompt_family
from policy.config import InpaintModelConfig, StyleConfig
from policy.model import InpaintPolicy
from policy.style import StyleConditioning

TINY_DATA = PretrainDataConfig(scenes=64, products=16, validation=16)


def tiny_config(**denoiser: object) -> PretrainConfig:
    return PretrainConfig(
        data=TINY_DATA,
        vae=VAETrainConfig(steps=4, batch_size=4, warmup_steps=1),
        mask_decoder=MaskDecoderTrainConfig(steps=3, batch_size=2, warmup_steps=1),
        denoiser=DenoiserTrainConfig(
            batch_size=4, warmup_steps=1, validate_every=3,
            stage1=DenoiserStageConfig(steps=3, product_fraction=0.0),
            stage2=DenoiserStageConfig(steps=4, product_fraction=0.7), **denoiser,  # type: ignore[arg-type]
        ),
        evaluation=PretrainEvalConfig(samples=8, num_steps=2, classifier_scenes=64),
        checkpoint_every=2,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# Data


def test_random_masks_keep_and_paint_something() -> None:
    masks = random_known_masks(200, 64, torch.Generator().manual_seed(0), full_probability=0.1)
    assert masks.shape == (200, 64, 64) and masks.dtype == torch.bool
    full = ~masks.flatten(1).any(dim=1)
    assert 8 <= int(full.sum()) <= 35  # about 10 % paint the whole image
    partial = masks[~full]
    assert bool(partial.flatten(1).any(dim=1).all()) and bool((~partial).flatten(1).any(dim=1).all())
    painted = (~partial).float().mean(dim=(1, 2))
    assert float(painted.min()) > 0.01 and float(painted.max()) < 0.99
    assert 0.25 < float(painted.mean()) < 0.6
    again = random_known_masks(200, 64, torch.Generator().manual_seed(0), full_probability=0.1)
    assert torch.equal(masks, again)


def test_style_partners_share_the_family_and_are_other_scenes() -> None:
    scenes = render_scene_pool(96, 32, seed=0)
    picks = torch.arange(96)
    for same_prompt in (0.0, 1.0):
        partners = scenes.style_partners(picks, same_prompt, torch.Generator().manual_seed(1))
        for i, j in zip(picks.tolist(), partners.tolist()):
            assert scenes.families[i] == scenes.families[j] == prompt_family(scenes.prompts[j])
            assert i != j
    partners = scenes.style_partners(picks, 1.0, torch.Generator().manual_seed(1))
    shared = [scenes.prompts[i] == scenes.prompts[j] for i, j in zip(picks.tolist(), partners.tolist())]
    repeated = [scenes.prompts.count(p) > 1 for p in scenes.prompts]
    assert shared == repeated  # the same prompt whenever the pool holds it twice


def test_batches_are_deterministic_and_consistent() -> None:
    policy = InpaintPolicy.from_config(InpaintModelConfig(), vocabulary=studio_vocabulary())
    data = render_data(TINY_DATA, 64)
    style = StyleConditioning(StyleConfig(), policy.text_encoder.config.hidden_size)
    cache = build_cache(policy, style, data.scenes, data.products)
    config = DenoiserTrainConfig()
    args = {"batch_size": 12, "product_fraction": 0.5, "prompt_dropout": 0.5}
    first = make_denoiser_batch(policy, data.scenes, data.products, cache, config,
                                generator=torch.Generator().manual_seed(3), **args)  # fmt: skip
    second = make_denoiser_batch(policy, data.scenes, data.products, cache, config,
                                 generator=torch.Generator().manual_seed(3), **args)  # fmt: skip
    for name in ("latents", "masked_latents", "known", "input_ids", "style_embeddings", "style_on", "noise"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    empty = policy.tokenizer([""], padding="max_length", max_length=policy.tokenizer.model_max_length,
                             return_tensors="pt").input_ids[0]  # fmt: skip
    dropped = (first.input_ids == empty).all(dim=1)
    assert 0 < int(dropped.sum()) < 12
    assert first.known.shape == (12, 1, 16, 16) and first.known.dtype == torch.bool


# ----------------------------------------------------------------------------------------------------------
# Losses decrease on tiny runs


def test_vae_loss_decreases() -> None:
    policy = InpaintPolicy.from_config(InpaintModelConfig(), vocabulary=studio_vocabulary())
    data = render_data(TINY_DATA, 64)
    config = VAETrainConfig(steps=40, batch_size=8, learning_rate=2e-3, warmup_steps=2, crop=32)
    fixed = to_unit_range(vae_training_images(data.validation_scenes, data.validation_products, 16, 0.3,
                                              torch.Generator().manual_seed(0)))  # fmt: skip

    def held_out() -> float:
        with torch.no_grad():
            return float(vae_loss(policy.vae, fixed, config, torch.Generator().manual_seed(0))["l1"])

    before = held_out()
    checkpointer = Checkpointer(Path("/nonexistent"), {}, every=10**9)
    train_vae(policy.vae, data.scenes, data.products, config, generator=torch.Generator().manual_seed(1),
              checkpointer=checkpointer, log_metrics=lambda m, s: None)  # fmt: skip
    assert held_out() < 0.8 * before


def test_denoiser_loss_decreases_and_only_trained_parts_change() -> None:
    policy = InpaintPolicy.from_config(InpaintModelConfig(), vocabulary=studio_vocabulary())
    data = render_data(TINY_DATA, 64)
    style = StyleConditioning(StyleConfig(), policy.text_encoder.config.hidden_size)
    cache = build_cache(policy, style, data.scenes, data.products)
    validation = build_cache(policy, style, data.validation_scenes, data.validation_products)
    config = DenoiserTrainConfig(batch_size=16, learning_rate=2e-3, warmup_steps=2, ema_decay=0.0, validate_every=100,
                                 stage1=DenoiserStageConfig(steps=15, product_fraction=0.0),
                                 stage2=DenoiserStageConfig(steps=15, product_fraction=0.7))  # fmt: skip
    batch = make_denoiser_batch(policy, data.validation_scenes, data.validation_products, validation, config,
                                batch_size=32, product_fraction=0.5, generator=torch.Generator().manual_seed(9),
                                prompt_dropout=0.0)  # fmt: skip
    with torch.no_grad():
        before = float(denoiser_loss(policy, style, batch, config.known_weight))
    vae_before = [p.clone() for p in policy.vae.parameters()]
    encoder_before = [b.clone() for b in style.encoder.buffers()]
    logged: list[dict] = []
    metrics = train_denoiser(policy, style, data, cache, validation, config, seed=0,
                             checkpointer=Checkpointer(Path("/nonexistent"), {}, every=10**9),
                             log_metrics=lambda m, s: logged.append(dict(m)))  # fmt: skip
    with torch.no_grad():
        after = float(denoiser_loss(policy, style, batch, config.known_weight))
    assert after < 0.7 * before, (before, after)
    assert math.isfinite(metrics["denoiser/val_loss"])
    assert any("denoiser/loss" in m for m in logged)
    assert all(torch.equal(a, b) for a, b in zip(vae_before, policy.vae.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(encoder_before, style.encoder.buffers()))


# ----------------------------------------------------------------------------------------------------------
# Small pure pieces, by hand


def test_learning_rate_schedule_by_hand() -> None:
    assert learning_rate_at(0, peak=1.0, warmup_steps=4, total_steps=14) == pytest.approx(0.25)
    assert learning_rate_at(3, peak=1.0, warmup_steps=4, total_steps=14) == pytest.approx(1.0)
    assert learning_rate_at(4, peak=1.0, warmup_steps=4, total_steps=14) == pytest.approx(1.0)
    # half way through the cosine: floor + (1 - floor) / 2
    assert learning_rate_at(9, peak=2.0, warmup_steps=4, total_steps=14) == pytest.approx(2.0 * 0.55)
    assert learning_rate_at(14, peak=1.0, warmup_steps=4, total_steps=14) == pytest.approx(0.1)
    assert learning_rate_at(99, peak=1.0, warmup_steps=4, total_steps=14) == pytest.approx(0.1)


def test_ema_by_hand() -> None:
    param = torch.nn.Parameter(torch.tensor([0.0]))
    ema = WeightEMA([param], decay=0.9)
    param.data.fill_(1.0)
    ema.update(0)  # decay min(0.9, 1/10) = 0.1: shadow = 0.1 * 0 + 0.9 * 1
    assert float(ema.shadow[0]) == pytest.approx(0.9)
    param.data.fill_(2.0)
    ema.update(100)  # decay 0.9
    assert float(ema.shadow[0]) == pytest.approx(0.9 * 0.9 + 0.1 * 2.0)
    with ema.swapped():
        assert float(param.detach()) == pytest.approx(1.01)
    assert float(param.detach()) == 2.0


def test_vae_colour_term_by_hand() -> None:
    # An identity "VAE" whose decoder adds 0.2 everywhere: every pooled colour is off by 0.2, so the term is 0.04.
    class Shifted(torch.nn.Module):
        def encode(self, x):
            from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

            return type(
                "Out", (), {"latent_dist": DiagonalGaussianDistribution(torch.cat([x, x.new_full(x.shape, -30)], 1))}
            )

        def decode(self, z):
            return type("Out", (), {"sample": z + 0.2})

    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    terms = vae_loss(Shifted(), images, VAETrainConfig(colour_weight=1.0), torch.Generator().manual_seed(0))
    assert float(terms["colour"]) == pytest.approx(0.04, rel=1e-3)
    assert float(terms["l1"]) == pytest.approx(0.2, rel=1e-3)


def test_gradient_loss_and_psnr_by_hand() -> None:
    target = torch.zeros(1, 1, 2, 3)
    prediction = torch.tensor([[[[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]]]])
    # horizontal diffs: row 0 (1, 0), row 1 (0, 0) -> mean 0.25; vertical: (0, -1, -1) -> mean 2/3
    assert float(gradient_l1(prediction, target)) == pytest.approx(0.25 + 2 / 3)
    assert psnr(torch.full((1, 3, 2, 2), 0.1), torch.zeros(1, 3, 2, 2)) == pytest.approx(10 * math.log10(4 / 0.01))


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="product_fraction must be in"):
        DenoiserStageConfig(steps=1, product_fraction=1.5)
    with pytest.raises(ValueError, match="prompt_dropout must be in"):
        DenoiserTrainConfig(prompt_dropout=-0.1)
    with pytest.raises(ValueError, match="crop must be >= 8"):
        VAETrainConfig(crop=4)


# ----------------------------------------------------------------------------------------------------------
# Checkpoints: an interrupted run resumed from its latest checkpoint ends exactly where an uninterrupted one does


class Interrupted(Exception):
    pass


def final_weights(result) -> dict[str, torch.Tensor]:
    policy = result.policy
    modules = {"unet": policy.unet, "vae": policy.vae, "text": policy.text_encoder, "style": result.style,
               "decoder": policy.mask_decoder}  # fmt: skip
    return {f"{k}.{n}": t.clone() for k, m in modules.items() for n, t in m.state_dict().items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    return pretrain(InpaintModelConfig(), tiny_config(), seed=0, checkpoint_dir=folder, log_metrics=lambda m, s: None)


@pytest.mark.parametrize("stage_key", ["vae/loss", "denoiser/val_loss"])
def test_resume_from_a_checkpoint_is_exact(tmp_path: Path, stage_key: str, uninterrupted) -> None:
    config = tiny_config()
    model = InpaintModelConfig()
    full = uninterrupted

    seen = {"count": 0}

    def interrupt(metrics: dict, step: int) -> None:
        if stage_key in metrics:
            seen["count"] += 1
            if seen["count"] == 2:  # the second logging of that stage, after a checkpoint within it
                raise Interrupted

    with pytest.raises(Interrupted):
        pretrain(model, config, seed=0, checkpoint_dir=tmp_path / "b", log_metrics=interrupt)
    latest = tmp_path / "b" / "latest.safetensors"
    resumed = pretrain(model, config, seed=0, checkpoint_dir=tmp_path / "c", log_metrics=lambda m, s: None,
                       resume=latest)  # fmt: skip
    expected, got = final_weights(full), final_weights(resumed)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert resumed.policy.vae.config.scaling_factor == full.policy.vae.config.scaling_factor


def test_pretrain_refuses_a_pretrained_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model.pretrained must not be set"):
        pretrain(InpaintModelConfig(pretrained=tmp_path), tiny_config(), seed=0, checkpoint_dir=tmp_path,
                 log_metrics=lambda m, s: None)  # fmt: skip


def test_rendered_data_follows_the_data_seed() -> None:
    a, b = render_data(TINY_DATA, 32), render_data(TINY_DATA, 32)
    assert torch.equal(a.scenes.images, b.scenes.images) and a.scenes.prompts == b.scenes.prompts
    assert not torch.equal(a.scenes.images[:16], a.validation_scenes.images)
    np.testing.assert_array_equal(a.products.masks.numpy(), b.products.masks.numpy())
