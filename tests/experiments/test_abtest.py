"""A/B sample sizes: hand-computed values, power/MDE consistency, a Monte Carlo power check, bad inputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from experiments.config import ConfigError, from_dict
from experiments.ope.abtest import (
    ABTestConfig,
    mean_mde,
    mean_power,
    mean_sample_size,
    proportion_mde,
    proportion_power,
    proportion_sample_size,
)

# Standard normal quantiles, from tables: z_0.975, z_0.95, z_0.8.
Z975, Z95, Z80 = 1.959963984540054, 1.6448536269514722, 0.8416212335729143


def test_two_proportions_by_hand() -> None:
    # p1 = 0.10, p2 = 0.12, pooled p̄ = 0.11: n1 = [z975 sqrt(2 p̄ q̄) + z80 sqrt(p1 q1 + p2 q2)]² / 0.02²
    by_hand = (Z975 * math.sqrt(2 * 0.11 * 0.89) + Z80 * math.sqrt(0.10 * 0.90 + 0.12 * 0.88)) ** 2 / 0.02**2
    assert 3840 < by_hand < 3841  # 3840.85: the arithmetic above, done once on paper
    size = proportion_sample_size(0.10, 0.02)
    assert (size.n_control, size.n_treatment, size.n_total) == (3841, 3841, 7682)
    assert size.effect == pytest.approx(0.02) and size.relative_effect == pytest.approx(0.2)
    # The same test stated as a relative lift.
    assert proportion_sample_size(0.10, 0.20, relative=True).n_control == 3841
    # A decrease of the same size needs a different n (the variance at 0.08 is smaller than at 0.12).
    down = (Z975 * math.sqrt(2 * 0.09 * 0.91) + Z80 * math.sqrt(0.10 * 0.90 + 0.08 * 0.92)) ** 2 / 0.02**2
    assert proportion_sample_size(0.10, -0.02).n_control == math.ceil(down)


def test_two_proportions_unequal_allocation_by_hand() -> None:
    # κ = 3: p̄ = (0.1 + 3 * 0.12) / 4 = 0.115; n1 = [z sqrt(p̄ q̄ (1 + 1/3)) + z80 sqrt(p1 q1 + p2 q2 / 3)]² / δ²
    n1 = (Z975 * math.sqrt(0.115 * 0.885 * (4 / 3)) + Z80 * math.sqrt(0.09 + 0.1056 / 3)) ** 2 / 0.02**2
    size = proportion_sample_size(0.10, 0.02, design=ABTestConfig(ratio=3.0))
    assert size.n_control == math.ceil(n1) and size.n_treatment == math.ceil(3 * n1)


def test_means_by_hand() -> None:
    # Cohen's d = 0.5, two-sided 5 %, 80 %: n = 2 (z975 + z80)² / 0.25 = 62.79 -> 63 (the textbook 63-64).
    assert mean_sample_size(10.0, 2.0, 1.0).n_control == 63
    assert mean_sample_size(10.0, 2.0, 0.1, relative=True).n_control == 63
    one_sided = mean_sample_size(0.0, 1.0, 0.5, design=ABTestConfig(sided="one"))
    assert one_sided.n_control == math.ceil(2 * (Z95 + Z80) ** 2 / 0.25) == 50
    uneven = mean_sample_size(0.0, 1.0, 0.5, design=ABTestConfig(ratio=2.0))
    n1 = (Z975 + Z80) ** 2 * (1 + 1 / 2) / 0.25  # 47.09
    assert (uneven.n_control, uneven.n_treatment) == (48, 95) == (math.ceil(n1), math.ceil(2 * n1))
    unequal_var = mean_sample_size(0.0, 1.0, 0.5, std_treatment=2.0)
    assert unequal_var.n_control == math.ceil((Z975 + Z80) ** 2 * (1 + 4) / 0.25)


@pytest.mark.parametrize("design", [ABTestConfig(), ABTestConfig(sided="one", alpha=0.1, power=0.9, ratio=0.5)])
def test_sample_size_is_the_smallest_with_enough_power(design: ABTestConfig) -> None:
    size = proportion_sample_size(0.05, 0.01, design=design)
    kw = {"alpha": design.alpha, "sided": design.sided}
    assert proportion_power(0.05, 0.06, size.n_control, design.ratio * size.n_control, **kw) >= design.power - 1e-9
    short = size.n_control - 1
    assert proportion_power(0.05, 0.06, short, design.ratio * short, **kw) < design.power
    msize = mean_sample_size(1.0, 3.0, 0.2, design=design)
    assert mean_power(0.2, 3.0, msize.n_control, design.ratio * msize.n_control, **kw) >= design.power - 1e-9
    assert mean_power(0.2, 3.0, msize.n_control - 1, design.ratio * (msize.n_control - 1), **kw) < design.power


def test_minimum_detectable_effect_inverts_the_sample_size() -> None:
    n1_exact = 3840.847482436272  # test_two_proportions_by_hand
    mde = proportion_mde(0.10, 2 * n1_exact)
    assert mde.effect == pytest.approx(0.02, abs=1e-6) and mde.relative_effect == pytest.approx(0.2, abs=1e-5)
    down = proportion_mde(0.10, 2 * n1_exact, direction="decrease")
    assert -0.02 < down.effect < 0  # decreases are easier to detect from 0.10 (smaller variance)
    m = mean_mde(10.0, 2.0, 2 * 62.79103787479271)
    # statsmodels' solver counts the far rejection tail (about 1e-6 of power here) that the closed form drops.
    assert m.effect == pytest.approx(1.0, rel=1e-5) and m.relative_effect == pytest.approx(0.1, rel=1e-5)
    with pytest.raises(ValueError, match="cannot detect any increase"):
        proportion_mde(0.5, 4)


def test_proportion_power_matches_simulated_z_tests() -> None:
    # 20,000 simulated A/B tests at the computed size: the pooled z-test rejects in ~80 % of them when the lift
    # is real and in ~5 % when it is not.
    rng = np.random.default_rng(0)
    n = proportion_sample_size(0.10, 0.02).n_control
    for p2, target in ((0.12, 0.80), (0.10, 0.05)):
        x1 = rng.binomial(n, 0.10, size=20_000)
        x2 = rng.binomial(n, p2, size=20_000)
        pooled = (x1 + x2) / (2 * n)
        z = (x2 - x1) / n / np.sqrt(pooled * (1 - pooled) * 2 / n)
        rejected = np.mean(np.abs(z) > Z975)
        assert abs(rejected - target) < 0.012, (p2, rejected)


def test_results_serialise() -> None:
    payload = proportion_sample_size(0.1, 0.02).to_dict()
    assert json.loads(json.dumps(payload))["design"]["alpha"] == 0.05
    assert json.loads(json.dumps(proportion_mde(0.1, 1000).to_dict()))["metric"] == "proportion"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: proportion_sample_size(0.0, 0.01), "baseline must be a rate in (0, 1), got 0.0"),
        (lambda: proportion_sample_size(1.2, 0.01), "baseline must be a rate in (0, 1), got 1.2"),
        (lambda: proportion_sample_size(0.5, 0.0), "lift must be a finite non-zero number, got 0.0"),
        (lambda: proportion_sample_size(0.95, 0.1), "treatment rate (baseline + lift) must be a rate in (0, 1)"),
        (lambda: mean_sample_size(0.0, 1.0, 0.1, relative=True), "a relative lift needs a non-zero baseline"),
        (lambda: mean_sample_size(1.0, -1.0, 0.1), "standard deviations must be finite and > 0, got -1.0"),
        (lambda: mean_mde(1.0, 1.0, 0), "n_total must be > 0, got 0"),
    ],
)
def test_bad_inputs(call, message: str) -> None:
    with pytest.raises(ValueError) as info:
        call()
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"alpha": 1.5}, "alpha must be in (0, 1), got 1.5"),
        ({"power": 0}, "power must be in (0, 1), got 0"),
        ({"ratio": -1}, "ratio must be a finite number > 0, got -1"),
        ({"sided": "both"}, "expects one of 'two', 'one'"),
    ],
)
def test_config_errors(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(ABTestConfig, data, source="ab.toml")
    assert message in str(info.value)


@pytest.mark.parametrize("sided", ["two", "one"])
def test_statsmodels_power_matches_the_documented_closed_forms(sided: str) -> None:
    """The power functions call statsmodels; on a grid they equal the module docstring's formulas plus the far
    rejection tail of a two-sided test, which statsmodels counts."""
    from scipy.special import ndtr

    z = Z975 if sided == "two" else Z95
    for p1, p2, n1, n2 in ((0.1, 0.12, 3000, 3000), (0.05, 0.045, 20000, 40000), (0.3, 0.33, 800, 400)):
        pooled = (n1 * p1 + n2 * p2) / (n1 + n2)
        null = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
        alt = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
        expected = ndtr((abs(p2 - p1) - z * null) / alt) + (sided == "two") * ndtr((-abs(p2 - p1) - z * null) / alt)
        assert proportion_power(p1, p2, n1, n2, alpha=0.05, sided=sided) == pytest.approx(expected, abs=1e-12)
    for effect, s1, s2, n1, n2 in ((0.5, 2.0, 2.0, 100, 100), (0.2, 1.0, 3.0, 500, 1500)):
        shift = effect / math.sqrt(s1**2 / n1 + s2**2 / n2)
        expected = ndtr(shift - z) + (sided == "two") * ndtr(-shift - z)
        got = mean_power(effect, s1, n1, n2, alpha=0.05, sided=sided, std_treatment=s2)
        assert got == pytest.approx(expected, abs=1e-12)
