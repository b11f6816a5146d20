"""Heads: examination scale, IPS with known θ, position checks, dwell censoring recovers the true slope."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from offline_data.simulator.users import calibrate_session_scale, sample_dwell
from reward.config import ClickConfig, DwellConfig, PreferenceConfig
from reward.heads import ClickHead, DwellHead, PreferenceHead


def test_examination_is_one_in_slot_one_and_learned_elsewhere():
    head = ClickHead(4, 3, ClickConfig(mode="pbm"))
    theta = head.examination()
    assert theta[0].item() == 1.0
    assert torch.all((theta[1:] > 0) & (theta[1:] < 1))
    assert head.examination_logits.requires_grad


def test_ips_uses_the_known_examination_and_none_ignores_slots():
    ips = ClickHead(4, 3, ClickConfig(mode="ips", examination=(1.0, 0.5, 0.25)))
    assert ips.examination().tolist() == pytest.approx([1.0, 0.5, 0.25])
    assert not ips.examination_logits.requires_grad
    none = ClickHead(4, 3, ClickConfig(mode="none"))
    assert none.examination().tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="examination has 2 slot"):
        ClickHead(4, 3, ClickConfig(mode="ips", examination=(1.0, 0.5)))


def test_positions_outside_the_model_are_refused():
    head = ClickHead(2, 2, ClickConfig())
    with pytest.raises(ValueError, match=r"positions must be in 1\.\.2, got 1\.\.3"):
        head.nll(torch.zeros(2), torch.tensor([1, 3]), torch.tensor([True, False]))


def test_annotator_log_odds_and_prior():
    head = PreferenceHead(2, ("ann1", "ann2"), PreferenceConfig())
    with torch.no_grad():
        head.log_temperature[1] = np.log(2.0)
        head.side_bias[2] = 0.3
    d = head.log_odds(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0.0, 0.0, 0.0]), torch.tensor([0, 1, 2]))
    assert d.tolist() == pytest.approx([1.0, 0.5, 1.3], rel=1e-6)
    assert head.prior_penalty().item() == pytest.approx(0.5 * (np.log(2.0) ** 2 + 0.09) / 0.25, rel=1e-5)


def _fit_dwell_slope(gold: np.ndarray, dwell: np.ndarray, censored: np.ndarray, censoring: str) -> float:
    head = DwellHead(1, DwellConfig(censoring=censoring))
    features = torch.tensor(gold, dtype=torch.float32)[:, None]
    dwell_t, censored_t = torch.tensor(dwell), torch.tensor(censored)
    optimizer = torch.optim.LBFGS(head.parameters(), lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = head.nll(head(features), dwell_t, censored_t).mean()
        loss.backward()
        return loss

    for _ in range(3):
        optimizer.step(closure)
    return float(head.score.weight.item())


def test_censored_likelihood_recovers_the_dwell_gold_slope_where_the_naive_fit_is_biased():
    rng = np.random.default_rng(0)
    gold = rng.standard_normal(8000)
    params = {"log_mean": 9.6, "gold_slope": 0.35, "log_sd": 0.6}
    scale = calibrate_session_scale(gold, 0.6, **params)  # heavily censored logs: 60 % of dwell rows cut short
    dwell, censored, _, _ = sample_dwell(gold, rng, session_scale_ms=scale, **params)
    assert 0.55 < censored.mean() < 0.65
    corrected = _fit_dwell_slope(gold, dwell, censored, "likelihood")
    naive = _fit_dwell_slope(gold, dwell, censored, "ignore")
    assert corrected == pytest.approx(0.35, abs=0.03)
    assert naive < 0.35 - 0.1  # long dwells of good images are cut short, flattening the naive slope
