"""Evaluation of a pretrained base model on held-out studio-world data (numbers for the manifest).

- reconstruction: VAE PSNR on held-out scenes and composites at full resolution;
- seams: held-out composites decoded from the latents the sampler ends with (product cells from the masked
  image), by the plain and by the mask-aware decoder, product pixels composited back; measured with
  ``policy.vae.measure_seams`` and with the simulator's gold seam term;
- prompt adherence of samples drawn by ``rollout.sampler`` (held-out products and prompts): the gold
  adherence term with the sample's own prompt vs a shuffled prompt (chance) vs real renders (ceiling), and
  nearest-prompt classifiers (logistic regression on style-encoder features of rendered composites) that read
  each attribute back from the samples;
- style: text-free samples with style tokens from a board of four scenes of one material vs without style,
  read back by the material classifier.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from experiments.studio.pretrain.autoencoder import encode_latents, psnr, sampler_latents
from experiments.studio.pretrain.config import PretrainEvalConfig
from experiments.studio.pretrain.data import (
    ProductPool,
    ScenePool,
    composite,
    masked_images,
    render_product_pool,
    render_scene_pool,
    to_unit_range,
)
from offline_data.simulator import gold_components, measure_features, parse_prompt
from offline_data.simulator.engagement import PANEL_SEGMENT
from policy.model import InpaintPolicy
from policy.style import StudioStyleEncoder, StyleConditioning, StyledModel
from policy.vae import measure_seams
from rollout.config import SamplerConfig
from rollout.request import InpaintRequest
from rollout.sampler import sample_trajectories

logger = logging.getLogger(__name__)

ATTRIBUTES = ("material", "colour", "surface", "lighting")
"""Prompt attributes the nearest-prompt classifiers read back."""
CLASSIFIER_STREAM = 11


@dataclass(frozen=True, eq=False)
class EvaluationData:
    """Held-out scenes and products (their own random streams of the data seed)."""

    scenes: ScenePool
    products: ProductPool


def attribute_labels(prompt: str) -> dict[str, str]:
    """The attributes of a prompt, with "none" for a missing colour."""
    spec = parse_prompt(prompt)
    return {"material": spec.material, "colour": spec.colour or "none", "surface": spec.surface,
            "lighting": spec.lighting}  # fmt: skip


class PromptClassifier:
    """Reads prompt attributes back from composites: one logistic regression per attribute on style features."""

    def __init__(self, encoder: StudioStyleEncoder, images: torch.Tensor, prompts: list[str]) -> None:
        self.encoder = encoder
        features = encoder.encode(images).numpy()
        self.models = {}
        for attribute in ATTRIBUTES:
            labels = [attribute_labels(p)[attribute] for p in prompts]
            model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
            self.models[attribute] = model.fit(features, labels)

    def accuracy(self, images: torch.Tensor, prompts: list[str]) -> dict[str, float]:
        """Fraction of images whose attribute is read back as the prompt's, per attribute."""
        features = self.encoder.encode(images).numpy()
        out = {}
        for attribute, model in self.models.items():
            truth = np.array([attribute_labels(p)[attribute] for p in prompts])
            out[attribute] = float((model.predict(features) == truth).mean())
        return out

    def chance(self, prompts: list[str]) -> dict[str, float]:
        """Accuracy of always answering each attribute's most frequent value among ``prompts``."""
        out = {}
        for attribute in ATTRIBUTES:
            _, counts = np.unique([attribute_labels(p)[attribute] for p in prompts], return_counts=True)
            out[attribute] = float(counts.max() / counts.sum())
        return out


def _hwc(images: torch.Tensor) -> np.ndarray:
    return images.permute(0, 2, 3, 1).numpy()


def _requests(scenes: ScenePool, products: ProductPool, count: int) -> list[InpaintRequest]:
    requests = []
    for i in range(count):
        j = i % len(products)
        requests.append(InpaintRequest(
            request_id=f"eval-{i}", product_id=f"heldout-{j}", segment=PANEL_SEGMENT, prompt=scenes.prompts[i],
            product_rgb=products.rgb[j], product_mask=products.masks[j],
        ))  # fmt: skip
    return requests


