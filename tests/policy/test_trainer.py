"""The DDPO trainer on a tiny random-init policy: RL invariants, preservation, KL control, evaluation."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from offline_data.errors import PreservationError
from policy import trainer as trainer_module
from policy.advantages import RequestStatTracker
from policy.config import InpaintModelConfig, LoraConfig, TextEncoderConfig, UNetConfig, VAEConfig
from policy.evaluation import EvaluationConfig, PolicyEvaluator
from policy.model import InpaintPolicy
from policy.replay import StepRows, replay_rows
from policy.trainer import DDPOTrainer
from policy.trainer_config import DDPOConfig, KLConfig, OptimConfig, RewardSignalConfig
from rollout.config import SamplerConfig
from rollout.preservation import PreservationReport
from rollout.request import InpaintRequest
from rollout.sampler import Rollout, sample_trajectories

PROMPTS = ("white marble", "oak wood")
TINY = InpaintModelConfig(
    resolution=32,
    unet=UNetConfig(block_out_channels=(16, 32, 32)),
    vae=VAEConfig(block_out_channels=(8, 16, 16)),
    text=TextEncoderConfig(hidden_size=32, num_heads=2, intermediate_size=64, max_length=8),
)
SAMPLER = SamplerConfig(num_steps=4, guidance_scale=3.0, batch_size=4)


def tiny_policy(init_seed: int = 0) -> InpaintPolicy:
    """A 32 px policy (8x8x4 latents, 0.36 M UNet params) with a fresh rank-4 adapter."""
    config = InpaintModelConfig(**{**TINY.__dict__, "init_seed": init_seed})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)  # peft draws the adapter's A from the global generator
        return InpaintPolicy.from_config(config, lora=LoraConfig(), vocabulary=["white", "marble", "oak", "wood"])


def tiny_requests(count: int, *, offset: int = 0) -> list[InpaintRequest]:
    """Random product photos with a rectangular product, alternating prompts."""
    requests = []
    for i in range(offset, offset + count):
        generator = torch.Generator().manual_seed(i)
        rgb = torch.randint(0, 256, (3, 32, 32), generator=generator, dtype=torch.uint8)
        mask = torch.zeros(32, 32, dtype=torch.bool)
        top, left = (int(v) for v in torch.randint(4, 16, (2,), generator=generator))
        mask[top : top + 10, left : left + 8] = True
        requests.append(
            InpaintRequest(
                request_id=f"r{i}",
                product_id=f"p{i}",
                segment="warm",
                prompt=PROMPTS[i % 2],
                product_rgb=rgb,
                product_mask=mask,
            )
        )
    return requests


def red_background(images: torch.Tensor, requests: Sequence[InpaintRequest]) -> torch.Tensor:
    """A differentiable-free test reward: mean red minus mean blue over the background pixels, in [-1, 1]."""
    masks = torch.stack([r.product_mask for r in requests])
    background = (~masks).float()
    diff = (images[:, 0].float() - images[:, 2].float()) / 255.0
    return (diff * background).sum(dim=(1, 2)) / background.sum(dim=(1, 2))


def tiny_config(**changes) -> DDPOConfig:
    base = {
        "epochs": 2,
        "requests_per_epoch": 2,
        "samples_per_request": 4,
        "sampler": SAMPLER,
        "optim": OptimConfig(samples_per_step=8, rows_per_forward=16, learning_rate=3e-3),
        "eval_every": 0,
        "checkpoint_every": 0,
        "overlap_scoring": False,
    }
    return DDPOConfig(**{**base, **changes})


def snapshot(policy: InpaintPolicy) -> dict[str, torch.Tensor]:
    modules = {"unet": policy.unet, "vae": policy.vae, "text": policy.text_encoder}
    return {f"{m}.{n}": p.detach().clone() for m, module in modules.items() for n, p in module.named_parameters()}


def test_ratio_is_one_and_kl_zero_before_the_first_update() -> None:
    policy = tiny_policy()
    trainer = DDPOTrainer(policy, red_background, tiny_requests(4), tiny_config(), seed=0)
    metrics = trainer.run_epoch()
    # One optimiser step over all 8 samples: every row is scored by the sampling policy (B = 0: the base).
    assert metrics["policy/optimizer_steps"] == 1.0
    assert metrics["policy/ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["policy/clipfrac"] == 0.0
    assert metrics["policy/kl"] < 1e-12
    assert metrics["preservation/max_abs_diff"] == 0.0


def test_only_lora_parameters_change_and_all_of_them_do() -> None:
    policy = tiny_policy()
    before = snapshot(policy)
    trainer = DDPOTrainer(
        policy, red_background, tiny_requests(4), tiny_config(optim=OptimConfig(samples_per_step=4)), seed=0
    )
    trainer.run_epoch()  # two optimiser steps: B moves in the first, A (whose gradient is B^T ...) in the second
    after = snapshot(policy)
    lora = [k for k in before if ".lora_" in k]
    base = [k for k in before if ".lora_" not in k]
    assert len(lora) == len(trainer.params) > 0
    assert all(not torch.equal(before[k], after[k]) for k in lora), [
        k for k in lora if torch.equal(before[k], after[k])
    ]
    assert all(torch.equal(before[k], after[k]) for k in base)


def test_an_update_moves_probability_towards_positive_advantages() -> None:
    """After one step, sum_i A_i (log pi_new(tau_i) - log pi_old(tau_i)) > 0 on the epoch's own chains."""
    policy = tiny_policy()
    config = tiny_config(epochs=1, optim=OptimConfig(samples_per_step=8, learning_rate=1e-2), kl=KLConfig(coef=0.0))
    trainer = DDPOTrainer(policy, red_background, tiny_requests(4), config, seed=0)
    # The epoch's samples are a function of (seed, epoch): sample them here first, as the trainer will.
    requests, seeds = trainer._epoch_requests(0)
    trajectory = sample_trajectories(policy, requests, seeds, config.sampler)
    rewards = red_background(trajectory.images, requests)
    advantages = RequestStatTracker(buffer_size=32, min_count=4).update([r.request_id for r in requests], rewards)
    rows = StepRows.every(8, SAMPLER.num_steps)

    def chain_log_prob() -> torch.Tensor:
        policy.scheduler.set_timesteps(SAMPLER.num_steps)
        with torch.no_grad():
            return replay_rows(policy, trajectory.trajectory, rows).log_prob.reshape(SAMPLER.num_steps, 8).sum(0)

    before = chain_log_prob()
    torch.testing.assert_close(before, trajectory.trajectory.log_probs.sum(1), rtol=0, atol=1e-5)
    metrics = trainer.run_epoch()
    assert metrics["reward/mean"] == pytest.approx(float(rewards.mean()), abs=1e-6)  # the same samples
    change = chain_log_prob() - before
    assert float((advantages.advantages * change).sum()) > 0
    assert torch.corrcoef(torch.stack([advantages.advantages, change]))[0, 1] > 0.5


