"""A synthetic sweep target (noisy quadratic with intermediate steps) and checks of the target itself.

The sweep tests register it as ``"quadratic" -> "test_sweep_target:QUADRATIC"`` after putting this folder on
``sys.path``, so that spawned worker processes import it by that name too.

Score at step t (maximised): ``-((x - 1)^2 + (y + 0.5)^2) - 1 / (t + 1) + noise * N(0, 1)``, optimum at
(x, y) = (1, -0.5); it rises with t for every (x, y) and keeps their order, so a median pruner can judge a trial
early. A "KL" grows linearly, ``kl_rate * (t + 1)``, for constraint tests.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping
from typing import Literal

from experiments.config import RunConfig
from experiments.sweep.targets import LogMetrics, SweepTarget

OPTIMUM = (1.0, -0.5)

# Test hooks (set on the module imported as "test_sweep_target"): make the N-th call of run_quadratic in this
# process raise KeyboardInterrupt, as Ctrl-C in the middle of a trial would.
CALLS = {"count": 0, "interrupt_on": 0}


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuadraticConfig:
    """The synthetic trainer's knobs."""

    x: float = 0.0
    """First coordinate; the optimum is at 1."""
    y: float = 0.0
    """Second coordinate; the optimum is at -0.5."""
    steps: int = 8
    """Logged steps per run."""
    noise: float = 0.01
    """Standard deviation of the per-step score noise (seeded by run.seed, x and y)."""
    kl_rate: float = 0.01
    """KL logged at step t is kl_rate * (t + 1)."""
    fail: Literal["never", "always", "x_above_1"] = "never"
    """Raise RuntimeError in every run, or only when x > 1 (failure-handling tests)."""

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuadraticRootConfig:
    """Root config of the synthetic target: [run] and [quad]."""

    run: RunConfig = RunConfig(name="quadratic", tensorboard=False)
    """Run directory settings."""
    quad: QuadraticConfig = QuadraticConfig()
    """The quadratic."""


def loss(x: float, y: float) -> float:
    return (x - OPTIMUM[0]) ** 2 + (y - OPTIMUM[1]) ** 2


def run_quadratic(config: QuadraticRootConfig, log_metrics: LogMetrics) -> Mapping[str, float]:
    CALLS["count"] += 1
    if CALLS["interrupt_on"] and CALLS["count"] == CALLS["interrupt_on"]:
        raise KeyboardInterrupt
    q = config.quad
    if q.fail == "always" or (q.fail == "x_above_1" and q.x > 1):
        raise RuntimeError(f"synthetic failure at x = {q.x}")
    rng = random.Random(f"{config.run.seed}:{q.x!r}:{q.y!r}")
    score = math.nan
    for step in range(q.steps):
        score = -loss(q.x, q.y) - 1.0 / (step + 1) + q.noise * rng.gauss(0.0, 1.0)
        log_metrics({"toy/score": score, "toy/kl": q.kl_rate * (step + 1)}, step)
    return {"toy/final_loss": loss(q.x, q.y)}


QUADRATIC = SweepTarget(name="quadratic", config_class=QuadraticRootConfig, run=run_quadratic)


def test_quadratic_logs_every_step_and_peaks_at_the_optimum() -> None:
    logged: list[tuple[int, dict]] = []
    config = QuadraticRootConfig(quad=QuadraticConfig(x=1.0, y=-0.5, noise=0.0, steps=4))
    final = run_quadratic(config, lambda metrics, step: logged.append((step, dict(metrics))))
    assert [s for s, _ in logged] == [0, 1, 2, 3]
    # Noise-free at the optimum: score = -1 / (t + 1); KL = 0.01 (t + 1).
    assert [m["toy/score"] for _, m in logged] == [-1.0, -0.5, -1 / 3, -0.25]
    assert [m["toy/kl"] for _, m in logged] == [0.01, 0.02, 0.03, 0.04]
    assert final == {"toy/final_loss": 0.0}


def test_quadratic_noise_is_seeded() -> None:
    def scores(seed: int) -> list[float]:
        logged: list[float] = []
        config = QuadraticRootConfig(run=RunConfig(seed=seed, tensorboard=False), quad=QuadraticConfig(x=0.3))
        run_quadratic(config, lambda metrics, step: logged.append(metrics["toy/score"]))
        return logged

    assert scores(0) == scores(0)
    assert scores(0) != scores(1)
