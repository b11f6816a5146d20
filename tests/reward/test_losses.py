"""Losses checked by hand on small tensors and against scipy's distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from reward.losses import (
    CHOICE_A,
    CHOICE_B,
    CHOICE_TIE,
    davidson_log_probs,
    ips_click_nll,
    log1mexp,
    lognormal_dwell_nll,
    naive_click_nll,
    pbm_click_nll,
    preference_nll,
    rao_kupper_log_probs,
    weibull_dwell_nll,
    weibull_mean_log,
)


def test_bradley_terry_at_equal_scores_is_log_2():
    loss = preference_nll(torch.zeros(3), torch.tensor([CHOICE_A, CHOICE_B, CHOICE_A]), ties="none")
    assert torch.allclose(loss, torch.full((3,), math.log(2.0)))


def test_bradley_terry_by_hand():
    # d = 1: P(a) = σ(1) = 0.7310586; a choice of b costs −log(1 − σ(1)) = log(1 + e).
    loss = preference_nll(torch.tensor([1.0, 1.0]), torch.tensor([CHOICE_A, CHOICE_B]), ties="none")
    assert loss[0].item() == pytest.approx(-math.log(1 / (1 + math.exp(-1))), rel=1e-6)
    assert loss[1].item() == pytest.approx(math.log(1 + math.e), rel=1e-6)


def test_bradley_terry_refuses_ties():
    with pytest.raises(ValueError, match="ties='none' cannot score tie"):
        preference_nll(torch.zeros(2), torch.tensor([CHOICE_A, CHOICE_TIE]), ties="none")


def test_davidson_tie_probability_by_hand():
    nu = 0.5
    log_a, log_b, log_t = davidson_log_probs(torch.tensor([0.0, 2.0]), torch.tensor(math.log(nu)))
    # d = 0: P(tie) = ν / (2 + ν) = 0.2, P(a) = P(b) = 1 / (2 + ν) = 0.4.
    assert log_t[0].exp().item() == pytest.approx(0.2, rel=1e-6)
    assert log_a[0].exp().item() == pytest.approx(0.4, rel=1e-6)
    # d = 2: x = e, P(a) = e / (e + 1/e + ν).
    total = math.e + 1 / math.e + nu
    assert log_a[1].exp().item() == pytest.approx(math.e / total, rel=1e-6)
    assert log_b[1].exp().item() == pytest.approx((1 / math.e) / total, rel=1e-6)
    assert (log_a.exp() + log_b.exp() + log_t.exp()).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    loss = preference_nll(
        torch.tensor([0.0]), torch.tensor([CHOICE_TIE]), ties="davidson", log_tie=torch.tensor(math.log(nu))
    )
    assert loss.item() == pytest.approx(-math.log(0.2), rel=1e-6)


def test_rao_kupper_by_hand():
    eta = 0.4
    d = torch.tensor([0.0, 1.5, -3.0])
    log_a, log_b, log_t = rao_kupper_log_probs(d, torch.tensor(math.log(eta)))
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    for i, value in enumerate(d.tolist()):
        assert log_a[i].exp().item() == pytest.approx(sig(value - eta), rel=1e-5)
        assert log_b[i].exp().item() == pytest.approx(sig(-value - eta), rel=1e-5)
        assert log_t[i].exp().item() == pytest.approx(sig(value + eta) - sig(value - eta), rel=1e-4)
    assert (log_a.exp() + log_b.exp() + log_t.exp()).tolist() == pytest.approx([1.0] * 3, abs=1e-6)


def test_censored_lognormal_is_log_survival_and_observed_is_log_density():
    mu, sigma = torch.tensor([9.0, 9.5, 10.0]), 0.7
    t = torch.tensor([5000, 20000, 1000])
    observed = lognormal_dwell_nll(mu, torch.tensor(math.log(sigma)), t, torch.zeros(3, dtype=torch.bool))
    censored = lognormal_dwell_nll(mu, torch.tensor(math.log(sigma)), t, torch.ones(3, dtype=torch.bool))
    for i in range(3):
        dist = stats.lognorm(s=sigma, scale=math.exp(mu[i].item()))
        assert observed[i].item() == pytest.approx(-dist.logpdf(t[i].item()), rel=1e-5)
        assert censored[i].item() == pytest.approx(-dist.logsf(t[i].item()), rel=1e-5)


def test_censored_weibull_matches_scipy():
    log_scale, shape = torch.tensor([9.0, 10.0]), 1.7
    t = torch.tensor([4000, 30000])
    observed = weibull_dwell_nll(log_scale, torch.tensor(math.log(shape)), t, torch.zeros(2, dtype=torch.bool))
    censored = weibull_dwell_nll(log_scale, torch.tensor(math.log(shape)), t, torch.ones(2, dtype=torch.bool))
    for i in range(2):
        dist = stats.weibull_min(c=shape, scale=math.exp(log_scale[i].item()))
        assert observed[i].item() == pytest.approx(-dist.logpdf(t[i].item()), rel=1e-5)
        assert censored[i].item() == pytest.approx(-dist.logsf(t[i].item()), rel=1e-5)
    # E[log T] = log λ − γ / k.
    samples = stats.weibull_min(c=shape, scale=math.exp(9.0)).rvs(200_000, random_state=np.random.default_rng(0))
    expected = weibull_mean_log(torch.tensor(9.0), torch.tensor(math.log(shape))).item()
    assert np.log(samples).mean() == pytest.approx(expected, abs=0.01)


def test_pbm_click_nll_by_hand():
    # θ = 0.5, σ(f) = 0.8 -> P(click) = 0.4.
    f = torch.tensor([math.log(4.0), math.log(4.0)])
    loss = pbm_click_nll(f, torch.tensor([math.log(0.5)] * 2), torch.tensor([True, False]))
    assert loss.tolist() == pytest.approx([-math.log(0.4), -math.log(0.6)], rel=1e-6)


def test_ips_weights_by_hand():
    f = torch.tensor([0.0, 0.0, 0.0])
    theta = torch.tensor([1.0, 0.5, 0.25])
    clicked = torch.tensor([True, True, False])
    loss = ips_click_nll(f, theta, clicked, max_weight=3.0)
    # w = c / θ: 1, 2 (and 0 for the unclicked row); at σ(f) = ½ every term is log 2 with weights w and 1 − w.
    log2 = math.log(2.0)
    assert loss.tolist() == pytest.approx([1 * log2 + 0 * log2, 2 * log2 + (1 - 2) * log2, log2], rel=1e-6)
    clipped = ips_click_nll(torch.tensor([1.0]), torch.tensor([0.1]), torch.tensor([True]), max_weight=3.0)
    w = 3.0  # 1 / 0.1 = 10, clipped to 3
    by_hand = -(w * math.log(1 / (1 + math.exp(-1))) + (1 - w) * math.log(1 / (1 + math.e)))
    assert clipped.item() == pytest.approx(by_hand, rel=1e-6)


def test_naive_click_nll_is_binary_cross_entropy():
    loss = naive_click_nll(torch.tensor([0.0, 2.0]), torch.tensor([False, True]))
    assert loss.tolist() == pytest.approx([math.log(2.0), math.log(1 + math.exp(-2))], rel=1e-6)


def test_log1mexp_is_accurate_at_both_ends():
    x = torch.tensor([-1e-6, -0.5, -30.0], dtype=torch.float64)
    expected = [math.log(-math.expm1(v)) for v in x.tolist()]
    assert log1mexp(x).tolist() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: pbm_click_nll(torch.zeros(2), torch.zeros(3), torch.zeros(2)), "one shape"),
        (
            lambda: ips_click_nll(torch.zeros(1), torch.ones(1), torch.ones(1), max_weight=0.5),
            "max_weight must be >= 1",
        ),
        (lambda: preference_nll(torch.zeros(1), torch.zeros(1, dtype=torch.long), ties="davidson"), "needs log_tie"),
        (
            lambda: preference_nll(
                torch.zeros(1), torch.zeros(1, dtype=torch.long), ties="x", log_tie=torch.zeros(())
            ),
            "ties must be",
        ),
    ],
)
def test_bad_inputs(call, message):
    with pytest.raises(ValueError, match=message):
        call()
