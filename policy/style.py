"""Style conditioning: a style embedding (one image, or the mean over a user's board) -> extra text tokens.

    images --(frozen StyleImageEncoder)--> e [D_s]  --(mean over the board)-->  e_board [D_s]
    e_board --(StyleAdapter: standardise, MLP, LayerNorm)--> K tokens [K, D]  appended to the text tokens [L, D]

The UNet's cross-attention then reads ``L + K`` tokens (IP-Adapter-style token concatenation, Ye et al. 2023,
without the decoupled attention). The adapter is trained jointly with the inpainting UNet in
``experiments.studio.pretrain.train``: for half of the samples the style tokens are present (the style
image is another scene of the same prompt family) and for the other half they are masked out of the
attention, which is exactly equivalent to not appending them. Switched off (``style_tokens=None``),
:class:`StyledModel` passes the text tokens through unchanged, so the model computes exactly the base behaviour
(tested bit-for-bit).

With guidance, the style tokens are appended to the unconditional (empty-prompt) branch as well, so classifier-
free guidance amplifies the text while the style acts as plain conditioning; the trajectory records the
extended embeddings, so recomputed log-probs see the same tokens.

The encoder here (:class:`StudioStyleEncoder`) is small, fixed and built in ``policy`` (policy never imports
``reward``): colour and gradient statistics plus Gram matrices of a fixed random filter bank, the classic
texture descriptor (Gatys et al. 2015; random filters suffice, Ustyuzhaninov et al. 2016). Any encoder that
satisfies :class:`StyleImageEncoder` (``reward.encoders.ImageEncoder`` does structurally) can be wired in by
``experiments``, with an adapter trained for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from torch import nn

from offline_data.errors import AssetError
from policy.component_files import load_state, read_component, save_component
from policy.config import StyleConfig
from rollout.protocols import InpaintingModel

WEIGHTS_NAME = "style.safetensors"
FORMAT = "backdrop.style"


@runtime_checkable
class StyleImageEncoder(Protocol):
    """Images -> style embeddings; structurally compatible with ``reward.encoders.ImageEncoder``."""

    @property
    def dim(self) -> int:
        """D_s, the embedding width."""
        ...

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 3, H, W]`` -> float32 ``[B, D_s]``."""
        ...


class StudioStyleEncoder(nn.Module):
    """Fixed style descriptor of an image (no trainable weights).

    Features of ``x`` in [0, 1], computed on the top and bottom halves where noted (a scene's wall and floor):

    - colour: mean and standard deviation of R, G, B per half (12);
    - texture energy: mean luma gradient magnitude at scales 1, 2 and 4 px per half (6);
    - texture statistics: mean response and the Gram matrix (upper triangle) of a fixed bank of F random
      5x5 filters on RGB, over the whole image (F + F(F+1)/2).
    """

    def __init__(self, filters: int = 8, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        bank = torch.randn(filters, 3, 5, 5, generator=generator)
        bank = bank - bank.mean(dim=(1, 2, 3), keepdim=True)  # respond to texture, not to brightness
        self.register_buffer("bank", bank / bank.flatten(1).norm(dim=1)[:, None, None, None])
        self.requires_grad_(False)

    @property
    def dim(self) -> int:
        """D_s."""
        filters = int(self.bank.shape[0])
        return 12 + 6 + filters + filters * (filters + 1) // 2

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 3, H, W]`` (H, W >= 8, even) -> float32 ``[B, D_s]``."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 [B, 3, H, W], got {images.dtype} {list(images.shape)}")
        if min(images.shape[2:]) < 8:
            raise ValueError(f"images must be at least 8x8 pixels, got {list(images.shape[2:])}")
        x = images.to(device=self.bank.device, dtype=torch.float32) / 255.0
        half = x.shape[2] // 2
        halves = (x[:, :, :half], x[:, :, half:])
        colour = [torch.cat([h.mean(dim=(2, 3)), h.std(dim=(2, 3))], dim=1) for h in halves]
        energy = []
        for h in halves:
            luma = h.mean(dim=1, keepdim=True)
            for scale in (1, 2, 4):
                pooled = F.avg_pool2d(luma, scale) if scale > 1 else luma
                gx = pooled[..., :, 1:] - pooled[..., :, :-1]
                gy = pooled[..., 1:, :] - pooled[..., :-1, :]
                energy.append((gx.abs().mean(dim=(1, 2, 3)) + gy.abs().mean(dim=(1, 2, 3))) * scale)
        responses = F.relu(F.conv2d(x, self.bank, padding=2)).flatten(2)  # [B, F, HW]
        means = responses.mean(dim=2)
        centred = responses - means[..., None]
        gram = centred @ centred.transpose(1, 2) / responses.shape[2]
        rows, cols = torch.triu_indices(gram.shape[1], gram.shape[2])
        return torch.cat([*colour, torch.stack(energy, dim=1), means, gram[:, rows, cols]], dim=1)