def rounded_sampler(monkeypatch: pytest.MonkeyPatch, scale: float) -> None:
    """Make the recorded log-probs differ from the trainer's by noise of ``scale`` (what bf16 rounding does at
    SD scale, where the sampler's and the trainer's UNet calls use different kernels)."""
    real = trainer_module.sample_trajectories

    def rounded(*args, **kwargs) -> Rollout:
        rollout = real(*args, **kwargs)
        log_probs = rollout.trajectory.log_probs
        noise = scale * torch.randn(log_probs.shape, generator=torch.Generator().manual_seed(5))
        trajectory = dataclasses.replace(rollout.trajectory, log_probs=log_probs + noise.to(log_probs.device))
        return dataclasses.replace(rollout, trajectory=trajectory)

    monkeypatch.setattr(trainer_module, "sample_trajectories", rounded)


def test_replayed_old_log_probs_keep_the_ratio_one_whatever_the_sampler_recorded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rounded_sampler(monkeypatch, scale=1e-3)  # 10x the clip range
    results = {}
    for mode in ("sampler", "replay"):
        policy = tiny_policy()
        optim = OptimConfig(samples_per_step=8, rows_per_forward=16, learning_rate=3e-3, old_log_probs=mode)
        trainer = DDPOTrainer(policy, red_background, tiny_requests(4), tiny_config(optim=optim), seed=0)
        metrics = trainer.run_epoch()
        results[mode] = (metrics, {n: p.detach().clone() for n, p in zip(range(len(trainer.params)), trainer.params)})
    sampler, replay = results["sampler"][0], results["replay"][0]
    # The recorded log-probs are off by ~1e-3: with them most rows sit outside clip 1e-4 and lose their gradient.
    assert sampler["policy/clipfrac"] > 0.5
    assert replay["policy/clipfrac"] == 0.0 and replay["policy/ratio_mean"] == 1.0
    assert replay["policy/log_prob_gap"] == pytest.approx(sampler["policy/log_prob_gap"], rel=1e-6)
    assert 5e-4 < replay["policy/log_prob_gap"] < 2e-3  # E|N(0, 1e-3)| = 8e-4
    moved = [float((p - q).abs().max()) for p, q in zip(results["sampler"][1].values(), results["replay"][1].values())]
    assert max(moved) > 0  # the clipped rows changed the sampler-mode update


