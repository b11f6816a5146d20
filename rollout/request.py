"""What the sampler is asked to do: paint a background for one product image, from a prompt.

``request_from_rgba`` turns an RGBA cut-out (the simulator's products, or a user's photo) into a request: the
alpha channel gives the hard mask and, as alpha / 255, a confidence map for the optional edge band.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True, kw_only=True, eq=False)
class InpaintRequest:
    """One product to put on a generated background (validated on construction)."""

    request_id: str
    """Identifies the request; advantages are normalised per request id."""
    product_id: str
    """The product shown (the same product may appear in several requests)."""
    segment: str
    """Audience segment the image is for (reward models are segment-aware)."""
    prompt: str
    """Background description for the text encoder."""
    product_rgb: torch.Tensor
    """``[3, H, W]`` uint8: the product photo; only the pixels under ``product_mask`` are used."""
    product_mask: torch.Tensor
    """``[H, W]`` bool: True on product pixels, which every output reproduces bit-exactly."""
    confidence: torch.Tensor | None = None
    """``[H, W]`` float32 in [0, 1]: the segmenter's probability of "product", for the soft edge band."""

    def __post_init__(self) -> None:
        where = f"request {self.request_id!r}"
        for name in ("request_id", "product_id", "segment"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{where}: {name} must be a non-empty string, got {value!r}")
        if not isinstance(self.prompt, str):
            raise ValueError(f"{where}: prompt must be a string, got {type(self.prompt).__name__}")
        rgb = self.product_rgb
        if not isinstance(rgb, torch.Tensor) or rgb.dtype != torch.uint8 or rgb.ndim != 3 or rgb.shape[0] != 3:
            raise ValueError(f"{where}: product_rgb must be a uint8 tensor [3, H, W], got {_describe(rgb)}")
        mask = self.product_mask
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != rgb.shape[1:]:
            raise ValueError(
                f"{where}: product_mask must be a bool tensor [{rgb.shape[1]}, {rgb.shape[2]}], got {_describe(mask)}"
            )
        if bool(mask.all()):
            raise ValueError(f"{where}: product_mask covers the whole image; there is no background to paint")
        conf = self.confidence
        if conf is not None:
            if not isinstance(conf, torch.Tensor) or not conf.is_floating_point() or conf.shape != mask.shape:
                raise ValueError(
                    f"{where}: confidence must be a float tensor [{mask.shape[0]}, {mask.shape[1]}], got "
                    f"{_describe(conf)}"
                )
            if not bool(((conf >= 0) & (conf <= 1)).all()):
                raise ValueError(f"{where}: confidence must lie in [0, 1], got range [{conf.min()}, {conf.max()}]")

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) in pixels."""
        return int(self.product_rgb.shape[1]), int(self.product_rgb.shape[2])


def request_from_rgba(
    rgba: np.ndarray | torch.Tensor,
    *,
    request_id: str,
    product_id: str,
    segment: str,
    prompt: str,
    alpha_threshold: int = 128,
) -> InpaintRequest:
    """A request from an RGBA cut-out ``[H, W, 4]`` uint8 (PIL/matplotlib layout).

    The hard mask is ``alpha >= alpha_threshold``; the confidence map is ``alpha / 255``, so the partially
    transparent rim outside the mask can feed the soft edge band.
    """
    array = torch.as_tensor(np.array(rgba, copy=True))  # a copy: inputs may be read-only (PIL, memmaps)
    if array.dtype != torch.uint8 or array.ndim != 3 or array.shape[2] != 4:
        raise ValueError(f"rgba must be uint8 [H, W, 4], got {_describe(array)}")
    if not 1 <= alpha_threshold <= 255:
        raise ValueError(f"alpha_threshold must be in [1, 255], got {alpha_threshold}")
    alpha = array[..., 3]
    return InpaintRequest(
        request_id=request_id,
        product_id=product_id,
        segment=segment,
        prompt=prompt,
        product_rgb=array[..., :3].permute(2, 0, 1).contiguous(),
        product_mask=alpha >= alpha_threshold,
        confidence=alpha.float() / 255.0,
    )


def expand_requests(
    requests: Sequence[InpaintRequest], samples_per_request: int, first_seed: int
) -> tuple[list[InpaintRequest], list[int]]:
    """Each request repeated ``samples_per_request`` times (adjacent), with distinct seeds first_seed, +1, ...

    The result feeds ``sample_trajectories(model, requests, seeds, ...)``; a seed fixes all the noise of a sample.
    """
    if samples_per_request < 1:
        raise ValueError(f"samples_per_request must be >= 1, got {samples_per_request}")
    if first_seed < 0:
        raise ValueError(f"first_seed must be >= 0, got {first_seed}")
    expanded = [r for r in requests for _ in range(samples_per_request)]
    return expanded, [first_seed + i for i in range(len(expanded))]


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} tensor of shape {list(value.shape)}"
    return type(value).__name__