@torch.no_grad()
def evaluate_reconstruction(policy: InpaintPolicy, data: EvaluationData) -> dict[str, float]:
    """VAE PSNR (dB) on held-out scenes and composites, full resolution."""
    scenes = data.scenes.images
    composites = composite(scenes, data.products.rgb[: len(scenes)], data.products.masks[: len(scenes)])
    out = {}
    for name, images in (("scenes", scenes), ("composites", composites)):
        x = to_unit_range(images)
        latents = encode_latents(policy.vae, x.to(policy.device))
        decoded = policy.vae.decode(latents).sample.float().cpu()
        out[f"vae/psnr_{name}"] = psnr(decoded, x)
    return out


@torch.no_grad()
def evaluate_seams(policy: InpaintPolicy, data: EvaluationData) -> tuple[dict[str, float], list[np.ndarray]]:
    """Seam measures of held-out composites: the truth, the plain decoder, the mask-aware decoder.

    Returns the metrics and three example images (truth, plain, mask-aware) of the first composite.
    """
    count = min(len(data.scenes), len(data.products))
    masks = data.products.masks[:count]
    truth = composite(data.scenes.images[:count], data.products.rgb[:count], masks)
    masked = masked_images(data.products.rgb[:count], masks).to(policy.device)
    masked_latents = encode_latents(policy.vae, masked) * policy.vae.config.scaling_factor
    latents = sampler_latents(policy.vae, truth.to(policy.device), masked_latents, masks.to(policy.device))
    decoded = {"plain": policy.decode_latents(latents)}
    if policy.mask_decoder is not None:
        decoded["aware"] = policy.decode_latents(latents, masked_image=masked, product_mask=masks)
    images = {"truth": truth}
    for name, pixels in decoded.items():
        generated = ((pixels.cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
        images[name] = composite(generated, data.products.rgb[:count], masks)
    prompts = list(data.scenes.prompts[:count])
    out = {}
    for name, pixels in images.items():
        seams = measure_seams(pixels, masks)
        gold = gold_components(_hwc(pixels), masks.numpy(), prompts, [PANEL_SEGMENT] * count)
        out[f"seam/colour_step_{name}"] = float(seams.colour_step.mean())
        out[f"seam/gradient_excess_{name}"] = float(seams.gradient_excess.mean())
        out[f"seam/gold_seam_term_{name}"] = float(gold["seam"].mean())
        if name != "truth":
            background = (~masks)[:, None].expand(-1, 3, -1, -1)
            out[f"seam/psnr_background_{name}"] = psnr(
                to_unit_range(pixels)[background], to_unit_range(truth)[background]
            )
    examples = [_hwc(images[name][:1])[0] for name in images]
    return out, examples


@torch.no_grad()
def evaluate_samples(
    policy: InpaintPolicy,
    style: StyleConditioning,
    data: EvaluationData,
    classifier: PromptClassifier,
    config: PretrainEvalConfig,
    *,
    seed: int,
) -> tuple[dict[str, float], dict[str, list]]:
    """Prompt adherence and style effect of samples (module docstring); returns metrics and sheet rows."""
    sampler = SamplerConfig(num_steps=config.num_steps, guidance_scale=config.guidance_scale, eta=1.0)
    requests = _requests(data.scenes, data.products, config.samples)
    rollout = sample_trajectories(policy, requests, [seed + i for i in range(len(requests))], sampler)
    prompts = [r.prompt for r in requests]
    masks = torch.stack([r.product_mask for r in requests])
    shuffled = prompts[1:] + prompts[:1]
    real = composite(data.scenes.images[: len(requests)], torch.stack([r.product_rgb for r in requests]), masks)
    out = {
        "samples/preservation_max_abs_diff": float(rollout.preservation.max_abs_diff),
        "samples/count": float(len(requests)),
    }
    for name, images, texts in (("samples", rollout.images, prompts), ("shuffled", rollout.images, shuffled),
                                ("real", real, prompts)):  # fmt: skip
        features = measure_features(_hwc(images), masks.numpy(), texts)
        out[f"adherence/gold_{name}"] = float(features["adherence"].mean())
    for name, images in (("samples", rollout.images), ("real", real)):
        for attribute, value in classifier.accuracy(images, prompts).items():
            out[f"adherence/{attribute}_acc_{name}"] = value
    for attribute, value in classifier.chance(prompts).items():
        out[f"adherence/{attribute}_acc_chance"] = value
    gold = gold_components(_hwc(rollout.images), masks.numpy(), prompts, [PANEL_SEGMENT] * len(prompts))
    out["gold/engagement_samples"] = float(np.sum(np.stack(list(gold.values())), axis=0).mean())
    real_gold = gold_components(_hwc(real), masks.numpy(), prompts, [PANEL_SEGMENT] * len(prompts))
    out["gold/engagement_real"] = float(np.sum(np.stack(list(real_gold.values())), axis=0).mean())

    style_metrics, style_rows = evaluate_style(policy, style, data, classifier, sampler, seed=seed)
    out |= style_metrics
    rows = {"samples": [(rollout.images[i], requests[i].prompt) for i in range(len(requests))],
            "real": [(real[i], prompts[i]) for i in range(len(requests))], **style_rows}  # fmt: skip
    return out, rows


@torch.no_grad()
def evaluate_style(
    policy: InpaintPolicy,
    style: StyleConditioning,
    data: EvaluationData,
    classifier: PromptClassifier,
    sampler: SamplerConfig,
    *,
    seed: int,
    per_family: int = 8,
) -> tuple[dict[str, float], dict[str, list]]:
    """Material accuracy of text-free samples with a material's style board vs without any style tokens."""
    families = sorted(set(data.scenes.families))
    correct = {"on": [], "off": []}
    rows: dict[str, list] = {}
    for family in families:
        board = [i for i, f in enumerate(data.scenes.families) if f == family][:4]
        tokens = style.tokens(data.scenes.images[board])
        requests = [
            InpaintRequest(request_id=f"style-{family}-{k}", product_id=f"heldout-{k}", segment=PANEL_SEGMENT,
                           prompt="", product_rgb=data.products.rgb[k], product_mask=data.products.masks[k])
            for k in range(per_family)
        ]  # fmt: skip
        seeds = [seed + 10_000 + k for k in range(per_family)]
        for switch, model in (("on", StyledModel(policy, tokens)), ("off", policy)):
            images = sample_trajectories(model, requests, seeds, sampler).images
            features = classifier.encoder.encode(images).numpy()
            predicted = classifier.models["material"].predict(features)
            correct[switch].extend((predicted == family).tolist())
            if switch == "on":
                rows[f"style: {family}"] = [(data.scenes.images[board[0]], "board[0]")] + [
                    (images[k], "") for k in range(min(per_family, 6))
                ]
    return {
        "style/material_acc_on": float(np.mean(correct["on"])),
        "style/material_acc_off": float(np.mean(correct["off"])),
        "style/material_acc_chance": 1.0 / len(families),
    }, rows


def build_evaluation_data(seed: int, size: int, count: int) -> EvaluationData:
    """Held-out scenes and products for evaluation (streams disjoint from training and validation)."""
    scenes = render_scene_pool(count, size, seed, stream=CLASSIFIER_STREAM + 1)
    products = render_product_pool(count, size, seed, stream=CLASSIFIER_STREAM + 2)
    return EvaluationData(scenes=scenes, products=products)


def fit_prompt_classifier(encoder: StudioStyleEncoder, seed: int, size: int, count: int) -> PromptClassifier:
    """Fit the attribute classifiers on ``count`` rendered composites (their own stream of the data seed)."""
    scenes = render_scene_pool(count, size, seed, stream=CLASSIFIER_STREAM)
    products = render_product_pool(count, size, seed, stream=CLASSIFIER_STREAM + 3)
    images = composite(scenes.images, products.rgb, products.masks)
    return PromptClassifier(encoder, images, list(scenes.prompts))