def test_replayed_old_log_probs_are_the_sampler_update_in_exact_arithmetic() -> None:
    gradients = []
    for mode in ("sampler", "replay"):
        policy = tiny_policy()
        optim = OptimConfig(samples_per_step=8, rows_per_forward=16, learning_rate=3e-3, old_log_probs=mode)
        trainer = DDPOTrainer(policy, red_background, tiny_requests(4), tiny_config(optim=optim), seed=0)
        step = trainer.optimizer.step
        seen: list[torch.Tensor] = []

        def recording_step(*args, _step=step, _seen=seen, _params=trainer.params, **kwargs):
            _seen.extend(p.grad.detach().clone() for p in _params)
            return _step(*args, **kwargs)

        trainer.optimizer.step = recording_step
        metrics = trainer.run_epoch()
        assert metrics["policy/log_prob_gap"] < 1e-6  # float32 on a CPU: the sampler's and trainer's values agree
        gradients.append(seen)
    # The same gradient (the ratios differ from 1 by ~1e-7 in sampler mode), compared before Adam, whose first
    # step would amplify rounding wherever a gradient is near its eps.
    scale = max(float(g.abs().max()) for g in gradients[0])
    for sampler, replay in zip(*gradients):
        torch.testing.assert_close(replay, sampler, rtol=1e-4, atol=1e-5 * scale)


def test_a_changed_product_pixel_stops_training(monkeypatch: pytest.MonkeyPatch) -> None:
    real = trainer_module.sample_trajectories

    def leaky(*args, **kwargs) -> Rollout:
        rollout = real(*args, **kwargs)
        report = PreservationReport(
            samples=rollout.preservation.samples, mask_pixels=rollout.preservation.mask_pixels, max_abs_diff=7,
            differing_pixels=1, violating_samples=(2,),
        )  # fmt: skip
        return Rollout(
            images=rollout.images, trajectory=rollout.trajectory, preservation=report, requests=rollout.requests
        )

    monkeypatch.setattr(trainer_module, "sample_trajectories", leaky)
    trainer = DDPOTrainer(tiny_policy(), red_background, tiny_requests(4), tiny_config(), seed=0)
    with pytest.raises(PreservationError, match=r"epoch 1, samples 0\.\.3: product pixels changed: .*max \|diff\| 7"):
        trainer.run_epoch()


def test_kl_budget_adapts_the_coefficient() -> None:
    policy = tiny_policy()
    config = tiny_config(
        epochs=3, kl=KLConfig(coef=0.5, target=1e-9, horizon=1.0), optim=OptimConfig(samples_per_step=4)
    )
    history = DDPOTrainer(policy, red_background, tiny_requests(4), config, seed=0).train()
    coefs = [h["policy/kl_coef"] for h in history]
    # Epoch 1 measures KL over two steps (> the tiny target from the second on): the coefficient grows 20 % a time.
    assert coefs[0] == 0.5
    assert coefs[1] == pytest.approx(0.6) and coefs[2] == pytest.approx(0.72)


def test_pessimism_and_certainty_weights_reach_the_metrics() -> None:
    class Scorer:
        def __call__(self, images: torch.Tensor, requests: Sequence[InpaintRequest]):
            reward = red_background(images, requests)
            return type("Out", (), {"reward": reward, "uncertainty": torch.full_like(reward, 0.5), "heads": {}})()

    config = tiny_config(epochs=1, reward=RewardSignalConfig(pessimism=2.0, certainty_weighting=True))
    metrics = DDPOTrainer(tiny_policy(), Scorer(), tiny_requests(4), config, seed=0).run_epoch()
    assert metrics["reward/uncertainty_mean"] == 0.5
    assert metrics["reward/pessimistic_mean"] == pytest.approx(metrics["reward/mean"] - 1.0, abs=1e-6)


