"""Off-policy evaluation of a generative candidate on logs of another generator's images.

The logs record which of a product's K generated variants the logging policy showed in which slot, with the
propensity π_0(a | x, k). The candidate is a generator, not a chooser among those variants, so it is given
propensities over them by importance resampling (Rubin 1988), within each (product, slot) cell c = (p, k):

    log ρ(v) = ELBO_candidate(v) − ELBO_base(v)          (an estimate of log π_cand(v) / π_base(v))
    π_e(a | x, k) = π_0(a | x, k) · ρ(v_a)^(1/τ) / Z_c,   Z_c = E_{π_0}[ρ^(1/τ) | product p shown in slot k]

i.e. the logging policy's choices re-weighted by how much more likely the candidate is to paint that image than
the base model: with τ = 1 the re-weighted choice in a cell is the logger's choice for that slot tilted by ρ, and
where the logger's choice does not depend on the image's content (many base draws, picked uniformly) it is
distributed as the candidate's own output (self-normalised importance resampling). The
importance weight of a logged impression is w = ρ^(1/τ) / Z_c, so no propensity of an unlogged action is ever
needed and the candidate's support lies inside the logger's; Z_c is the mean of ρ^(1/τ) over the cell's logged
impressions, so the weights average exactly 1 in every cell.

Why the cell is (product, slot) and not the product. The studio's default logger places by rank
(``offline_data/simulator/logging_policy.py`` ``place``): a variant's slot follows its logging score, so
P_0(v | p, k) differs between slots, and the slot is part of the context the candidate acts in (the examination
θ_k multiplies every click). A Z pooled over the product's slots leaves the weights averaging ≠ 1 within a slot
(a gold-seeking candidate on the studio logs: 0.85 in slot 1, 1.21 in slot 4), i.e. it silently moves
impressions from one slot to another, and since the click rate depends strongly on the slot the IPS/DR lift is
biased. Normalising per cell keeps the slot distribution P_0(p, k) the logger's exactly: the candidate only
re-chooses the variant that fills a slot the logger filled with that product. The estimated value (clicks per
impression, position-based model) is

    V = Σ_{p,k} P_0(p, k) Σ_v P_0(v | p, k) ρ(v)^(1/τ) / Z_c · θ_k · attr(v).

A cell with one impression gets weight 1: it carries no information about the candidate, and the
estimate falls back to the logger there; ``thin_cell_share`` (diagnostics) is the share of impressions in cells
of fewer than :data:`THIN_CELL_IMPRESSIONS`, the part of the log where the estimate is mostly the logger's.
Under shuffled placement P_0(v | p, k) = P_0(v | p) and the cells only split the same estimate more finely.

ELBO difference. With both chains Gaussian with the same σ_t (DDIM, η > 0), the q terms of the two ELBOs cancel:

    ELBO_θ(x0) − ELBO_ref(x0) = E_q[ Σ_t log p_θ(x_t' | x_t) − log p_ref(x_t' | x_t) ]

with q the DDIM inference chain of the sampler's schedule (DDIM paper eq. 7: x_T ~ N(√a_T x0, 1 − a_T), x_t' ~
N(√a_t' x0 + √(1 − a_t' − σ_t²) (x_t − √a_t x0) / √(1 − a_t), σ_t²)). It is the implicit reward of
Diffusion-DPO (Wallace et al. 2023) without its β. The inner expectation over x_t' is taken exactly: both
transitions are Gaussians with the same σ_t, so E_q[log p_θ(x_t' | x_t) − log p_ref(x_t' | x_t)] is the difference
evaluated at the posterior mean of q(x_t' | x_t, x0), (‖m − μ_ref‖² − ‖m − μ_θ‖²) / (2σ_t²), the diffusion ELBO's
usual L_t term. Each transition is scored by ``policy.replay.replay_rows`` (through ``rollout.denoise.denoise_step``,
the function sampling and training use) over the background latents only, with the product latents replaced as
the sampler replaces them; ``elbo_draws`` draws of the chain x_T, ..., x_1 are averaged. The ELBO gap is not the
exact log-likelihood ratio (the posteriors' KLs differ), which is one reason the logged non-inferiority gate
has a margin.

The direct method uses the reward model: q̂(x, k, a) = θ_k · P̂(click | slot 1, segment, image a).

What this check knows (``experiments/bench/export_ope_fidelity.py``, studio test split: 58 products × 8 variants,
7.8 k impressions; three DDPO seeds with held-out gold gains +0.26/+0.19/+0.23, Diffusion-DPO +0.02, RWR +0.01).
The estimate is the value of a *chooser among the logged base-model variants*, tilted toward the ones the
candidate finds likely; a generator that moved ~50 nats of KL away from the base paints images none of the 8
logged variants resemble, and which of them it finds likelier is nearly unrelated to gold (within-product
correlation of log ρ with gold −0.005 to +0.07 for the DDPO seeds, +0.13 to +0.20 for DPO/RWR, trained on
logged data). Monte Carlo noise is not the cause (at 2 draws 70 % of the 57-nat within-product spread of log ρ
is signal, 90 % at 8), nor click noise: the same weights applied to the simulator's true click probabilities
give lifts of −0.025 to +0.005 for the DDPO seeds. Over τ ∈ {1, 27, 46} and draws ∈ {2, 8} the DR lift's rank
correlation with the gold gains stayed ≤ 0.03 (negative in 5 of 6 settings); flatter τ only narrows the interval
toward the logger. Read the lift as a non-inferiority check of the candidate's preferences among logged images,
not as an estimate of its A/B effect: the export's gate of that name is ``logged_noninferiority``, and its lift
gate judges the candidate's own fresh samples instead (the direct method, ``experiments/export/direct.py``).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from experiments.export.config import CandidateOPEConfig
from experiments.ope.evaluate import CandidatePolicy, OPEReport, build_candidate, evaluate
from experiments.ope.inputs import load_impressions
from offline_data.errors import BackdropError
from offline_data.outputs import accepted_path
from policy.model import InpaintPolicy
from policy.replay import StepRows, replay_rows
from reward.data import load_reward_data
from reward.scorer import ScoringRequest
from rollout.config import SamplerConfig
from rollout.ddim_logprob import ddim_step_std, step_alphas
from rollout.masks import latent_product_mask
from rollout.preservation import noise_product_latents, replace_product_latents, replacement_alphas
from rollout.trajectory import Trajectory

logger = logging.getLogger(__name__)


def forward_chain(
    scheduler,
    x0: torch.Tensor,
    masked_latents: torch.Tensor,
    latent_product: torch.Tensor,
    noise: torch.Tensor,
    *,
    timesteps: torch.Tensor,
    eta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A chain x_T, ..., x_final drawn from the DDIM inference process q(· | x0) of the sampler's schedule.

    Args:
        scheduler: the policy's DDIMScheduler after ``set_timesteps(T)``.
        x0: [B, C, h, w] clean latents of the images.
        masked_latents: [B, C, h, w] latents of the images with the background zeroed (the product's latents).
        latent_product: [B, 1, h, w] bool product latent positions.
        noise: [B, T + 1, C, h, w] standard normal: entry 0 starts the chain (and noises the product latents, as
            the sampler's start noise does), entry i + 1 is step i's noise.
        timesteps: [T] the sampler's timesteps.
        eta: DDIM η of the sampler (σ_t = η × the DDPM posterior std).

    Returns:
        ``(chain [B, T + 1, C, h, w], posterior_means [B, T, C, h, w])`` float32: the chain with product positions
        replaced exactly as ``rollout.sampler`` replaces them, and the mean of q(x_t' | x_t, x0) of each step
        (product positions replaced likewise).
    """
    steps = timesteps.shape[0]
    if noise.shape != (x0.shape[0], steps + 1, *x0.shape[1:]):
        raise ValueError(f"noise must be {[x0.shape[0], steps + 1, *x0.shape[1:]]}, got {list(noise.shape)}")
    alphas = replacement_alphas(scheduler, timesteps)
    stds = ddim_step_std(scheduler, timesteps, eta)
    start = noise[:, 0]
    first, _ = step_alphas(scheduler, timesteps[:1])
    latents = first.sqrt() * x0 + (1 - first).sqrt() * start
    latents = replace_product_latents(latents, latent_product, noise_product_latents(masked_latents, start, alphas[0]))
    chain, means = [latents], []
    for i in range(steps):
        alpha_t, alpha_prev = step_alphas(scheduler, timesteps[i : i + 1])
        sigma = stds[i]
        direction = (latents - alpha_t.sqrt() * x0) / (1 - alpha_t).sqrt()
        mean = alpha_prev.sqrt() * x0 + (1 - alpha_prev - sigma**2).clamp_min(0).sqrt() * direction
        product = noise_product_latents(masked_latents, start, alphas[i + 1])
        means.append(replace_product_latents(mean, latent_product, product))
        latents = replace_product_latents(mean + sigma * noise[:, i + 1], latent_product, product)
        chain.append(latents)
    return torch.stack(chain, dim=1).float(), torch.stack(means, dim=1).float()


