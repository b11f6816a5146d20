"""A/B test sample sizes and minimum detectable effects, for a rate (CTR) or a mean with known variance.

Notation: control arm n1 units, treatment arm n2 = κ n1 (κ = ``ratio``); significance α, power 1 - β; z_q the
standard normal q-quantile; z_α means z_{1-α/2} for a two-sided test and z_{1-α} for a one-sided one. Both
formulas are the normal-approximation ones and ignore the far rejection tail of a two-sided test (it adds less
than α/2 to the power), as the standard references and calculators do.

**Two proportions** (the pooled two-proportion z-test; Fleiss, Levin & Paik 2003, "Statistical Methods for
Rates and Proportions", eq. 4.14 without the continuity correction). Baseline rate p1, treatment rate
p2 = p1 + δ (absolute lift) or p1 (1 + r) (relative lift r), p̄ = (p1 + κ p2) / (1 + κ), q = 1 - p:

    n1 = [ z_α sqrt(p̄ q̄ (1 + 1/κ)) + z_{1-β} sqrt(p1 q1 + p2 q2 / κ) ]² / δ²

(the test's null standard error uses the pooled rate; its distribution under the alternative the two rates).
Power at given n1, n2: Φ( (|δ| - z_α sqrt(p̄ q̄ (1/n1 + 1/n2))) / sqrt(p1 q1 / n1 + p2 q2 / n2) ), with
p̄ = (n1 p1 + n2 p2) / (n1 + n2). The minimum detectable effect at a given n solves power = 1 - β for δ.

**Means** (two-sample z-test with known standard deviations σ1, σ2; e.g. Chow, Shao & Wang 2008, "Sample Size
Calculations in Clinical Research", sec. 3.2): for an absolute lift δ,

    n1 = (z_α + z_{1-β})² (σ1² + σ2² / κ) / δ²,    MDE = (z_α + z_{1-β}) sqrt(σ1² / n1 + σ2² / n2).

Arm sizes are rounded up: n_control = ceil(n1), n_treatment = ceil(κ n1). The units are whatever was
randomised and is independent (users or requests); for a per-impression CTR with request-level
randomisation, the impressions of one request are correlated and the two-proportion formula is optimistic,
which is why ``backdrop ope`` also reports the per-request mean version with the variance measured in the logs.

The numbers come from statsmodels (``statsmodels.stats.power`` and ``statsmodels.stats.proportion``), which
implements exactly these tests: sample sizes by ``normal_sample_size_one_tail`` (the closed forms above) and
``samplesize_proportions_2indep_onetail`` (its null variance pools the rates as above); power by
``NormalIndPower`` and ``power_proportions_2indep``, which add the far rejection tail of a two-sided test (under
1e-6 at the sizes computed here). This module keeps the design, the validation and the reporting.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

from scipy.optimize import brentq
from scipy.special import ndtri

Sided = Literal["two", "one"]
Metric = Literal["proportion", "mean"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ABTestConfig:
    """The test the A/B system will run: significance, power, sidedness and traffic split."""

    alpha: float = 0.05
    """Type I error rate (the test's significance level)."""
    power: float = 0.8
    """1 - β: probability of detecting the effect when it is real."""
    sided: Sided = "two"
    """"two" (detect a change either way) or "one" (only the stated direction; z_{1-α} instead of z_{1-α/2})."""
    ratio: float = 1.0
    """κ = treatment units / control units (2.0 sends twice the control's traffic to the treatment)."""

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not 0 < self.power < 1:
            raise ValueError(f"power must be in (0, 1), got {self.power}")
        if not (math.isfinite(self.ratio) and self.ratio > 0):
            raise ValueError(f"ratio must be a finite number > 0, got {self.ratio}")

    @property
    def z_alpha(self) -> float:
        """z_{1-α/2} (two-sided) or z_{1-α} (one-sided)."""
        return float(ndtri(1 - self.alpha / 2 if self.sided == "two" else 1 - self.alpha))

    @property
    def z_power(self) -> float:
        """z_{1-β}."""
        return float(ndtri(self.power))


@dataclasses.dataclass(frozen=True, kw_only=True)
class SampleSize:
    """Units needed per arm to detect ``effect`` with the design's power."""

    metric: Metric
    n_control: int
    n_treatment: int
    n_total: int
    baseline: float
    """Control rate (proportion) or mean."""
    treatment: float
    """Treatment rate or mean under the alternative."""
    effect: float
    """treatment - baseline."""
    relative_effect: float | None
    """effect / baseline (None when the baseline is 0)."""
    design: ABTestConfig

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DetectableEffect:
    """The smallest effect a test of the given size detects with the design's power."""

    metric: Metric
    n_control: float
    n_treatment: float
    baseline: float
    effect: float
    """Absolute minimum detectable effect (signed: negative for a decrease)."""
    relative_effect: float | None
    design: ABTestConfig

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def proportion_sample_size(
    baseline: float, lift: float, *, relative: bool = False, design: ABTestConfig = ABTestConfig()
) -> SampleSize:
    """Units per arm for the pooled two-proportion z-test (module docstring, Fleiss et al. eq. 4.14).

    Args:
        baseline: control rate p1 in (0, 1).
        lift: absolute change δ = p2 - p1, or with ``relative`` the fraction r with p2 = p1 (1 + r); non-zero.
        relative: read ``lift`` as relative.
        design: α, power, sidedness, allocation ratio.

    Raises:
        ValueError: a rate outside (0, 1) or a zero lift.
    """
    p1 = _check_rate("baseline", baseline)
    p2 = _treatment_value(p1, lift, relative)
    _check_rate("treatment rate (baseline + lift)", p2)
    # heavy (statsmodels imports pandas, ~1 s): loaded when a sample size or power is computed
    from statsmodels.stats.proportion import samplesize_proportions_2indep_onetail

    # statsmodels' sample 1 is our control arm (n1, p1) and its reference sample 2 the treatment (κ n1, p2).
    n1 = samplesize_proportions_2indep_onetail(
        p1 - p2, p2, design.power, ratio=design.ratio, alpha=design.alpha, alternative=_alternative(design.sided)
    )
    return _sample_size("proportion", float(n1), p1, p2, design)


def mean_sample_size(
    baseline: float,
    std: float,
    lift: float,
    *,
    relative: bool = False,
    std_treatment: float | None = None,
    design: ABTestConfig = ABTestConfig(),
) -> SampleSize:
    """Units per arm for a two-sample z-test on a mean: n1 = (z_α + z_{1-β})² (σ1² + σ2²/κ) / δ².

    Args:
        baseline: control mean μ1 (only used to turn a relative lift into δ and for reporting).
        std: control standard deviation σ1 > 0 per unit.
        lift: absolute δ = μ2 - μ1, or with ``relative`` the fraction r with μ2 = μ1 (1 + r); non-zero.
        relative: read ``lift`` as relative.
        std_treatment: σ2 (default σ1).
        design: α, power, sidedness, allocation ratio.
    """
    sigma1, sigma2 = _check_stds(std, std_treatment)
    mu2 = _treatment_value(baseline, lift, relative)
    # heavy (statsmodels imports pandas, ~1 s): loaded when a sample size or power is computed
    from statsmodels.stats.power import normal_sample_size_one_tail

    one_tail_alpha = design.alpha / 2 if design.sided == "two" else design.alpha
    sd = math.sqrt(sigma1**2 + sigma2**2 / design.ratio)  # of the mean difference, times sqrt(n1)
    n1 = normal_sample_size_one_tail(abs(mu2 - baseline), design.power, one_tail_alpha, std_null=sd)
    return _sample_size("mean", float(n1), baseline, mu2, design)


def proportion_power(
    baseline: float, treatment: float, n_control: float, n_treatment: float, *, alpha: float, sided: Sided = "two"
) -> float:
    """Power of the pooled two-proportion z-test with the given arm sizes (module docstring; statsmodels'
    ``power_proportions_2indep``)."""
    # heavy (statsmodels imports pandas, ~1 s): loaded when a sample size or power is computed
    from statsmodels.stats.proportion import power_proportions_2indep

    p1, p2 = _check_rate("baseline", baseline), _check_rate("treatment", treatment)
    ABTestConfig(alpha=alpha, sided=sided)  # validates alpha and sided
    # A one-sided test is in the direction of the change (module docstring).
    alternative = _alternative(sided) if sided == "two" else ("larger" if p1 > p2 else "smaller")
    result = power_proportions_2indep(
        p1 - p2, p2, n_control, ratio=n_treatment / n_control, alpha=alpha, alternative=alternative
    )
    return float(result.power)


def mean_power(
    effect: float,
    std: float,
    n_control: float,
    n_treatment: float,
    *,
    alpha: float,
    sided: Sided = "two",
    std_treatment: float | None = None,
) -> float:
    """Power of the two-sample z-test on a mean, Φ(|δ| / sqrt(σ1²/n1 + σ2²/n2) - z_α) (statsmodels'
    ``NormalIndPower``; unequal σ enter through the standardised effect of :func:`_standardised`)."""
    # heavy (statsmodels imports pandas, ~1 s): loaded when a sample size or power is computed
    from statsmodels.stats.power import NormalIndPower

    sigma1, sigma2 = _check_stds(std, std_treatment)
    ABTestConfig(alpha=alpha, sided=sided)
    ratio = n_treatment / n_control
    d = abs(effect) / _standardised(sigma1, sigma2, ratio)
    alternative = "two-sided" if sided == "two" else "larger"
    return float(NormalIndPower().power(d, n_control, alpha, ratio=ratio, alternative=alternative))


def proportion_mde(
    baseline: float,
    n_total: float,
    *,
    design: ABTestConfig = ABTestConfig(),
    direction: Literal["increase", "decrease"] = "increase",
) -> DetectableEffect:
    """Smallest change of the rate that ``n_total`` units (split 1 : κ) detect with the design's power.

    Solves :func:`proportion_power` = power for δ (Brent's method; the power rises monotonically with |δ|).

    Raises:
        ValueError: even the largest possible change (to a rate of 0 or 1) is not detectable at this size.
    """
    p1 = _check_rate("baseline", baseline)
    n1, n2 = _split(n_total, design.ratio)
    sign = 1.0 if direction == "increase" else -1.0
    room = (1 - p1) if sign > 0 else p1
    eps = 1e-12

    def shortfall(delta: float) -> float:
        return proportion_power(p1, p1 + sign * delta, n1, n2, alpha=design.alpha, sided=design.sided) - design.power

    if shortfall(room - eps) < 0:
        raise ValueError(
            f"{n_total:g} units cannot detect any {direction} from a rate of {p1:g} with power {design.power:g}"
        )
    delta = brentq(shortfall, eps, room - eps, xtol=1e-12, rtol=1e-10)
    return DetectableEffect(
        metric="proportion",
        n_control=n1,
        n_treatment=n2,
        baseline=p1,
        effect=sign * delta,
        relative_effect=sign * delta / p1,
        design=design,
    )


def mean_mde(
    baseline: float,
    std: float,
    n_total: float,
    *,
    design: ABTestConfig = ABTestConfig(),
    std_treatment: float | None = None,
) -> DetectableEffect:
    """Smallest change of the mean ``n_total`` units detect: (z_α + z_{1-β}) sqrt(σ1²/n1 + σ2²/n2) (solved by
    statsmodels' ``NormalIndPower``)."""
    # heavy (statsmodels imports pandas, ~1 s): loaded when a sample size or power is computed
    from statsmodels.stats.power import NormalIndPower

    sigma1, sigma2 = _check_stds(std, std_treatment)
    n1, n2 = _split(n_total, design.ratio)
    alternative = "two-sided" if design.sided == "two" else "larger"
    d = NormalIndPower().solve_power(
        None, nobs1=n1, alpha=design.alpha, power=design.power, ratio=design.ratio, alternative=alternative
    )
    delta = float(d) * _standardised(sigma1, sigma2, design.ratio)
    return DetectableEffect(
        metric="mean",
        n_control=n1,
        n_treatment=n2,
        baseline=baseline,
        effect=delta,
        relative_effect=delta / baseline if baseline != 0 else None,
        design=design,
    )


def _sample_size(metric: Metric, n1: float, baseline: float, treatment: float, design: ABTestConfig) -> SampleSize:
    # Guard the ceiling against float noise just above an integer (1093.0000000001 is 1093 units).
    n_control = math.ceil(n1 - 1e-9)
    n_treatment = math.ceil(design.ratio * n1 - 1e-9)
    effect = treatment - baseline
    return SampleSize(
        metric=metric,
        n_control=n_control,
        n_treatment=n_treatment,
        n_total=n_control + n_treatment,
        baseline=baseline,
        treatment=treatment,
        effect=effect,
        relative_effect=effect / baseline if baseline != 0 else None,
        design=design,
    )


def _alternative(sided: Sided) -> str:
    return "two-sided" if sided == "two" else "larger"


def _standardised(sigma1: float, sigma2: float, ratio: float) -> float:
    """The σ that makes statsmodels' equal-variance effect size d = δ / σ give our unequal-variance test:
    d sqrt(n1) / sqrt(1 + 1/κ) = δ sqrt(n1) / sqrt(σ1² + σ2²/κ)."""
    return math.sqrt((sigma1**2 + sigma2**2 / ratio) / (1 + 1 / ratio))


def _treatment_value(baseline: float, lift: float, relative: bool) -> float:
    if not math.isfinite(lift) or lift == 0:
        raise ValueError(f"lift must be a finite non-zero number, got {lift}")
    if relative and baseline == 0:
        raise ValueError("a relative lift needs a non-zero baseline")
    return baseline * (1 + lift) if relative else baseline + lift


def _check_rate(name: str, value: float) -> float:
    if not 0 < value < 1:
        raise ValueError(f"{name} must be a rate in (0, 1), got {value}")
    return float(value)


def _check_stds(std: float, std_treatment: float | None) -> tuple[float, float]:
    sigma2 = std if std_treatment is None else std_treatment
    if not (std > 0 and math.isfinite(std)) or not (sigma2 > 0 and math.isfinite(sigma2)):
        raise ValueError(f"standard deviations must be finite and > 0, got {std} and {sigma2}")
    return float(std), float(sigma2)


def _split(n_total: float, ratio: float) -> tuple[float, float]:
    if not n_total > 0:
        raise ValueError(f"n_total must be > 0, got {n_total}")
    n1 = n_total / (1 + ratio)
    return n1, ratio * n1
