"""Configuration of sampling: DDIM steps, eta, classifier-free guidance, batching and the soft edge band."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True)
class EdgeBandConfig:
    """An optional soft band just outside the product mask where original and generated pixels are blended.

    The band holds the pixels within ``width`` pixels (Chebyshev distance) of the hard product mask, outside
    it, whose segmenter confidence (probability of being product) is at least ``min_confidence``. There the
    output is ``round(c * original + (1 - c) * generated)`` with c the confidence, which softens the seam where
    a segmenter cut the product too tightly. The hard mask itself is never blended: it is copied bit-exactly.
    Requests without a confidence map get no band. The number of band pixels is reported.
    """

    width: int = 0
    """Band width in pixels; 0 disables the band."""
    min_confidence: float = 0.05
    """Pixels whose confidence is below this are not in the band (they are fully generated)."""

    def __post_init__(self) -> None:
        if self.width < 0:
            raise ValueError(f"width must be >= 0 pixels (0 disables the band), got {self.width}")
        if not 0 < self.min_confidence <= 1:
            raise ValueError(f"min_confidence must be in (0, 1], got {self.min_confidence}")


@dataclass(frozen=True, kw_only=True)
class SamplerConfig:
    """DDIM sampling with eta > 0 (so every step is a Gaussian with a log-prob) and classifier-free guidance."""

    num_steps: int = 20
    """DDIM steps T per sample (DDPO uses 50; 20 keeps CPU epochs short). Each step is one UNet forward on
    2 x batch_size latents when guidance is on."""
    eta: float = 1.0
    """DDIM eta in (0, 1]: the step's std is eta x the DDPM posterior std; 1 is DDPO's choice. eta = 0
    (deterministic DDIM) has no log-prob and is refused."""
    guidance_scale: float = 5.0
    """Classifier-free guidance w: eps = eps_uncond + w (eps_cond - eps_uncond); <= 1 turns guidance off
    (w = 1 is the conditional model alone) and halves the UNet batch."""
    batch_size: int = 8
    """Samples denoised together (the UNet sees twice as many with guidance on); more requests are chunked."""
    enforce_preservation: bool = True
    """Raise PreservationError if any product pixel of an output differs from the input (always reported)."""
    band: EdgeBandConfig = field(default_factory=EdgeBandConfig)
    """Soft edge band outside the product mask (off by default)."""

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if not 0 < self.eta <= 1:
            raise ValueError(f"eta must be in (0, 1] (0 has no log-prob, > 1 no valid DDIM step), got {self.eta}")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether the unconditional branch is evaluated (diffusers' rule: guidance_scale > 1)."""
        return self.guidance_scale > 1.0