def elbo_log_ratios(
    policy: InpaintPolicy,
    pixels: torch.Tensor,
    masks: torch.Tensor,
    prompts: Sequence[str],
    sampler: SamplerConfig,
    *,
    draws: int,
    seed: int,
    batch_size: int = 32,
    progress: bool = False,
) -> np.ndarray:
    """ELBO_candidate − ELBO_base of each image, in nats (module docstring): [N] float64.

    The mean over draws of :func:`elbo_log_ratio_draws` (same arguments).

    Args:
        policy: the candidate (its adapter on); the base is the same policy inside ``policy.as_base()``.
        pixels: [N, 3, H, W] uint8 logged images.
        masks: [N, H, W] bool their product masks (the policy acts on the rest).
        prompts: N prompts the images were generated from.
        sampler: steps, η and guidance of the candidate's sampler (the transitions are the sampler's).
        draws: forward-noising draws averaged per image.
        seed: seeds the draws (image n, draw d uses the generator seeded with (seed, d, n)).
    """
    per_draw = elbo_log_ratio_draws(
        policy, pixels, masks, prompts, sampler, draws=draws, seed=seed, batch_size=batch_size, progress=progress
    )
    return per_draw.mean(axis=1)


@torch.no_grad()
def elbo_log_ratio_draws(
    policy: InpaintPolicy,
    pixels: torch.Tensor,
    masks: torch.Tensor,
    prompts: Sequence[str],
    sampler: SamplerConfig,
    *,
    draws: int,
    seed: int,
    batch_size: int = 32,
    progress: bool = False,
) -> np.ndarray:
    """Each forward-noising draw's ELBO log-ratio of each image, in nats: [N, draws] float64.

    Column d is draw d of :func:`elbo_log_ratios` with the same seed, so the first n columns' mean is its value
    at ``draws = n``; the spread over columns measures its Monte Carlo noise (``experiments/bench/
    export_ope_fidelity.py``). Arguments as :func:`elbo_log_ratios`.
    """
    if pixels.dtype != torch.uint8 or pixels.ndim != 4 or masks.shape != (pixels.shape[0], *pixels.shape[2:]):
        raise ValueError(
            f"pixels must be [N, 3, H, W] uint8 with masks [N, H, W], got {list(pixels.shape)}, {list(masks.shape)}"
        )
    if len(prompts) != pixels.shape[0]:
        raise ValueError(f"got {pixels.shape[0]} images but {len(prompts)} prompts")
    device = policy.device
    scheduler = policy.scheduler
    scheduler.set_timesteps(sampler.num_steps, device=device)
    timesteps = scheduler.timesteps.long()
    steps = timesteps.shape[0]
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    out = np.zeros((pixels.shape[0], draws), dtype=np.float64)
    chunks = range(0, pixels.shape[0], batch_size)
    for start in tqdm(chunks, desc="candidate ELBO ratios", unit="batch", disable=not progress):
        stop = min(start + batch_size, pixels.shape[0])
        images = pixels[start:stop].to(device=device, dtype=torch.float32) / 127.5 - 1.0
        mask = masks[start:stop].to(device)
        x0 = policy.encode_images(images)
        masked_latents = policy.encode_images(images * mask[:, None])
        latent_product = latent_product_mask(mask, policy.vae_scale_factor)
        batch = stop - start
        prompt_embeds = policy.encode_prompts(list(prompts[start:stop])).float()
        negative = policy.encode_prompts([""]).expand(batch, -1, -1).float().contiguous()
        background_dims = (~latent_product).flatten(1).sum(dim=1).double().cpu() * x0.shape[1]
        for draw in range(draws):
            noise = torch.stack(
                [
                    torch.randn(
                        (steps + 1, *x0.shape[1:]), generator=torch.Generator().manual_seed(_draw_seed(seed, draw, n))
                    )
                    for n in range(start, stop)
                ]
            ).to(device)
            chain, posterior_means = forward_chain(
                scheduler, x0, masked_latents, latent_product, noise, timesteps=timesteps, eta=sampler.eta
            )
            trajectory = Trajectory(
                latents=chain,
                timesteps=timesteps,
                log_probs=torch.zeros(batch, steps, device=chain.device),
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative,
                masked_image_latents=masked_latents.float(),
                latent_product=latent_product,
                product_mask=mask,
                request_ids=[f"logged-{n}" for n in range(start, stop)],
                product_ids=[f"logged-{n}" for n in range(start, stop)],
                prompts=list(prompts[start:stop]),
                seeds=[_draw_seed(seed, draw, n) for n in range(start, stop)],
                eta=sampler.eta,
                guidance_scale=sampler.guidance_scale,
            )
            rows = StepRows.every(batch, steps)
            difference = torch.zeros(batch, dtype=torch.float64)
            for part in rows.chunks(4 * batch):
                # Scored at the posterior mean: E_q[log p_θ − log p_ref | x_t] exactly (both Gaussians share σ_t),
                # which removes the step noise's share of the Monte Carlo variance.
                target = posterior_means[part.sample.to(device), part.step.to(device)]
                candidate = replay_rows(policy, trajectory, part, target).log_prob
                with policy.as_base():
                    base = replay_rows(policy, trajectory, part, target).log_prob
                difference.index_add_(0, part.sample, (candidate - base).double().cpu())
            out[start:stop, draw] = (difference * background_dims).numpy()
    return out


