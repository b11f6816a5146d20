"""The losses of policy fine-tuning, as small pure functions on tensors.

- :func:`clipped_policy_loss`: DDPO's PPO-style clipped surrogate on per-step log-probs (Black et al. 2023,
  "Training Diffusion Models with Reinforcement Learning"; Schulman et al. 2017).
- :func:`gaussian_kl`: the closed-form KL(pi_theta || pi_base) of one DDIM step.
- :func:`diffusion_dpo_loss`: Diffusion-DPO (Wallace et al. 2023, "Diffusion Model Alignment Using Direct
  Preference Optimization", eq. 14).
- :func:`weighted_denoising_loss`: the epsilon-prediction loss with per-sample weights (reward-weighted
  regression, Peters & Schaal 2007; Lee et al. 2023 "Aligning Text-to-Image Models using Human Feedback").

THE reduction, everywhere in backdrop: per-dimension quantities (log-densities, KLs, squared noise errors) are
averaged over the BACKGROUND latent positions and all channels of a sample
(:func:`rollout.ddim_logprob.background_mean`); product positions are not part of the action. Per-sample values
are then averaged over the samples (and timesteps) of a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rollout.ddim_logprob import background_mean


@dataclass(frozen=True, kw_only=True, eq=False)
class PolicyLossOutput:
    """The clipped surrogate and its diagnostics (all 0-d tensors; only ``loss`` carries a gradient)."""

    loss: torch.Tensor
    """Mean over elements of max(-A r, -A clip(r, 1 - eps, 1 + eps))."""
    ratio_mean: torch.Tensor
    """Mean of r = exp(log_prob - old_log_prob); exactly 1 before the first update."""
    clipfrac: torch.Tensor
    """Fraction of elements with |r - 1| > eps."""
    approx_kl: torch.Tensor
    """0.5 * mean((log_prob - old_log_prob)^2), Schulman's estimator of KL(pi_old || pi_theta)."""


def clipped_policy_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> PolicyLossOutput:
    """PPO's clipped surrogate, as DDPO applies it to every denoising step.

    ``loss = mean(max(-A * r, -A * clip(r, 1 - clip_range, 1 + clip_range)))`` with ``r = exp(log_prob -
    old_log_prob)``. The log-probs are background-mean reduced (module docstring), so per-step ratios stay near 1
    and DDPO's clip of 1e-4 is meaningful.

    Args:
        log_prob: ``[N]`` float32 (any shape) log pi_theta of the stored transitions, with grad.
        old_log_prob: same shape, log pi_old recorded at sampling time.
        advantages: same shape (broadcast a per-sample advantage over its timesteps before calling).
        clip_range: eps > 0.

    Raises:
        ValueError: shapes differ or clip_range <= 0.
    """
    if log_prob.shape != old_log_prob.shape or log_prob.shape != advantages.shape:
        raise ValueError(
            f"log_prob, old_log_prob and advantages must have one shape, got {list(log_prob.shape)}, "
            f"{list(old_log_prob.shape)} and {list(advantages.shape)}"
        )
    if not clip_range > 0:
        raise ValueError(f"clip_range must be > 0, got {clip_range}")
    log_ratio = log_prob - old_log_prob.detach()
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        return PolicyLossOutput(
            loss=loss,
            ratio_mean=ratio.mean(),
            clipfrac=((ratio - 1.0).abs() > clip_range).float().mean(),
            approx_kl=0.5 * (log_ratio**2).mean(),
        )


