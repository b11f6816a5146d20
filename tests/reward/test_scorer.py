"""Training end to end on a small world, the scorer's outputs, save/load, the pessimistic variant and the
adapter to rollout's RewardFn."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reward.errors import CheckpointError
from reward.pipeline import fit_reward_model
from reward.scorer import RewardScorer, ScoringRequest
from tests.reward.conftest import fast_config


@pytest.fixture(scope="module")
def trained(small_splits: Path) -> tuple[RewardScorer, dict]:
    return fit_reward_model(
        fast_config(), small_splits / "train", small_splits / "validation", seed=0, device=torch.device("cpu"),
        progress=False,
    )  # fmt: skip


def _batch(splits: Path, count: int = 6):
    from reward.data import load_reward_data

    data = load_reward_data(splits / "test")
    images = data.images.pixels[:count]
    requests = [
        ScoringRequest(segment=s, prompt=data.images.prompts[i], product_kind=data.images.kinds[i],
                       product_mask=data.images.masks[i])
        for i, s in zip(range(count), ["warm", "cool", "minimal", "warm", "martian", "cool"])
    ]  # fmt: skip
    return data, images, requests


def test_scorer_outputs(trained, small_splits: Path):
    scorer, metrics = trained
    _, images, requests = _batch(small_splits)
    out = scorer(images, requests)
    assert out.reward.shape == (6,) and out.uncertainty.shape == (6,)
    assert set(out.heads) == {"click", "dwell", "preference"}
    assert torch.all((out.heads["click"] > 0) & (out.heads["click"] < 1))
    assert torch.all(out.uncertainty >= 0) and torch.isfinite(out.reward).all()
    assert scorer.oov_counts["segment"] == 1  # "martian" is reported, not silently mapped
    assert len(metrics["members"]) == 2 and metrics["examination"][0] == 1.0
    # The pessimistic reward is the mean minus lambda standard deviations across members.
    pessimistic = scorer.pessimistic(2.0)(images, requests)
    assert torch.allclose(pessimistic.reward, out.reward - 2.0 * out.uncertainty, atol=1e-5)
    # Each member's combined reward (what the export's direct lift resamples): their mean and spread are the output's.
    assert out.members.shape == (2, 6) and torch.equal(pessimistic.members, out.members)
    assert torch.allclose(out.members.mean(dim=0), out.reward, atol=1e-6)
    assert torch.allclose(out.members.std(dim=0, unbiased=False), out.uncertainty, atol=1e-6)
    with pytest.raises(ValueError, match="needs the product mask"):
        scorer(images, [ScoringRequest(segment=r.segment, prompt=r.prompt) for r in requests])


def test_embedding_is_the_first_members_standardised_features(trained, small_splits: Path):
    scorer, _ = trained
    _, images, requests = _batch(small_splits)
    masks = torch.stack([r.product_mask for r in requests])
    embedded = scorer.embed(images, masks=masks)
    member = scorer.ensemble.members[0]
    encoder = scorer.ensemble.shared_encoder or member.encoder
    with torch.no_grad():
        expected = member.normalised(encoder.encode(images, masks))
    assert embedded.shape == (6, encoder.dim) and embedded.dtype == torch.float32
    torch.testing.assert_close(embedded, expected, rtol=0, atol=1e-6)
    # Batch-independent (batch norm in eval mode): the same image embeds the same in any batch.
    torch.testing.assert_close(scorer.embed(images[:2], masks=masks[:2]), embedded[:2], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="mask-aware: pass masks="):
        scorer.embed(images)


def test_save_and_load_give_the_same_rewards(trained, small_splits: Path, tmp_path: Path):
    scorer, metrics = trained
    _, images, requests = _batch(small_splits)
    scorer.save(tmp_path / "model", metrics=metrics)
    assert {p.name for p in (tmp_path / "model").iterdir()} >= {"model.safetensors", "reward.json", "metrics.json"}
    loaded = RewardScorer.load(tmp_path / "model")
    before, after = scorer(images, requests), loaded(images, requests)
    assert torch.allclose(before.reward, after.reward, atol=1e-5)
    assert torch.allclose(before.heads["dwell"], after.heads["dwell"], atol=1e-5)
    (tmp_path / "model" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors: not found"):
        RewardScorer.load(tmp_path / "model")
    with pytest.raises(CheckpointError, match="is .* a 'backdrop reward train' model folder"):
        RewardScorer.load(tmp_path)


def test_a_reward_model_is_verified_before_it_scores(trained, tmp_path: Path):
    from offline_data.integrity import WeightIntegrityError
    from tests.offline_data.test_integrity import flip_byte

    scorer, metrics = trained
    folder = scorer.save(tmp_path / "model", metrics=metrics)
    weights = folder / "model.safetensors"
    flip_byte(weights)  # scored with exit 0 before: the AUC just dropped
    with pytest.raises(WeightIntegrityError, match=f"^{weights}: SHA-256 mismatch: expected [0-9a-f]{{64}} "):
        RewardScorer.load(folder)
    (folder / "SHA256SUMS").unlink()
    with pytest.raises(WeightIntegrityError, match="this reward model was written by backdrop but has no SHA256SUMS"):
        RewardScorer.load(folder)


def test_adapter_is_a_rollout_reward_fn(trained, small_splits: Path):
    from rollout.protocols import RewardFn
    from rollout.request import InpaintRequest
    from rollout.scoring import score_images

    scorer, _ = trained
    data, images, _ = _batch(small_splits, 4)
    requests = [
        InpaintRequest(request_id=f"r{i}", product_id=data.images.product_ids[i], segment="warm",
                       prompt=data.images.prompts[i], product_rgb=images[i], product_mask=data.images.masks[i])
        for i in range(4)
    ]  # fmt: skip
    # Test products were never seen in training (leak-free split): give their kinds explicitly.
    reward_fn = scorer.reward_fn(dict(zip(data.images.product_ids, data.images.kinds)))
    assert isinstance(reward_fn, RewardFn)
    rewards = score_images(reward_fn, images, requests, batch_size=3)
    direct = scorer(images, [ScoringRequest("warm", r.prompt, data.images.kinds[i], r.product_mask)
                             for i, r in enumerate(requests)])  # fmt: skip
    assert rewards.dtype == torch.float32 and torch.allclose(rewards, direct.reward, atol=1e-5)


def test_other_likelihoods_and_a_learned_cnn_branch_train(small_splits: Path):
    config = fast_config(
        encoder={"channels": 4},
        click={"mode": "ips", "examination": (1.0, 0.7, 0.5, 0.4)},
        dwell={"distribution": "weibull"},
        preference={"ties": "rao_kupper"},
        train={"epochs": 1, "steps_per_epoch": 3, "patience": 0},
        ensemble={"members": 1},
    )
    from reward.encoders import StudioCNN

    initial = StudioCNN(4).conv1.weight.detach().clone()
    torch.manual_seed(0)
    scorer, metrics = fit_reward_model(
        config, small_splits / "train", small_splits / "validation", seed=0, device=torch.device("cpu"), progress=False
    )
    member = scorer.ensemble.members[0]
    assert scorer.ensemble.shared_encoder is None and member.encoder is not None
    assert not torch.equal(member.encoder.conv1.weight, initial)  # the learned branch trained with the heads
    assert metrics["examination"] == pytest.approx([1.0, 0.7, 0.5, 0.4])
    _, images, requests = _batch(small_splits)
    assert torch.isfinite(scorer(images, requests).reward).all()
