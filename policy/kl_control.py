"""KL coefficient controllers: a fixed kl_coef, or a KL budget held by adaptive control.

Adapted from Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", section 2.2 (the
adaptive KL controller of openai/lm-human-preferences); our rewrite. Modifications: the error is measured on the
per-step KL reduced as backdrop reduces it (mean over background latent dims, mean over trained steps), the
horizon counts epochs rather than samples, and the coefficient is kept inside [min_coef, max_coef].

    e = clip(KL / target - 1, -0.2, 0.2),    beta <- beta * (1 + e * n / horizon)

with n the epochs since the last update (1).
"""

from __future__ import annotations

from typing import Any

STATE_FORMAT = "backdrop.kl_controller"
PROPORTIONAL_LIMIT = 0.2
"""Ziegler et al. clip the proportional error to +-0.2 so a single noisy epoch cannot swing beta far."""


class KLController:
    """Holds kl_coef; with a ``target`` it adapts kl_coef so that the measured KL approaches the target.

    Args:
        initial: the starting kl_coef (>= 0).
        target: the budget of the KL per denoising step (``policy/kl``: nats per background latent dim; not the
            KL per sample ``eval/kl_nats``), or None for a fixed coefficient.
        horizon: epochs over which a persistent 20 % error changes kl_coef by 20 %.
        min_coef, max_coef: bounds of the adapted coefficient.
    """

    def __init__(
        self,
        initial: float,
        *,
        target: float | None = None,
        horizon: float = 10.0,
        min_coef: float = 1e-6,
        max_coef: float = 100.0,
    ) -> None:
        if initial < 0:
            raise ValueError(f"initial kl_coef must be >= 0, got {initial}")
        if target is not None and not target > 0:
            raise ValueError(f"target KL must be > 0, got {target}")
        if target is not None and not initial > 0:
            raise ValueError("an adaptive KL controller needs an initial kl_coef > 0 (it scales multiplicatively)")
        if not horizon > 0 or not 0 < min_coef <= max_coef:
            raise ValueError(f"need horizon > 0 and 0 < min_coef <= max_coef, got {horizon}, {min_coef}, {max_coef}")
        self.value = float(initial)
        self.target = target
        self.horizon = float(horizon)
        self.min_coef = float(min_coef)
        self.max_coef = float(max_coef)

    @property
    def adaptive(self) -> bool:
        """Whether kl_coef follows a KL budget."""
        return self.target is not None

    def update(self, kl: float, epochs: int = 1) -> float:
        """Feed the KL measured over the last ``epochs`` epochs; returns the (possibly new) kl_coef."""
        if self.target is None:
            return self.value
        if kl != kl:  # NaN: keep the coefficient rather than poison it
            return self.value
        error = min(max(kl / self.target - 1.0, -PROPORTIONAL_LIMIT), PROPORTIONAL_LIMIT)
        self.value = min(max(self.value * (1.0 + error * epochs / self.horizon), self.min_coef), self.max_coef)
        return self.value

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state."""
        return {
            "format": STATE_FORMAT,
            "value": self.value,
            "target": self.target,
            "horizon": self.horizon,
            "min_coef": self.min_coef,
            "max_coef": self.max_coef,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; the target and horizon must match this controller's."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a KL controller state (expected format {STATE_FORMAT!r})")
        if (state.get("target"), state.get("horizon")) != (self.target, self.horizon):
            raise ValueError(
                f"KL controller settings differ: saved target/horizon {state.get('target')}/{state.get('horizon')}, "
                f"configured {self.target}/{self.horizon}"
            )
        self.value = float(state["value"])
