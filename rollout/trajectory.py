"""``Trajectory``: the denoising chains of a batch, with everything needed to recompute their log-probs.

On disk: ``<name>.safetensors`` (the tensors) + ``<name>.json`` (ids, prompts, seeds, eta, guidance scale).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from offline_data.errors import AssetError

FORMAT = "backdrop.trajectory"
VERSION = 1
_TENSORS = (
    "latents",
    "timesteps",
    "log_probs",
    "prompt_embeds",
    "negative_prompt_embeds",
    "masked_image_latents",
    "latent_product",
    "product_mask",
)
_METADATA = ("request_ids", "product_ids", "prompts", "seeds", "eta", "guidance_scale")


@dataclass(frozen=True, kw_only=True, eq=False)
class Trajectory:
    """B denoising chains of T DDIM steps (shapes are checked on construction; ValueError names the field)."""

    latents: torch.Tensor
    """``[B, T+1, C, h, w]`` float32: x_T (index 0) to the final latent (index T), product positions replaced."""
    timesteps: torch.Tensor
    """``[T]`` int64: the timestep t_i of step i (latents[:, i] -> latents[:, i+1])."""
    log_probs: torch.Tensor
    """``[B, T]`` float32: log pi(latents[:, i+1] | latents[:, i]), mean over background latent dims."""
    prompt_embeds: torch.Tensor
    """``[B, L, D]`` float32: text conditioning of each sample."""
    negative_prompt_embeds: torch.Tensor
    """``[B, L, D]`` float32: the unconditional (empty prompt) embedding used by guidance."""
    masked_image_latents: torch.Tensor
    """``[B, C, h, w]`` float32: latents of the product image with the background zeroed (UNet input, and the
    clean latent the product positions are replaced with)."""
    latent_product: torch.Tensor
    """``[B, 1, h, w]`` bool: product latent positions (max-pooled pixel mask); the rest is the action space."""
    product_mask: torch.Tensor
    """``[B, H, W]`` bool: the hard product mask in pixels."""
    request_ids: tuple[str, ...]
    """B request ids (advantages are grouped by them)."""
    product_ids: tuple[str, ...]
    """B product ids."""
    prompts: tuple[str, ...]
    """B prompt strings."""
    seeds: tuple[int, ...]
    """B seeds; each fixes all the noise of its sample."""
    eta: float
    """DDIM eta used for sampling."""
    guidance_scale: float
    """Classifier-free guidance scale used for sampling."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "request_ids", tuple(self.request_ids))
        object.__setattr__(self, "product_ids", tuple(self.product_ids))
        object.__setattr__(self, "prompts", tuple(self.prompts))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        lat = self.latents
        _expect(lat.ndim == 5 and lat.dtype == torch.float32, "latents", "float32 [B, T+1, C, h, w]", lat)
        batch, steps, channels, height, width = lat.shape[0], lat.shape[1] - 1, *lat.shape[2:]
        _expect(steps >= 1, "latents", "at least 2 entries along dim 1 (T >= 1)", lat)
        t = self.timesteps
        _expect(t.shape == (steps,) and t.dtype == torch.int64, "timesteps", f"int64 [{steps}]", t)
        lp = self.log_probs
        _expect(
            lp.shape == (batch, steps) and lp.dtype == torch.float32, "log_probs", f"float32 [{batch}, {steps}]", lp
        )
        pe = self.prompt_embeds
        _expect(pe.ndim == 3 and pe.shape[0] == batch and pe.dtype == torch.float32, "prompt_embeds",
                f"float32 [{batch}, L, D]", pe)  # fmt: skip
        ne = self.negative_prompt_embeds
        _expect(ne.shape == pe.shape and ne.dtype == torch.float32, "negative_prompt_embeds",
                f"float32 {list(pe.shape)}", ne)  # fmt: skip
        mi = self.masked_image_latents
        _expect(mi.shape == (batch, channels, height, width) and mi.dtype == torch.float32, "masked_image_latents",
                f"float32 [{batch}, {channels}, {height}, {width}]", mi)  # fmt: skip
        lm = self.latent_product
        _expect(lm.shape == (batch, 1, height, width) and lm.dtype == torch.bool, "latent_product",
                f"bool [{batch}, 1, {height}, {width}]", lm)  # fmt: skip
        pm = self.product_mask
        _expect(pm.ndim == 3 and pm.shape[0] == batch and pm.dtype == torch.bool, "product_mask",
                f"bool [{batch}, H, W]", pm)  # fmt: skip
        if pm.shape[1] % height or pm.shape[2] % width or pm.shape[1] // height != pm.shape[2] // width:
            raise ValueError(
                f"product_mask: expected a multiple of the latent size {height}x{width}, got {list(pm.shape)}"
            )
        for name in ("request_ids", "product_ids", "prompts", "seeds"):
            if len(getattr(self, name)) != batch:
                raise ValueError(f"{name}: expected {batch} entries (one per sample), got {len(getattr(self, name))}")
        if not 0 < self.eta <= 1:
            raise ValueError(f"eta: expected a value in (0, 1], got {self.eta}")

    @property
    def batch_size(self) -> int:
        """B."""
        return int(self.latents.shape[0])

    @property
    def num_steps(self) -> int:
        """T; call ``scheduler.set_timesteps(T)`` before recomputing log-probs."""
        return int(self.timesteps.shape[0])

    @property
    def background(self) -> torch.Tensor:
        """``[B, 1, h, w]`` bool: the latent positions the policy acts on."""
        return ~self.latent_product

    def select(self, indices: torch.Tensor | Sequence[int]) -> Trajectory:
        """The samples at ``indices`` (in that order), e.g. a minibatch."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        picked = idx.tolist()
        tensors = {name: getattr(self, name) for name in _TENSORS if name != "timesteps"}
        return Trajectory(
            **{name: value[idx.to(value.device)] for name, value in tensors.items()},
            timesteps=self.timesteps,
            request_ids=tuple(self.request_ids[i] for i in picked),
            product_ids=tuple(self.product_ids[i] for i in picked),
            prompts=tuple(self.prompts[i] for i in picked),
            seeds=tuple(self.seeds[i] for i in picked),
            eta=self.eta,
            guidance_scale=self.guidance_scale,
        )

    def to(self, device: torch.device | str) -> Trajectory:
        """A copy with every tensor on ``device``."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return Trajectory(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in values.items()})

    @classmethod
    def concat(cls, parts: Sequence[Trajectory]) -> Trajectory:
        """Samples of several trajectories in one (same T, timesteps, eta and guidance; shapes must agree)."""
        if not parts:
            raise ValueError("concat needs at least one trajectory")
        first = parts[0]
        for i, part in enumerate(parts[1:], start=1):
            if not torch.equal(part.timesteps.cpu(), first.timesteps.cpu()):
                raise ValueError(f"trajectory {i}: timesteps differ from trajectory 0")
            if (part.eta, part.guidance_scale) != (first.eta, first.guidance_scale):
                raise ValueError(
                    f"trajectory {i}: eta/guidance ({part.eta}, {part.guidance_scale}) differ from trajectory 0 "
                    f"({first.eta}, {first.guidance_scale})"
                )
        tensors = {name: torch.cat([getattr(p, name) for p in parts]) for name in _TENSORS if name != "timesteps"}
        return cls(
            **tensors,
            timesteps=first.timesteps,
            request_ids=tuple(r for p in parts for r in p.request_ids),
            product_ids=tuple(r for p in parts for r in p.product_ids),
            prompts=tuple(r for p in parts for r in p.prompts),
            seeds=tuple(s for p in parts for s in p.seeds),
            eta=first.eta,
            guidance_scale=first.guidance_scale,
        )

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (``.safetensors``) and its JSON sidecar ``path.with_suffix('.json')``; returns ``path``."""
        path = Path(path)
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: trajectory files end in .safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({name: getattr(self, name).detach().cpu().contiguous() for name in _TENSORS}, str(path))
        sidecar = {"format": FORMAT, "version": VERSION, **{name: getattr(self, name) for name in _METADATA}}
        sidecar["request_ids"], sidecar["product_ids"] = list(self.request_ids), list(self.product_ids)
        sidecar["prompts"], sidecar["seeds"] = list(self.prompts), list(self.seeds)
        path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> Trajectory:
        """Read a trajectory written by :meth:`save`.

        Raises:
            AssetError: a missing or unreadable file, a wrong format/version, missing keys, or inconsistent shapes.
        """
        path = Path(path)
        sidecar_path = path.with_suffix(".json")
        for file in (path, sidecar_path):
            if not file.is_file():
                raise AssetError(f"{file}: trajectory file not found")
        try:
            tensors = load_file(str(path), device=str(device))
        except (OSError, SafetensorError) as exc:
            raise AssetError(f"{path}: cannot read trajectory tensors: {exc}") from None
        try:
            meta = json.loads(sidecar_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AssetError(f"{sidecar_path}: cannot read trajectory metadata: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
            found = (meta.get("format"), meta.get("version")) if isinstance(meta, dict) else type(meta).__name__
            raise AssetError(f"{sidecar_path}: expected format {FORMAT!r} version {VERSION}, got {found}")
        missing = [k for k in _TENSORS if k not in tensors] + [k for k in _METADATA if k not in meta]
        if missing:
            raise AssetError(f"{path}: missing trajectory field(s) {missing}")
        try:
            return cls(**{k: tensors[k] for k in _TENSORS}, **{k: meta[k] for k in _METADATA})
        except (ValueError, TypeError) as exc:
            raise AssetError(f"{path}: invalid trajectory: {exc}") from None


def _expect(ok: bool, name: str, expected: str, value: torch.Tensor) -> None:
    if not ok:
        raise ValueError(f"{name}: expected {expected}, got {value.dtype} {list(value.shape)}")
