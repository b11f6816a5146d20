"""Per-request advantages, certainty weights and the KL controller, checked by hand."""

from __future__ import annotations

import json

import pytest
import torch

from policy.advantages import RequestStatTracker, certainty_weights, clip_advantages
from policy.kl_control import KLController


def test_advantages_are_normalised_per_request() -> None:
    tracker = RequestStatTracker(buffer_size=8, min_count=2)
    out = tracker.update(["a", "b", "a", "b"], torch.tensor([1.0, 2.0, 3.0, 6.0]))
    # a: mean 2, population std 1 -> -1, +1; b: mean 4, std 2 -> -1, +1 (eps 1e-6 aside).
    torch.testing.assert_close(out.advantages, torch.tensor([-1.0, -1.0, 1.0, 1.0]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.means, torch.tensor([2.0, 4.0, 2.0, 4.0]))
    assert out.fallback_keys == ()


def test_a_request_with_too_few_rewards_uses_the_batch_statistics() -> None:
    tracker = RequestStatTracker(buffer_size=8, min_count=3)
    out = tracker.update(["a", "a", "b"], torch.tensor([0.0, 2.0, 4.0]))
    # batch mean 2, population std sqrt(8/3)
    std = (8 / 3) ** 0.5
    torch.testing.assert_close(out.advantages, torch.tensor([-2 / std, 0.0, 2 / std]), rtol=1e-5, atol=1e-6)
    assert sorted(out.fallback_keys) == ["a", "b"]


def test_the_buffer_persists_across_epochs_and_drops_the_oldest() -> None:
    tracker = RequestStatTracker(buffer_size=3, min_count=2)
    tracker.update(["a", "a"], torch.tensor([0.0, 10.0]))
    out = tracker.update(["a", "a"], torch.tensor([4.0, 6.0]))
    # buffer keeps the last 3 rewards: 10, 4, 6 -> mean 6.6667, std sqrt(((10-6.667)^2 + (4-6.667)^2 + 0.444) / 3)
    values = torch.tensor([10.0, 4.0, 6.0], dtype=torch.float64)
    mean, std = values.mean(), values.std(unbiased=False)
    expected = ((torch.tensor([4.0, 6.0], dtype=torch.float64) - mean) / (std + 1e-6)).float()
    torch.testing.assert_close(out.advantages, expected)
    assert tracker.state_dict()["buffers"]["a"] == [10.0, 4.0, 6.0]


def test_state_round_trips_through_json_and_continues_identically() -> None:
    first, second = RequestStatTracker(buffer_size=4, min_count=2), RequestStatTracker(buffer_size=4, min_count=2)
    rewards = torch.tensor([0.1, -0.4, 2.0, 0.7])
    first.update(["x", "y", "x", "y"], rewards)
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    batch = (["x", "y", "z", "x"], torch.tensor([0.3, 0.2, -1.0, 0.5]))
    assert torch.equal(first.update(*batch).advantages, second.update(*batch).advantages)
    assert len(second) == 3


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"format": "other"}, "not a stat tracker state"),
        (
            {"format": "backdrop.request_stat_tracker", "buffer_size": 5, "min_count": 2, "eps": 1e-6},
            "settings differ",
        ),
        (
            {
                "format": "backdrop.request_stat_tracker",
                "buffer_size": 4,
                "min_count": 2,
                "eps": 1e-6,
                "buffers": {"a": [1.0] * 5},
            },
            "at most 4 floats",
        ),
    ],
)
def test_stat_tracker_refuses_foreign_states(state: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RequestStatTracker(buffer_size=4, min_count=2).load_state_dict(state)


@pytest.mark.parametrize(
    ("keys", "rewards", "message"),
    [
        (["a"], torch.tensor([1.0, 2.0]), "got 1 keys"),
        (["a", "b"], torch.tensor([1.0, float("nan")]), "finite"),
    ],
)
def test_stat_tracker_refuses_bad_batches(keys: list[str], rewards: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RequestStatTracker().update(keys, rewards)


def test_clip_and_certainty_weights() -> None:
    torch.testing.assert_close(clip_advantages(torch.tensor([-7.0, 0.5, 9.0]), 5.0), torch.tensor([-5.0, 0.5, 5.0]))
    # u = 0 -> 1, u = scale -> 1/2; renormalised to mean 1: 4/3 and 2/3.
    weights = certainty_weights(torch.tensor([0.0, 0.25]), scale=0.25)
    torch.testing.assert_close(weights, torch.tensor([4 / 3, 2 / 3]))
    with pytest.raises(ValueError, match="finite and >= 0"):
        certainty_weights(torch.tensor([-0.1]), scale=1.0)


def test_kl_controller_fixed_and_adaptive() -> None:
    fixed = KLController(0.01)
    assert fixed.update(5.0) == 0.01 and not fixed.adaptive
    adaptive = KLController(0.01, target=0.1, horizon=10)
    # KL 3x the target: error clipped to +0.2 -> beta * (1 + 0.2 / 10)
    assert adaptive.update(0.3) == pytest.approx(0.01 * 1.02)
    # KL at 95 % of the target: error -0.05 -> beta * (1 - 0.005)
    assert adaptive.update(0.095) == pytest.approx(0.01 * 1.02 * 0.995)
    assert adaptive.update(float("nan")) == pytest.approx(0.01 * 1.02 * 0.995)
    restored = KLController(0.5, target=0.1, horizon=10)
    restored.load_state_dict(json.loads(json.dumps(adaptive.state_dict())))
    assert restored.value == adaptive.value
    with pytest.raises(ValueError, match="settings differ"):
        KLController(0.5, target=0.2, horizon=10).load_state_dict(adaptive.state_dict())
    with pytest.raises(ValueError, match="initial kl_coef > 0"):
        KLController(0.0, target=0.1)
