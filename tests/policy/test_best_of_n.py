"""Group recipes: best-of-n distillation (``advantages.kind = "best_of_n"``) and a shared x_T per request."""

from __future__ import annotations

import pytest
import torch

from policy.advantages import best_of_n_advantages
from policy.replay import StepRows, replay_rows
from policy.trainer import DDPOTrainer
from policy.trainer_config import AdvantageConfig, KLConfig, OptimConfig
from rollout.sampler import sample_trajectories
from tests.policy.test_trainer import SAMPLER, red_background, tiny_config, tiny_policy, tiny_requests


@pytest.mark.parametrize(
    ("keys", "rewards", "top_k", "expected"),
    [
        (["a", "a", "a", "b", "b", "b"], [0.1, 0.5, 0.3, -2.0, -1.0, -3.0], 1, [0, 1, 0, 0, 1, 0]),
        (["a", "b", "a", "b", "a", "b"], [0.1, 0.5, 0.3, -2.0, -1.0, -3.0], 2, [1, 1, 1, 1, 0, 0]),
        (["a", "a", "a"], [0.2, 0.2, 0.1], 1, [1, 0, 0]),  # a tie goes to the first sample
    ],
)
def test_the_best_samples_of_each_request_win(keys: list, rewards: list, top_k: int, expected: list) -> None:
    winners = best_of_n_advantages(keys, torch.tensor(rewards), top_k)
    assert winners.tolist() == [float(v) for v in expected]
    assert winners.dtype == torch.float32


@pytest.mark.parametrize(
    ("keys", "rewards", "top_k", "message"),
    [
        (["a", "a"], [0.0, 1.0], 2, "request 'a' has 2 samples .* top_k = 2 needs at least top_k \\+ 1"),
        (["a", "a"], [0.0, float("nan")], 1, "rewards must be finite"),
        (["a"], [0.0, 1.0], 1, "got 1 keys for rewards of shape \\[2\\]"),
        (["a", "a"], [0.0, 1.0], 0, "top_k must be >= 1"),
    ],
)
def test_bad_groups_are_refused(keys: list, rewards: list, top_k: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        best_of_n_advantages(keys, torch.tensor(rewards), top_k)


def test_the_update_is_maximum_likelihood_of_the_winners_chains() -> None:
    """With kl_coef 0 and no clipping, the epoch's one gradient is -(1 / winner rows) sum grad log pi over the
    winners' (sample, step) rows: the losers' rows are neither replayed nor counted."""
    policy = tiny_policy()
    config = tiny_config(
        epochs=1,
        optim=OptimConfig(samples_per_step=8, max_grad_norm=0.0),
        kl=KLConfig(coef=0.0),
        advantages=AdvantageConfig(kind="best_of_n", top_k=1),
    )
    trainer = DDPOTrainer(policy, red_background, tiny_requests(4), config, seed=0)
    requests, seeds = trainer._epoch_requests(0)
    rollout = sample_trajectories(policy, requests, seeds, config.sampler)
    winners = best_of_n_advantages([r.request_id for r in requests], red_background(rollout.images, requests), 1)
    assert int(winners.sum()) == config.requests_per_epoch
    won = torch.nonzero(winners)[:, 0]
    steps = SAMPLER.num_steps
    rows = StepRows(sample=won.repeat_interleave(steps), step=torch.arange(steps).repeat(len(won)))
    policy.scheduler.set_timesteps(steps)
    loss = -replay_rows(policy, rollout.trajectory, rows).log_prob.sum() / len(rows)
    expected = torch.autograd.grad(loss, trainer.params)

    seen: list[torch.Tensor] = []
    step = trainer.optimizer.step

    def record(*args, **kwargs):
        seen.extend(p.grad.detach().clone() for p in trainer.params)
        return step(*args, **kwargs)

    trainer.optimizer.step = record
    metrics = trainer.run_epoch()
    assert metrics["policy/optimizer_steps"] == 1.0
    assert metrics["advantages/abs_mean"] > 0  # the stat tracker still reports the normalised view
    for got, want in zip(seen, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_shared_start_noise_gives_each_request_one_x_T() -> None:
    config = tiny_config(epochs=1, shared_start_noise=True)
    trainer = DDPOTrainer(tiny_policy(), red_background, tiny_requests(4), config, seed=0)
    requests, seeds = trainer._epoch_requests(0)
    trajectory, _ = trainer._sample_and_score(requests, seeds)
    start = trajectory.latents[:, 0]
    for i in range(len(requests)):
        first = next(j for j, r in enumerate(requests) if r.request_id == requests[i].request_id)
        assert torch.equal(start[i], start[first])
        assert (i == first) or not torch.equal(trajectory.latents[i, -1], trajectory.latents[first, -1])
    assert not torch.equal(start[0], start[config.samples_per_request])  # another request, another x_T
    assert trainer.run_epoch()["policy/optimizer_steps"] == 1.0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"advantages": AdvantageConfig(kind="best_of_n", top_k=4)}, r"top_k \(4\) < samples_per_request \(4\)"),
        (
            {
                "advantages": AdvantageConfig(kind="best_of_n"),
                "optim": OptimConfig(samples_per_step=8, gradient="during_sampling"),
            },
            "cannot train advantages.kind = 'best_of_n'",
        ),
    ],
)
def test_inconsistent_best_of_n_settings_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_config(**changes)


@pytest.mark.parametrize(
    ("changes", "message"), [({"top_k": 0}, "top_k must be >= 1"), ({"kind": "rank"}, "kind must be 'normalised'")]
)
def test_bad_advantage_settings_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AdvantageConfig(**changes)
