"""Diffusion-DPO on pairwise preference logs (Wallace et al. 2023, "Diffusion Model Alignment Using Direct
Preference Optimization").

Each judged pair (preferred image w, rejected image l) is noised with the SAME noise at the SAME timestep; the
trained model's and the base model's (adapter disabled) noise-prediction errors on both give the margin
z = -beta / 2 ((e_w - e_w_base) - (e_l - e_l_base)) and the loss -log sigmoid(z) (``policy.losses``). Errors are
averaged over background latent dims only. Ties are trained as a label of 1/2 or skipped; pairs of two different
products are skipped by default (DPO compares two outputs for one condition); every such choice is counted.

Adapted from diffusers' ``examples/research_projects/diffusion_dpo/train_diffusion_dpo.py`` (v0.42); our rewrite.
Modifications: inpainting conditioning and a background-only error; the paper's reference model is the base,
the same UNet with its adapter disabled (no second copy); ties as half labels; counts of skipped pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from policy.losses import diffusion_dpo_loss, dpo_logit
from policy.model import InpaintPolicy
from policy.offline import EncodedImages, noise_prediction_errors, sample_noise
from policy.offline_config import DPOConfig


@dataclass(frozen=True, kw_only=True, eq=False)
class PreferencePairs:
    """Pairs ready for DPO: rows of the preferred and the rejected image, and whether the judgement was a tie."""

    preferred: torch.Tensor
    """``[n]`` int64 rows (for a tie: image a)."""
    rejected: torch.Tensor
    """``[n]`` int64 rows (for a tie: image b)."""
    tie: torch.Tensor
    """``[n]`` bool."""
    counts: dict[str, int]
    """read, used, ties_used, ties_skipped, cross_product_skipped."""

    def __len__(self) -> int:
        return int(self.preferred.shape[0])


def preference_pairs(
    image_a: Sequence[int],
    image_b: Sequence[int],
    choice: Sequence[str],
    product_ids: Sequence[str],
    config: DPOConfig,
) -> PreferencePairs:
    """Orient judged pairs as (preferred, rejected) and apply the tie and cross-product policies.

    Args:
        image_a, image_b: rows of the two images of each pair.
        choice: "a", "b" or "tie" per pair.
        product_ids: the product id of every image row.
        config: tie and cross-product handling.

    Raises:
        ValueError: misaligned inputs, an unknown choice (naming the 1-based pair), or no usable pair.
    """
    if not len(image_a) == len(image_b) == len(choice):
        raise ValueError(f"got {len(image_a)} image_a, {len(image_b)} image_b and {len(choice)} choices")
    preferred, rejected, tie = [], [], []
    counts = {"read": len(choice), "used": 0, "ties_used": 0, "ties_skipped": 0, "cross_product_skipped": 0}
    for number, (a, b, c) in enumerate(zip(image_a, image_b, choice), start=1):
        if c not in ("a", "b", "tie"):
            raise ValueError(f"pair {number}: choice must be 'a', 'b' or 'tie', got {c!r}")
        if product_ids[a] != product_ids[b] and config.cross_product == "skip":
            counts["cross_product_skipped"] += 1
            continue
        if c == "tie":
            if config.ties == "skip":
                counts["ties_skipped"] += 1
                continue
            counts["ties_used"] += 1
        first, second = (b, a) if c == "b" else (a, b)
        preferred.append(first)
        rejected.append(second)
        tie.append(c == "tie")
    counts["used"] = len(preferred)
    if not preferred:
        raise ValueError(f"no usable preference pair among {counts['read']} ({counts})")
    return PreferencePairs(
        preferred=torch.tensor(preferred, dtype=torch.int64),
        rejected=torch.tensor(rejected, dtype=torch.int64),
        tie=torch.tensor(tie, dtype=torch.bool),
        counts=counts,
    )


class DPOObjective:
    """The Diffusion-DPO loss on random minibatches of pairs (an ``OfflineObjective``)."""

    name = "dpo"

    def __init__(self, encoded: EncodedImages, pairs: PreferencePairs, config: DPOConfig) -> None:
        rows = torch.cat([pairs.preferred, pairs.rejected])
        if int(rows.min()) < 0 or int(rows.max()) >= len(encoded):
            raise ValueError(f"pair rows must index the {len(encoded)} encoded images")
        self.encoded = encoded
        self.pairs = pairs
        self.config = config

    def summary(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.pairs.counts.items()}

    def loss(
        self, policy: InpaintPolicy, generator: torch.Generator, batch_size: int, timesteps: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        pick = torch.randint(len(self.pairs), (batch_size,), generator=generator)
        preferred, rejected, tie = self.pairs.preferred[pick], self.pairs.rejected[pick], self.pairs.tie[pick]
        t, noise = sample_noise(generator, batch_size, self.encoded.latents.shape[1:], timesteps)
        # Both images of a pair get the same t and the same noise, in one UNet call.
        rows, t2, noise2 = torch.cat([preferred, rejected]), torch.cat([t, t]), torch.cat([noise, noise])
        model_errors = noise_prediction_errors(policy, self.encoded, rows, t2, noise2)
        with torch.no_grad(), policy.as_base():
            base_errors = noise_prediction_errors(policy, self.encoded, rows, t2, noise2)
        logit = dpo_logit(
            model_errors[:batch_size],
            model_errors[batch_size:],
            base_errors[:batch_size],
            base_errors[batch_size:],
            self.config.beta,
        )
        losses = diffusion_dpo_loss(logit, tie.to(logit.device))
        decided = ~tie
        metrics = {
            "dpo/loss": float(losses.detach().mean()),
            "dpo/margin": float(logit.detach().mean()),
            "dpo/implicit_accuracy": float((logit.detach()[decided.to(logit.device)] > 0).float().mean())
            if bool(decided.any())
            else float("nan"),
            # "ref" in this metric's name is the base: the name is kept for existing run folders and dashboards
            "dpo/model_minus_ref_error": float((model_errors - base_errors).detach().mean()),
        }
        return losses.mean(), metrics
