"""The three heads on the shared trunk: click (position-debiased), dwell (censored) and preference (Bradley-Terry).

Each head maps the trunk's hidden state ``[N, H]`` to its score and owns the nuisance parameters of its
likelihood (examination per slot, dwell spread, annotator temperatures and biases, the tie parameter), so the
score the reward uses is free of them:

- click: attractiveness logit f; P(click | slot k) = θ_k σ(f) with θ_1 = 1 (only ratios are identifiable);
- dwell: μ = E[log dwell | click] (log-normal) or log λ (Weibull, E[log T] = log λ − γ / k);
- preference: utility u; a judgement by annotator j has log-odds d = (u_a − u_b) / T_j + β_j.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from reward.config import ClickConfig, DwellConfig, PreferenceConfig
from reward.losses import (
    ips_click_nll,
    lognormal_dwell_nll,
    naive_click_nll,
    pbm_click_nll,
    preference_nll,
    weibull_dwell_nll,
    weibull_mean_log,
)


def _check_rows(name: str, hidden: Tensor, dim: int) -> None:
    if hidden.ndim != 2 or hidden.shape[1] != dim:
        raise ValueError(f"{name}: hidden must be [N, {dim}], got {list(hidden.shape)}")


class ClickHead(nn.Module):
    """Attractiveness logit and the examination model of the click likelihood.

    Args:
        hidden_dim: H.
        slots: S, the number of slots the examination model covers (1-based positions 1..S).
        config: mode ("pbm", "ips", "none") and, for "ips", the known examination probabilities.
        training_images: N, size of the per-image offset table (pbm with ``image_effect_sd`` > 0).
    """

    def __init__(self, hidden_dim: int, slots: int, config: ClickConfig, *, training_images: int = 0) -> None:
        super().__init__()
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.config = config
        self.slots = slots
        self.hidden_dim = hidden_dim
        self.score = nn.Linear(hidden_dim, 1)
        # θ_k = σ(ω_k) for k >= 2 (learned in "pbm"); θ_1 = 1 fixes the scale.
        initial = torch.full((max(slots - 1, 0),), 1.0)
        self.examination_logits = nn.Parameter(initial, requires_grad=config.mode == "pbm")
        known = config.examination if config.examination else (1.0,) * slots
        if config.mode == "ips" and len(known) < slots:
            raise ValueError(f"click.examination has {len(known)} slot(s) but the logs show positions up to {slots}")
        self.register_buffer("known_examination", torch.tensor(known[:slots], dtype=torch.float32))
        use_effects = config.mode == "pbm" and config.image_effect_sd > 0 and training_images > 0
        self.image_effects = nn.Parameter(torch.zeros(training_images if use_effects else 0))
        """Per-training-image logit offsets (training only; see ClickConfig.image_effect_sd)."""

    def with_image_effects(self, logits: Tensor, images: Tensor | None) -> Tensor:
        """``logits`` [N] plus the offsets of training images ``images`` [N] int64 (−1 = not a training image)."""
        if images is None or self.image_effects.numel() == 0:
            return logits
        known = images >= 0
        return logits + torch.where(known, self.image_effects[images.clamp(min=0)], torch.zeros_like(logits))

    def effects_penalty(self) -> Tensor:
        """Gaussian prior on the image offsets, in nats (sum)."""
        if self.image_effects.numel() == 0:
            return self.image_effects.new_zeros(())
        return 0.5 * (self.image_effects**2).sum() / self.config.image_effect_sd**2

    def forward(self, hidden: Tensor) -> Tensor:
        """Attractiveness logits f: [N, H] -> [N]."""
        _check_rows("click head", hidden, self.hidden_dim)
        return self.score(hidden)[:, 0]

    def log_examination(self) -> Tensor:
        """log θ per slot: [S] float32 (0 for slot 1)."""
        if self.config.mode == "ips":
            return self.known_examination.log()
        if self.config.mode == "none":
            return torch.zeros(self.slots, device=self.examination_logits.device)
        tail = nn.functional.logsigmoid(self.examination_logits)
        return torch.cat([tail.new_zeros(1), tail])

    def examination(self) -> Tensor:
        """θ per slot relative to slot 1: [S] float32."""
        return self.log_examination().exp()

    def nll(self, logits: Tensor, positions: Tensor, clicked: Tensor) -> Tensor:
        """Per-row click loss of the configured mode: [N].

        Args:
            logits: [N] attractiveness logits.
            positions: [N] int64 1-based slots (<= S).
            clicked: [N] bool.
        """
        if positions.numel() and (int(positions.min()) < 1 or int(positions.max()) > self.slots):
            raise ValueError(
                f"positions must be in 1..{self.slots}, got {int(positions.min())}..{int(positions.max())}"
            )
        log_exam = self.log_examination()[positions - 1]
        if self.config.mode == "pbm":
            return pbm_click_nll(logits, log_exam, clicked)
        if self.config.mode == "ips":
            return ips_click_nll(logits, log_exam.exp(), clicked, max_weight=self.config.ips_max_weight)
        return naive_click_nll(logits, clicked)

    def click_probability(self, logits: Tensor, positions: Tensor) -> Tensor:
        """P(click | slot) the model predicts: θ_k σ(f) (σ(f) for mode "none"): [N]."""
        return self.log_examination()[positions - 1].exp() * torch.sigmoid(logits)


class DwellHead(nn.Module):
    """Location of the dwell distribution given a click, and its (global) spread."""

    def __init__(self, hidden_dim: int, config: DwellConfig) -> None:
        super().__init__()
        self.config = config
        self.hidden_dim = hidden_dim
        self.score = nn.Linear(hidden_dim, 1)
        # Start near typical product-page dwell (e^9.5 ms ≈ 13 s) so early steps are not spent on the offset.
        nn.init.constant_(self.score.bias, config.initial_log_dwell)
        self.log_spread = nn.Parameter(torch.tensor(0.0))
        """log σ (log-normal) or log k (Weibull shape)."""

    def forward(self, hidden: Tensor) -> Tensor:
        """μ (log-normal mean log-dwell) or log λ (Weibull log scale): [N, H] -> [N]."""
        _check_rows("dwell head", hidden, self.hidden_dim)
        return self.score(hidden)[:, 0]

    def nll(self, location: Tensor, dwell_ms: Tensor, censored: Tensor) -> Tensor:
        """Per-row censored negative log-likelihood [N] (censoring ignored when ``config.censoring`` is
        "ignore": the naive fit that treats the time at censoring as the dwell)."""
        censored = censored.bool() if self.config.censoring == "likelihood" else torch.zeros_like(censored).bool()
        spread = self.log_spread.expand_as(location)
        if self.config.distribution == "lognormal":
            return lognormal_dwell_nll(location, spread, dwell_ms, censored)
        return weibull_dwell_nll(location, spread, dwell_ms, censored)

    def expected_log_dwell(self, location: Tensor) -> Tensor:
        """E[log dwell_ms | click]: [N]."""
        if self.config.distribution == "lognormal":
            return location
        return weibull_mean_log(location, self.log_spread)


class PreferenceHead(nn.Module):
    """Utility of an image, and the annotator and tie parameters of the pairwise likelihood.

    Args:
        hidden_dim: H.
        annotators: known annotator ids; index 0 is reserved for an annotator not seen in training (its
            temperature stays 1 and its bias 0).
        config: tie model and which annotator parameters are learned.
    """

    def __init__(self, hidden_dim: int, annotators: Sequence[str], config: PreferenceConfig) -> None:
        super().__init__()
        self.config = config
        self.hidden_dim = hidden_dim
        self.annotators = tuple(annotators)
        self.score = nn.Linear(hidden_dim, 1)
        count = len(self.annotators) + 1
        self.log_temperature = nn.Parameter(torch.zeros(count), requires_grad=config.annotator_temperature)
        self.side_bias = nn.Parameter(torch.zeros(count), requires_grad=config.side_bias)
        # Davidson ν = 1 or Rao-Kupper η = 0.5 to start: roughly a 30 % tie rate at equal utilities.
        start = 0.0 if config.ties == "davidson" else math.log(0.5)
        self.log_tie = nn.Parameter(torch.tensor(start), requires_grad=config.ties != "none")

    def forward(self, hidden: Tensor) -> Tensor:
        """Utilities u: [N, H] -> [N]."""
        _check_rows("preference head", hidden, self.hidden_dim)
        return self.score(hidden)[:, 0]

    def log_odds(self, utility_a: Tensor, utility_b: Tensor, annotator: Tensor) -> Tensor:
        """d = (u_a − u_b) / T_j + β_j: [N]. ``annotator`` [N] int64 indexes the annotator table (0 = unseen)."""
        temperature = self.log_temperature[annotator].exp()
        return (utility_a - utility_b) / temperature + self.side_bias[annotator]

    def nll(self, log_odds: Tensor, choice: Tensor) -> Tensor:
        """Per-judgement negative log-likelihood [N] of the configured tie model."""
        return preference_nll(log_odds, choice, ties=self.config.ties, log_tie=self.log_tie)

    def prior_penalty(self) -> Tensor:
        """Gaussian prior on log T_j and β_j (sum over annotators, in nats): it pins the utility scale
        (otherwise only u / T is identified) and shrinks annotators with few judgements."""
        sd = self.config.annotator_prior_sd
        return 0.5 * ((self.log_temperature**2).sum() + (self.side_bias**2).sum()) / sd**2