class StyleAdapter(nn.Module):
    """Style embedding ``[B, D_s]`` -> ``[B, K, D]`` conditioning tokens (standardise, MLP, LayerNorm).

    The standardisation constants are buffers set once from training embeddings (:meth:`set_normalisation`),
    so embeddings with very different scales (means of colours vs Gram entries) enter the MLP comparably.
    """

    def __init__(self, embed_dim: int, token_dim: int, config: StyleConfig) -> None:
        super().__init__()
        self.embed_dim, self.token_dim, self.num_tokens = embed_dim, token_dim, config.num_tokens
        self.register_buffer("feature_mean", torch.zeros(embed_dim))
        self.register_buffer("feature_std", torch.ones(embed_dim))
        self.mlp = nn.Sequential(
            nn.Linear(embed_dim, config.hidden_size),
            nn.GELU(),
            nn.Linear(config.hidden_size, config.num_tokens * token_dim),
        )
        self.norm = nn.LayerNorm(token_dim)

    @torch.no_grad()
    def set_normalisation(self, embeddings: torch.Tensor) -> None:
        """Standardise inputs with the mean and std of ``embeddings [N, D_s]`` (N >= 2)."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embed_dim or embeddings.shape[0] < 2:
            raise ValueError(f"embeddings must be [N >= 2, {self.embed_dim}], got {list(embeddings.shape)}")
        self.feature_mean.copy_(embeddings.mean(dim=0))
        self.feature_std.copy_(embeddings.std(dim=0).clamp_min(1e-6))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``[B, D_s]`` -> ``[B, K, D]`` float32."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embed_dim:
            raise ValueError(f"style embeddings must be [B, {self.embed_dim}], got {list(embeddings.shape)}")
        standard = (embeddings.float() - self.feature_mean) / self.feature_std
        tokens = self.mlp(standard).reshape(-1, self.num_tokens, self.token_dim)
        return self.norm(tokens)


class StyleConditioning(nn.Module):
    """The frozen encoder and the trained adapter, saved and loaded together."""

    def __init__(self, config: StyleConfig, token_dim: int) -> None:
        super().__init__()
        self.config = config
        self.encoder = StudioStyleEncoder(config.encoder_filters, config.encoder_seed)
        self.adapter = StyleAdapter(self.encoder.dim, token_dim, config)

    @torch.no_grad()
    def board_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """The style of a board: the mean embedding of its images ``uint8 [N, 3, H, W]`` -> ``[D_s]``."""
        if images.ndim != 4 or images.shape[0] < 1:
            raise ValueError(f"a style board needs at least one image [N, 3, H, W], got {list(images.shape)}")
        return self.encoder.encode(images).mean(dim=0)

    @torch.no_grad()
    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Style tokens ``[K, D]`` float32 for a board of images ``uint8 [N, 3, H, W]``."""
        return self.adapter(self.board_embedding(images)[None])[0]

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/config.json`` and ``folder/style.safetensors`` (encoder bank and adapter)."""
        payload = {"format": FORMAT, "config": asdict(self.config), "token_dim": self.adapter.token_dim}
        return save_component(folder, payload, self, WEIGHTS_NAME)

    @classmethod
    def load(cls, folder: str | Path) -> StyleConditioning:
        """Read what :meth:`save` wrote (safetensors only).

        Raises:
            AssetError: missing or unreadable files, a wrong format, or tensors that do not fit the config.
        """
        payload, state = read_component(folder, WEIGHTS_NAME, FORMAT, "style adapter")
        try:
            module = cls(StyleConfig(**payload["config"]), int(payload["token_dim"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise AssetError(f"{Path(folder) / 'config.json'}: invalid style config: {exc}") from None
        load_state(module, state, Path(folder) / WEIGHTS_NAME, "style adapter")
        return module.eval().requires_grad_(False)


class StyledModel:
    """An inpainting model whose prompt embeddings carry K style tokens (``rollout.protocols.InpaintingModel``).

    Every prompt, the empty one of the unconditional branch included, is encoded as ``cat(text [L, D],
    style [K, D])``; with ``style_tokens=None`` every call is passed through unchanged (the base model).
    Everything else (scheduler, VAE, UNet, the adapter state of an ``InpaintPolicy``) is the wrapped model's.
    """

    def __init__(self, model: InpaintingModel, style_tokens: torch.Tensor | None) -> None:
        if style_tokens is not None and style_tokens.ndim != 2:
            raise ValueError(f"style_tokens must be [K, D], got {list(style_tokens.shape)}")
        self.model = model
        self.style_tokens = style_tokens

    @property
    def scheduler(self) -> DDIMScheduler:
        """The wrapped model's scheduler."""
        return self.model.scheduler

    @property
    def device(self) -> torch.device:
        """The wrapped model's device."""
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        """The wrapped model's compute dtype."""
        return self.model.dtype

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent position."""
        return self.model.vae_scale_factor

    @property
    def latent_channels(self) -> int:
        """Channels of a latent."""
        return self.model.latent_channels

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """``[N, L + K, D]`` with style tokens, ``[N, L, D]`` (the base model's output) without."""
        text = self.model.encode_prompts(prompts)
        if self.style_tokens is None:
            return text
        if self.style_tokens.shape[1] != text.shape[2]:
            raise ValueError(
                f"style tokens have width {self.style_tokens.shape[1]} but the text encoder's is {text.shape[2]}"
            )
        style = self.style_tokens.to(device=text.device, dtype=text.dtype)
        return torch.cat([text, style.expand(text.shape[0], -1, -1)], dim=1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """The wrapped model's encoder."""
        return self.model.encode_images(images)

    def decode_latents(self, latents: torch.Tensor, **context: torch.Tensor | None) -> torch.Tensor:
        """The wrapped model's decoder (with the mask-aware context when the sampler passes it)."""
        return self.model.decode_latents(latents, **context)

    def predict_noise(
        self, latent_input: torch.Tensor, timestep: torch.Tensor, prompt_embeds: torch.Tensor
    ) -> torch.Tensor:
        """The wrapped model's UNet."""
        return self.model.predict_noise(latent_input, timestep, prompt_embeds)