def gaussian_kl(
    mean: torch.Tensor, base_mean: torch.Tensor, std: torch.Tensor, background: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean, std^2 I) || N(base_mean, std^2 I)) per sample, averaged over background latent dims.

    Both DDIM transitions share sigma_t (it depends only on the schedule, t and eta), so per dimension the KL is
    (mu_theta - mu_base)^2 / (2 sigma_t^2); it is reduced like the log-prob (:func:`background_mean`). Summing it
    over the T steps of a chain and multiplying by the number of background dims gives the KL of whole
    trajectories in nats (the chain rule of KL for Markov chains).

    Args:
        mean: ``[B, C, h, w]`` mu_theta (with grad when training).
        base_mean: ``[B, C, h, w]`` mu_base of the base model (adapters disabled).
        std: ``[B, 1, 1, 1]`` or broadcastable, sigma_t > 0.
        background: ``[B, 1, h, w]`` bool, True at the positions the policy paints.

    Returns:
        ``[B]`` float32.
    """
    if mean.shape != base_mean.shape or mean.ndim != 4:
        raise ValueError(
            f"mean and base_mean must both be [B, C, h, w], got {list(mean.shape)}, {list(base_mean.shape)}"
        )
    if bool((std <= 0).any()):
        raise ValueError("std must be > 0 (eta = 0 has no density)")
    per_dim = (mean.float() - base_mean.float()) ** 2 / (2.0 * std.float() ** 2)
    return background_mean(per_dim, background)


def noise_prediction_error(prediction: torch.Tensor, target: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """||prediction - target||^2 per sample, averaged over background latent dims: ``[B]`` float32.

    Args:
        prediction: ``[B, C, h, w]`` the UNet's output.
        target: ``[B, C, h, w]`` what it should predict (the noise, or v).
        background: ``[B, 1, h, w]`` bool.
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {list(prediction.shape)} and target {list(target.shape)} differ")
    return background_mean((prediction.float() - target.float()) ** 2, background)


def dpo_logit(
    model_error_w: torch.Tensor,
    model_error_l: torch.Tensor,
    base_error_w: torch.Tensor,
    base_error_l: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Diffusion-DPO's implicit reward margin z per pair (Wallace et al. 2023, eq. 14).

    ``z = -beta / 2 * ((e_w - e_w_base) - (e_l - e_l_base))`` where e are the noise-prediction errors of the preferred
    (w) and the rejected (l) image noised with the SAME noise at the SAME t, as in diffusers'
    ``train_diffusion_dpo.py``; the paper's T * omega(lambda_t) is folded into beta. ``sigmoid(z)`` is the model's
    implied probability that w is preferred. The base model plays the paper's reference model pi_ref; its errors are
    treated as constants.

    Args:
        model_error_w, model_error_l: ``[N]`` errors of the trained model (with grad), e.g. from
            :func:`noise_prediction_error`.
        base_error_w, base_error_l: ``[N]`` the base model's errors (adapters disabled) on the same inputs.
        beta: > 0, DPO's KL weight: the larger, the smaller the departure from the base at which the
            loss saturates (a tighter implicit leash).

    Returns:
        ``[N]`` float32.
    """
    shapes = {tuple(t.shape) for t in (model_error_w, model_error_l, base_error_w, base_error_l)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"the four error tensors must all be [N], got shapes {sorted(shapes)}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    return -0.5 * beta * ((model_error_w - base_error_w.detach()) - (model_error_l - base_error_l.detach()))


def diffusion_dpo_loss(logit: torch.Tensor, tie: torch.Tensor | None = None) -> torch.Tensor:
    """Diffusion-DPO loss per pair from its margin :func:`dpo_logit`: ``-log sigmoid(z)``.

    A tie (the annotator saw no difference) is a label of 1/2: ``-(log sigmoid(z) + log sigmoid(-z)) / 2``, which
    pulls the margin towards 0. At the start (model == base, z = 0) every pair costs log 2.

    Args:
        logit: ``[N]`` margins z.
        tie: ``[N]`` bool, True for tied pairs; None = no ties.

    Returns:
        ``[N]`` float32 losses.
    """
    if logit.ndim != 1:
        raise ValueError(f"logit must be [N], got {list(logit.shape)}")
    win = -F.logsigmoid(logit)
    if tie is None:
        return win
    if tie.shape != logit.shape or tie.dtype != torch.bool:
        raise ValueError(f"tie must be bool {list(logit.shape)}, got {tie.dtype} {list(tie.shape)}")
    return torch.where(tie, 0.5 * (win - F.logsigmoid(-logit)), win)


def weighted_denoising_loss(errors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_i w_i e_i / sum_i w_i: the reward-weighted regression objective on per-sample noise errors.

    Args:
        errors: ``[N]`` per-sample errors (:func:`noise_prediction_error`), with grad.
        weights: ``[N]`` >= 0, not all zero (e.g. exp(r / temperature), normalised and clipped).
    """
    if errors.shape != weights.shape or errors.ndim != 1:
        raise ValueError(f"errors and weights must both be [N], got {list(errors.shape)}, {list(weights.shape)}")
    if bool((weights < 0).any()) or not float(weights.sum()) > 0:
        raise ValueError("weights must be >= 0 and not all zero")
    weights = weights.detach().float()
    return (errors.float() * weights).sum() / weights.sum()
