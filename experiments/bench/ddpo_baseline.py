"""The plain-diffusers DDPO epoch that issue 9's speed-ups are measured against (``experiments.bench.ddpo_gpu``).

ddpo-pytorch's loops on a diffusers ``UNet2DConditionModel`` with peft's LoRA, in eager mode: nothing of the project's
fast path (no compile, no reference gate, peft's float32 LoRA arithmetic), only the UNet work and the DDIM step.
"""

from __future__ import annotations

from typing import Any


def baseline_epoch(
    policy: Any,
    conditioning: Any,
    steps: int,
    optimizer: Any,
    seed: int,
    *,
    guidance: float,
    clip_range: float,
    kl_coef: float,
) -> None:
    """One epoch of plain-diffusers DDPO on ``policy.unet`` (ddpo-pytorch's loops; module docstring).

    Sampling: T guided forwards (batch 2B, no grad) and DDIM steps with log-probs; reference: T forwards with
    peft's adapters disabled; training: per timestep a forward with grad, log-prob, clipped surrogate + KL,
    backward (gradients accumulate over the T steps); one AdamW step.
    """
    # heavy (torch, diffusers): imported when the benchmark runs, so importing the module stays light
    import torch

    from policy.losses import clipped_policy_loss, gaussian_kl
    from rollout.ddim_logprob import ddim_step_with_logprob

    unet, scheduler, device = policy.unet, policy.scheduler, policy.device
    batch = conditioning.batch_size
    scheduler.set_timesteps(steps, device=device)
    timesteps = scheduler.timesteps
    generator = torch.Generator(device=device).manual_seed(seed)
    shape = (batch, policy.latent_channels, *conditioning.image_channels.shape[2:])
    background = conditioning.background

    def guided(latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        latent_input = torch.cat([latents, latents]).to(policy.dtype)
        latent_input = torch.cat([latent_input, conditioning.image_channels], dim=1)
        eps = unet(latent_input, t, encoder_hidden_states=conditioning.encoder_hidden_states).sample.float()
        uncond, cond = eps.chunk(2)
        return uncond + guidance * (cond - uncond)

    with torch.no_grad():
        latents = torch.randn(shape, generator=generator, device=device)
        chain, log_probs = [latents], []
        for t in timesteps:
            noise = torch.randn(shape, generator=generator, device=device)
            out = ddim_step_with_logprob(
                scheduler, guided(latents, t), t, latents, eta=1.0, background=background, variance_noise=noise
            )
            latents = out.prev_sample
            chain.append(latents)
            log_probs.append(out.log_prob)
        unet.disable_adapters()
        ref_means = [
            ddim_step_with_logprob(
                scheduler, guided(chain[i], t), t, chain[i], eta=1.0, background=background, prev_sample=chain[i + 1]
            ).mean
            for i, t in enumerate(timesteps)
        ]
        unet.enable_adapters()
    advantages = torch.randn(batch, generator=generator, device=device)
    for i, t in enumerate(timesteps):
        out = ddim_step_with_logprob(
            scheduler, guided(chain[i], t), t, chain[i], eta=1.0, background=background, prev_sample=chain[i + 1]
        )
        pg = clipped_policy_loss(out.log_prob, log_probs[i], advantages, clip_range)
        kl = gaussian_kl(out.mean, ref_means[i], out.std, background).mean()
        ((pg.loss + kl_coef * kl) / steps).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