def test_overlapped_scoring_gives_the_same_epoch() -> None:
    results = []
    for overlap in (False, True):
        policy = tiny_policy()
        config = tiny_config(
            overlap_scoring=overlap, sampler=SamplerConfig(num_steps=4, guidance_scale=3.0, batch_size=2)
        )
        results.append(DDPOTrainer(policy, red_background, tiny_requests(4), config, seed=3).run_epoch())
    keys = [k for k in results[0] if not k.startswith("time/")]
    assert {k: results[0][k] for k in keys} == {k: results[1][k] for k in keys}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"requests_per_epoch": 8, "samples_per_request": 1}, "training pool has 4 request"),
    ],
)
def test_trainer_refuses_bad_setups(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DDPOTrainer(tiny_policy(), red_background, tiny_requests(4), tiny_config(**changes), seed=0)


def test_trainer_needs_an_adapter_and_unique_request_ids() -> None:
    plain = InpaintPolicy.from_config(TINY, vocabulary=["oak"])
    with pytest.raises(ValueError, match="no LoRA adapter"):
        DDPOTrainer(plain, red_background, tiny_requests(4), tiny_config(), seed=0)
    twice = tiny_requests(2) * 2
    with pytest.raises(ValueError, match="request ids must be unique"):
        DDPOTrainer(tiny_policy(), red_background, twice, tiny_config(), seed=0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"requests_per_epoch": 3, "samples_per_request": 3}, "must divide the samples per epoch"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"cpu_budget_minutes": 0.0}, "cpu_budget_minutes must be > 0"),
        (
            {"optim": OptimConfig(samples_per_step=4, old_log_probs="replay")},
            r"old_log_probs = 'replay' needs one optimiser step per epoch .* samples_per_step = 4",
        ),
        (
            {"optim": OptimConfig(samples_per_step=8, inner_epochs=2, old_log_probs="replay")},
            "got inner_epochs = 2",
        ),
    ],
)
def test_config_refuses_inconsistent_sizes(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_config(**changes)


def test_training_writes_adapter_plot_and_checkpoint(tmp_path: Path) -> None:
    evaluator = PolicyEvaluator(
        tiny_requests(2, offset=50), reward_fn=red_background, gold_fn=red_background, sampler=SAMPLER,
        config=EvaluationConfig(seeds_per_request=2),
    )  # fmt: skip
    logged: list[tuple[int, dict]] = []
    config = tiny_config(epochs=2, eval_every=1)
    trainer = DDPOTrainer(
        tiny_policy(), red_background, tiny_requests(4), config, seed=0, evaluator=evaluator,
        log_metrics=lambda metrics, step: logged.append((step, dict(metrics))), output_dir=tmp_path,
    )  # fmt: skip
    trainer.train()
    assert [step for step, _ in logged] == [0, 1, 2]
    assert all("gold/gain_sd" in m and "eval/kl_nats" in m for _, m in logged)
    assert (tmp_path / "adapter" / "pytorch_lora_weights.safetensors").is_file()
    assert (tmp_path / "overoptimisation.png").stat().st_size > 1000
    assert (tmp_path / "checkpoints" / "latest.json").is_file()


def test_each_evaluation_logs_a_before_after_contact_sheet() -> None:
    evaluator = PolicyEvaluator(
        tiny_requests(3, offset=50), reward_fn=red_background, gold_fn=None, sampler=SAMPLER,
        config=EvaluationConfig(seeds_per_request=2),
    )  # fmt: skip
    images: list[tuple[str, np.ndarray, int]] = []
    trainer = DDPOTrainer(
        tiny_policy(), red_background, tiny_requests(4), tiny_config(epochs=2, eval_every=1), seed=0,
        evaluator=evaluator, log_image=lambda tag, image, step: images.append((tag, image, step)),
    )  # fmt: skip
    trainer.train()
    assert [(tag, step) for tag, _, step in images] == [("eval/before_after", 0), ("eval/before_after", 1),
                                                        ("eval/before_after", 2)]  # fmt: skip
    sheet = images[-1][1]
    assert sheet.dtype == np.uint8 and sheet.ndim == 3 and sheet.shape[2] == 3
    # Three requests (rows) of two cells (base, policy): taller than three images, wider than two.
    side = tiny_requests(1)[0].size[1] * 2
    assert sheet.shape[0] > 3 * side and sheet.shape[1] > 2 * side
    policy_only = PolicyEvaluator(tiny_requests(1, offset=50), reward_fn=red_background, gold_fn=None, sampler=SAMPLER)
    assert policy_only.before_after_sheet() is None  # no evaluation yet
