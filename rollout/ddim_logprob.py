"""One DDIM step with eta > 0 and the log-probability of the transition: used by sampling and by training.

Adapted from kvablack/ddpo-pytorch, ``ddpo_pytorch/diffusers_patch/ddim_with_logprob.py`` (commit 1958463),
which itself follows diffusers' ``DDIMScheduler.step``; this is our rewrite. Modifications:

- the log-prob is reduced as a MEAN over the BACKGROUND latent positions (and channels) only, not over all latent
  dims: product latents are replaced by the forward-noised original after every step (``rollout.preservation``), so
  they are not part of the policy's action (see :func:`background_mean`);
- the Gaussian's mean and std are returned with the sample, so the trainer gets the closed-form
  KL(pi_theta || pi_base) = ||mu_theta - mu_base||^2 / (2 sigma_t^2) from two calls sharing sigma_t;
- a plain function of the (unchanged) scheduler instead of a patched method; the step noise is passed in
  (``variance_noise``) instead of drawn from a generator, so the sampler can draw all noise of a sample from
  its own seed up front;
- the timestep may be an int, a 0-d tensor or a per-sample ``[B]`` tensor (the trainer may visit steps in a
  different order per sample); schedule values are gathered on the device (ddpo-pytorch gathers on the CPU),
  so no host synchronisation;
- t' < 0 uses ``final_alpha_cumprod`` exactly as diffusers does (ddpo-pytorch clamps t' to >= 0 first, which
  gives alphas_cumprod[0]; the two agree when ``set_alpha_to_one`` is false, as in Stable Diffusion);
- ``prediction_type`` epsilon, v_prediction and sample, and ``clip_sample``, as diffusers; thresholding and
  eta = 0 are refused.

Notation (DDIM paper eq. 12 and 16): with a_t = alphas_cumprod[t] and t' the previous timestep,
x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t), sigma_t = eta sqrt((1 - a_t') / (1 - a_t)) sqrt(1 - a_t / a_t'),
mu = sqrt(a_t') x0 + sqrt(1 - a_t' - sigma_t^2) eps, and x_t' ~ N(mu, sigma_t^2 I).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler

_HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True, kw_only=True)
class DDIMStepOutput:
    """Result of one DDIM step; all float32."""

    prev_sample: torch.Tensor
    """``[B, C, h, w]``: x_{t'} (sampled, or the given ``prev_sample``)."""
    log_prob: torch.Tensor
    """``[B]``: log N(prev_sample; mean, std^2), averaged over background latent positions and channels."""
    mean: torch.Tensor
    """``[B, C, h, w]``: the Gaussian mean mu_theta(x_t, t)."""
    std: torch.Tensor
    """``[B, 1, 1, 1]``: sigma_t (depends on the schedule, t and eta only, not on the model)."""
    pred_original_sample: torch.Tensor
    """``[B, C, h, w]``: the predicted x0."""


def background_mean(values: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the background latent positions and all channels, per sample.

    This is THE reduction of per-dimension log-probs and KLs in backdrop:
    ``out[b] = sum_{c, (i, j) in bg_b} values[b, c, i, j] / (C * |bg_b|)``. Product positions (where
    ``background`` is False) contribute nothing; a sample without background positions gets 0 (the sampler
    refuses such requests).

    Args:
        values: ``[B, C, h, w]``.
        background: ``[B, 1, h, w]`` bool, True where the policy acts (not product).

    Returns:
        ``[B]`` in the dtype of ``values``.
    """
    if values.ndim != 4 or background.ndim != 4 or background.shape[1] != 1:
        raise ValueError(
            f"values must be [B, C, h, w] and background [B, 1, h, w], got {list(values.shape)} and "
            f"{list(background.shape)}"
        )
    if background.shape[0] != values.shape[0] or background.shape[2:] != values.shape[2:]:
        raise ValueError(f"background {list(background.shape)} does not match values {list(values.shape)}")
    if background.dtype != torch.bool:
        raise ValueError(f"background must be bool, got {background.dtype}")
    # A fixed memory layout fixes the summation order: a channels_last input (the UNet's output on CPU) would
    # otherwise be summed in another order and differ in the last bit from the same values stored contiguously.
    weights = background.to(values.dtype).contiguous()
    total = (values.contiguous() * weights).sum(dim=(1, 2, 3))
    count = weights.sum(dim=(1, 2, 3)) * values.shape[1]
    return total / count.clamp_min(1.0)


def previous_timestep(scheduler: DDIMScheduler, timestep: torch.Tensor) -> torch.Tensor:
    """t' = t - num_train_timesteps // num_inference_steps, exactly as ``DDIMScheduler.step`` (may be < 0).

    Raises:
        ValueError: ``set_timesteps`` was not called.
    """
    if scheduler.num_inference_steps is None:
        raise ValueError("call scheduler.set_timesteps(num_steps) before stepping (it fixes the step size)")
    return timestep - scheduler.config.num_train_timesteps // scheduler.num_inference_steps


def alphas_cumprod_on(scheduler: DDIMScheduler, device: torch.device) -> torch.Tensor:
    """``scheduler.alphas_cumprod`` ([num_train_timesteps] float32) on ``device``.

    Moved once and kept on the scheduler, as diffusers' own ``add_noise`` does, so that the sampling loop never
    copies the schedule from the host.
    """
    if scheduler.alphas_cumprod.device != device:
        scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(device)
    return scheduler.alphas_cumprod


def step_alphas(scheduler: DDIMScheduler, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a_t, a_t') for a long ``timestep`` tensor (any shape, on the target device); a_t' = final_alpha_cumprod
    when t' < 0, as in diffusers."""
    alphas = alphas_cumprod_on(scheduler, timestep.device)
    prev = previous_timestep(scheduler, timestep)
    # take() is a gather kernel; indexing with a 0-d tensor would read the index back to the host first.
    alpha_prod_t = alphas.take(timestep)
    final = float(scheduler.final_alpha_cumprod)  # a CPU scalar: no device sync
    alpha_prod_prev = torch.where(prev >= 0, alphas.take(prev.clamp_min(0)), torch.full_like(alpha_prod_t, final))
    return alpha_prod_t, alpha_prod_prev


def ddim_step_std(scheduler: DDIMScheduler, timestep: torch.Tensor, eta: float) -> torch.Tensor:
    """sigma_t = eta sqrt((1 - a_t') / (1 - a_t) (1 - a_t / a_t')), same shape as ``timestep``."""
    alpha_prod_t, alpha_prod_prev = step_alphas(scheduler, timestep)
    variance = (1 - alpha_prod_prev) / (1 - alpha_prod_t) * (1 - alpha_prod_t / alpha_prod_prev)
    return eta * variance.sqrt()


def ddim_step_with_logprob(
    scheduler: DDIMScheduler,
    model_output: torch.Tensor,
    timestep: int | torch.Tensor,
    sample: torch.Tensor,
    *,
    eta: float,
    background: torch.Tensor,
    prev_sample: torch.Tensor | None = None,
    variance_noise: torch.Tensor | None = None,
) -> DDIMStepOutput:
    """One DDIM step x_t -> x_{t'} and log pi(x_{t'} | x_t), reduced by :func:`background_mean`.

    Sampling passes ``variance_noise`` (x_{t'} = mu + sigma_t * noise, identical to
    ``scheduler.step(model_output, t, sample, eta=eta, variance_noise=noise).prev_sample``); training passes the
    stored ``prev_sample`` and gets its log-prob under the current model. The log-prob uses
    ``prev_sample.detach()``, so gradients flow only through the mean.

    Args:
        scheduler: a ``DDIMScheduler`` after ``set_timesteps(T)``; its state is not changed (except that its
            ``alphas_cumprod`` is moved to the device once).
        model_output: ``[B, C, h, w]`` the (guided) UNet output.
        timestep: t, an int, a 0-d tensor or ``[B]`` long tensor.
        sample: ``[B, C, h, w]`` x_t.
        eta: in (0, 1].
        background: ``[B, 1, h, w]`` bool, True at the latent positions the policy paints.
        prev_sample: ``[B, C, h, w]`` x_{t'} to score (training).
        variance_noise: ``[B, C, h, w]`` standard normal noise to sample x_{t'} with (sampling).

    Returns:
        :class:`DDIMStepOutput`, float32.

    Raises:
        ValueError: bad shapes, eta outside (0, 1], neither or both of prev_sample / variance_noise, a scheduler
            without ``set_timesteps`` or with thresholding.
    """
    if model_output.ndim != 4 or model_output.shape != sample.shape:
        raise ValueError(
            f"model_output and sample must both be [B, C, h, w], got {list(model_output.shape)} and "
            f"{list(sample.shape)}"
        )
    batch = sample.shape[0]
    if background.shape != (batch, 1, *sample.shape[2:]) or background.dtype != torch.bool:
        raise ValueError(
            f"background must be bool [{batch}, 1, {sample.shape[2]}, {sample.shape[3]}], got "
            f"{background.dtype} {list(background.shape)}"
        )
    if not 0 < eta <= 1:
        raise ValueError(f"eta must be in (0, 1], got {eta}")
    if (prev_sample is None) == (variance_noise is None):
        raise ValueError("pass exactly one of prev_sample (to score a stored step) or variance_noise (to sample)")
    given = prev_sample if prev_sample is not None else variance_noise
    if given.shape != sample.shape:
        raise ValueError(f"prev_sample/variance_noise must be {list(sample.shape)}, got {list(given.shape)}")
    if scheduler.config.thresholding:
        raise ValueError("dynamic thresholding is not supported by ddim_step_with_logprob")

    sample = sample.float().contiguous()
    model_output = model_output.float().contiguous()
    t = torch.as_tensor(timestep, device=sample.device).long()
    if t.ndim not in (0, 1) or (t.ndim == 1 and t.shape[0] != batch):
        raise ValueError(f"timestep must be a scalar or [{batch}], got shape {list(t.shape)}")
    alpha_prod_t, alpha_prod_prev = (a.reshape(-1, 1, 1, 1) for a in step_alphas(scheduler, t))
    beta_prod_t = 1 - alpha_prod_t

    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        pred_original_sample = (sample - beta_prod_t.sqrt() * model_output) / alpha_prod_t.sqrt()
        pred_epsilon = model_output
    elif prediction_type == "sample":
        pred_original_sample = model_output
        pred_epsilon = (sample - alpha_prod_t.sqrt() * pred_original_sample) / beta_prod_t.sqrt()
    elif prediction_type == "v_prediction":
        pred_original_sample = alpha_prod_t.sqrt() * sample - beta_prod_t.sqrt() * model_output
        pred_epsilon = alpha_prod_t.sqrt() * model_output + beta_prod_t.sqrt() * sample
    else:
        raise ValueError(f"unsupported prediction_type {prediction_type!r}")
    if scheduler.config.clip_sample:
        limit = scheduler.config.clip_sample_range
        pred_original_sample = pred_original_sample.clamp(-limit, limit)

    variance = (1 - alpha_prod_prev) / beta_prod_t * (1 - alpha_prod_t / alpha_prod_prev)
    std = eta * variance.sqrt()
    pred_sample_direction = (1 - alpha_prod_prev - std**2).sqrt() * pred_epsilon
    mean = alpha_prod_prev.sqrt() * pred_original_sample + pred_sample_direction

    if prev_sample is None:
        prev_sample = mean + std * variance_noise.float()
    else:
        prev_sample = prev_sample.float()
    log_density = -((prev_sample.detach() - mean) ** 2) / (2 * std**2) - std.log() - _HALF_LOG_TWO_PI
    return DDIMStepOutput(
        prev_sample=prev_sample,
        log_prob=background_mean(log_density, background),
        mean=mean,
        std=std.expand(batch, 1, 1, 1),
        pred_original_sample=pred_original_sample,
    )