def _draw_seed(seed: int, draw: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, draw, index]).generate_state(1)[0])


@dataclasses.dataclass(frozen=True, eq=False)
class LoggedImpressions:
    """Per impression of the log (in the log's input order): which image, product, segment and slot."""

    image_row: np.ndarray
    """[n] int64 row of the shown image among the scored images."""
    product: np.ndarray
    """[n] product ids (object)."""
    segment: np.ndarray
    """[n] segment names (object)."""
    slot: np.ndarray
    """[n] int64 0-based slot."""
    propensity: np.ndarray
    """[n] float64 logged π_0 (NaN when not logged)."""


THIN_CELL_IMPRESSIONS = 5
"""A (product, slot) cell with fewer logged impressions than this is thin: its Z_c is the mean of a handful of
ρ's, and with one impression the weight is 1 (the logger's choice). ``thin_cell_share`` counts their impressions."""


def candidate_propensities(
    impressions: LoggedImpressions,
    log_ratio: np.ndarray,
    click: dict[str, np.ndarray],
    examination: np.ndarray,
    *,
    temperature: float = 1.0,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The candidate's per-impression columns for ``experiments.ope.evaluate.build_candidate`` (module docstring).

    Within each (product, slot) cell c the weight is w = ρ^(1/τ) / Z_c with Z_c the mean of ρ^(1/τ) over the
    cell's impressions, so the weights average 1 in every cell; candidate_propensity = min(π_0 · w, 1). The
    direct method of a row in cell c = (p, k) and segment s is θ_k · mean over c's impressions of w · q̂_s(image)
    (every segment's rows share the cell's variant choice: the logger's choice does not depend on the segment).

    Args:
        impressions: the logged impressions.
        log_ratio: [U] float ELBO log-ratio of each scored image (nats).
        click: segment -> [U] the reward model's P(click | slot 1) of each image for that segment.
        examination: [S] θ_k of the reward model's click head.
        temperature: τ.

    Returns:
        ``(columns, diagnostics)``: candidate_propensity, dm_prediction, dm_logged ([n] float64 each), and
        ``clipped_share`` (share of propensities clipped to 1), ``max_weight``, ``weight_ess_fraction`` (Kish ESS
        of the weights / n), ``products``, ``cells`` (the (product, slot) cells) and ``thin_cell_share`` (share
        of impressions in cells of fewer than :data:`THIN_CELL_IMPRESSIONS` impressions).
    """
    if np.isnan(impressions.propensity).any():
        raise ValueError("the logs lack propensities: the candidate's propensities re-weight the logged ones")
    scaled = np.asarray(log_ratio, dtype=np.float64)[impressions.image_row] / temperature
    theta = np.asarray(examination, dtype=np.float64)[impressions.slot]
    dm_logged = theta * np.array([click[s][r] for s, r in zip(impressions.segment, impressions.image_row)])
    products, product_index = np.unique(impressions.product, return_inverse=True)
    keys = np.stack([product_index.ravel(), impressions.slot], axis=1)
    cells, cell = np.unique(keys, axis=0, return_inverse=True)
    cell = cell.ravel()
    sizes = np.bincount(cell, minlength=len(cells)).astype(np.float64)
    # Shift by the cell's largest log-ratio before exp: ρ^(1/τ) overflows for large ratios or small τ, and Z_c
    # is invariant to a per-cell factor.
    top = np.full(len(cells), -np.inf)
    np.maximum.at(top, cell, scaled)
    tilt = np.exp(scaled - top[cell])
    weights = tilt / (np.bincount(cell, weights=tilt, minlength=len(cells)) / sizes)[cell]
    dm_prediction = np.empty_like(scaled)
    for segment in np.unique(impressions.segment):
        mine = impressions.segment == segment
        q = np.asarray(click[segment], dtype=np.float64)[impressions.image_row]
        cell_value = np.bincount(cell, weights=weights * q, minlength=len(cells)) / sizes
        dm_prediction[mine] = cell_value[cell[mine]]
    dm_prediction *= theta
    raw = impressions.propensity * weights
    columns = {"candidate_propensity": np.minimum(raw, 1.0), "dm_prediction": dm_prediction, "dm_logged": dm_logged}
    diagnostics = {
        "clipped_share": float((raw > 1.0).mean()),
        "max_weight": float(weights.max()),
        "weight_ess_fraction": float(weights.sum() ** 2 / (weights**2).sum() / weights.size),
        "products": int(products.size),
        "cells": len(cells),
        "thin_cell_share": float((sizes[cell] < THIN_CELL_IMPRESSIONS).mean()),
    }
    return columns, diagnostics


class OPEUnavailableError(BackdropError):
    """The logs cannot give the candidate an off-policy estimate (no propensities, no variants, ...)."""

    exit_code = 2


@dataclasses.dataclass(frozen=True, eq=False)
class CandidateOPE:
    """What :func:`evaluate_candidate` measured."""

    report: OPEReport
    candidate: CandidatePolicy
    diagnostics: dict
    log_ratio: dict[str, float]
    """image_id -> ELBO log-ratio (nats)."""


@dataclasses.dataclass(frozen=True, eq=False)
class OPELogs:
    """The logs a candidate is evaluated on, read once: what does not depend on the candidate."""

    log: object
    """``experiments.ope.evaluate`` impression log (the logging policy's clicks and propensities)."""
    source: Path
    """The impressions file read."""
    impressions: LoggedImpressions
    event_ids: np.ndarray
    """[n] event ids of the impressions (object), in ``impressions``' order."""
    image_ids: list[str]
    """[U] ids of the shown images (the rows ``impressions.image_row`` points at)."""
    pixels: torch.Tensor
    """[U, 3, H, W] uint8 the shown images."""
    masks: torch.Tensor
    """[U, H, W] bool their product masks."""
    prompts: list[str]
    """U prompts the images were generated from ("" when not logged)."""
    click: dict[str, np.ndarray]
    """segment -> [U] float64 the reward model's P(click | slot 1) of each image."""
    examination: np.ndarray
    """[S] float64 θ_k of the reward model's click head."""


def load_ope_logs(logs_dir: Path, scorer, *, require_propensity: bool = True) -> OPELogs:
    """Read the impressions and shown images of ``logs_dir`` and score them with the reward model's click head.

    ``require_propensity`` False reads logs without propensities too (NaN in ``impressions.propensity``): the
    logged correction of the direct lift (``experiments/export/logged_correction.py``) needs clicks, not π_0.

    Raises:
        OPEUnavailableError: the logs lack propensities (when required), or use a slot the reward model does not
            know.
    """

    with tempfile.TemporaryDirectory(prefix="backdrop-export-ope-") as workdir:
        inputs = load_impressions(logs_dir, Path(workdir) / "validated")
        table = pq.read_table(accepted_path(Path(workdir) / "validated", "impressions"))
    columns = {
        name: table.column(name).to_numpy(zero_copy_only=False)
        for name in ("event_id", "image_id", "product_id", "segment", "position")
    }
    propensity = (
        table.column("propensity").to_numpy(zero_copy_only=False).astype(np.float64)
        if "propensity" in table.column_names
        else np.full(table.num_rows, np.nan)
    )
    if require_propensity and np.isnan(propensity).any():
        missing = int(np.isnan(propensity).sum())
        raise OPEUnavailableError(f"{inputs.path}: {missing} impression(s) without a logged propensity")
    data = load_reward_data(logs_dir, load_masks=True)
    where = {image_id: i for i, image_id in enumerate(data.images.image_ids)}
    shown = np.array([where[i] for i in columns["image_id"].tolist()], dtype=np.int64)
    used, image_row = np.unique(shown, return_inverse=True)
    pixels = data.images.pixels[torch.from_numpy(used)]
    masks = data.images.masks[torch.from_numpy(used)]
    prompts = [data.images.prompts[i] or "" for i in used.tolist()]
    click = {}
    for segment in sorted(set(columns["segment"].tolist())):
        requests = [
            ScoringRequest(segment=segment, prompt=prompts[j], product_kind=data.images.kinds[i])
            for j, i in enumerate(used.tolist())
        ]
        click[segment] = scorer(pixels, requests, masks=masks).heads["click"].double().numpy()
    impressions = LoggedImpressions(
        image_row=image_row,
        product=np.asarray(columns["product_id"], dtype=object),
        segment=np.asarray(columns["segment"], dtype=object),
        slot=columns["position"].astype(np.int64) - 1,
        propensity=propensity,
    )
    examination = scorer.ensemble.examination().cpu().numpy().astype(np.float64)
    if impressions.slot.max() >= examination.size:
        raise OPEUnavailableError(
            f"{inputs.path}: impressions use slot {impressions.slot.max() + 1}, the reward model knows "
            f"{examination.size}"
        )
    return OPELogs(
        log=inputs.log,
        source=Path(inputs.path),
        impressions=impressions,
        event_ids=np.asarray(columns["event_id"], dtype=object),
        image_ids=[data.images.image_ids[i] for i in used.tolist()],
        pixels=pixels,
        masks=masks,
        prompts=prompts,
        click=click,
        examination=examination,
    )


def estimate_candidate(logs: OPELogs, log_ratio: np.ndarray, config: CandidateOPEConfig) -> CandidateOPE:
    """The OPE report of a candidate whose ELBO log-ratios on ``logs.image_ids`` are ``log_ratio`` ([U] nats).

    Uses ``config.ratio_temperature``, ``config.ope`` and ``config.seed`` (bootstrap); ``config.elbo_draws`` is
    only recorded. Separate from :func:`elbo_log_ratios` so one set of ratios can be evaluated at several τ.
    """
    log_ratio = np.asarray(log_ratio, dtype=np.float64)
    if log_ratio.shape != (len(logs.image_ids),):
        raise ValueError(
            f"log_ratio must be [{len(logs.image_ids)}] (one per shown image), got {list(log_ratio.shape)}"
        )
    values, diagnostics = candidate_propensities(
        logs.impressions, log_ratio, logs.click, logs.examination, temperature=config.ratio_temperature
    )
    candidate = build_candidate(logs.log, name="candidate", source=str(logs.source), **values)
    report = evaluate(logs.log, candidate, config.ope, seed=config.seed)
    diagnostics |= {
        "logs": str(logs.source),
        "images": len(logs.image_ids),
        "log_ratio_mean": float(log_ratio.mean()),
        "log_ratio_sd": float(log_ratio.std()),
        "elbo_draws": config.elbo_draws,
        "ratio_temperature": config.ratio_temperature,
    }
    ratios = {image_id: float(r) for image_id, r in zip(logs.image_ids, log_ratio)}
    return CandidateOPE(report=report, candidate=candidate, diagnostics=diagnostics, log_ratio=ratios)


def evaluate_candidate(
    policy: InpaintPolicy,
    scorer,
    logs_dir: Path,
    config: CandidateOPEConfig,
    sampler: SamplerConfig,
    *,
    progress: bool = False,
) -> CandidateOPE:
    """Off-policy estimate of the candidate's clicks on the logs in ``logs_dir`` (module docstring).

    :func:`load_ope_logs`, then :func:`elbo_log_ratios` of the shown images, then :func:`estimate_candidate`.

    Raises:
        OPEUnavailableError: the logs lack propensities or images.
        OverlapError / MissingPropensityError: ``experiments.ope.evaluate.evaluate`` refuses (poor overlap).
    """
    logs = load_ope_logs(logs_dir, scorer)
    log_ratio = elbo_log_ratios(
        policy,
        logs.pixels,
        logs.masks,
        logs.prompts,
        sampler,
        draws=config.elbo_draws,
        seed=config.seed,
        batch_size=config.batch_size,
        progress=progress,
    )
    return estimate_candidate(logs, log_ratio, config)
