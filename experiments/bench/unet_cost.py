"""What one DDPO sample costs at SD-1.5-inpainting size: FLOPs (analytic and counted) and activation memory.

Two independent counts of the UNet forward, which must agree exactly (``tests/experiments``):

- :func:`unet_forward_flops`: analytic, from the diffusers UNet config (block widths, layers, resolution, text
  length), summing the matrix products and convolutions of every block;
- :func:`measure_unet_cost`: ``torch.utils.flop_counter.FlopCounterMode`` around a forward (and a LoRA backward) of
  the real diffusers module built on the ``meta`` device (no memory, no arithmetic: about a second for 860 M
  parameters), with ``scaled_dot_product_attention`` routed to the flash-attention kernel so that the backward
  count (flash recomputes attention: 2.5x its forward) and the tensors saved for backward are those the H100 sees.

Convention (FlopCounterMode's): a multiply-add is 2 FLOPs; only matrix products, convolutions and attention are
counted (norms, activations and adds are memory-bound and not FLOPs that matter here). SD-1.5's UNet at 512 px with
77 text tokens: 803.4 GFLOP per image forward, the issue's "~803 GFLOP".

:func:`recipe_flops` turns those into the FLOPs of one DDPO sample: T steps of sampling with CFG (2 forwards each,
adapter on), the KL reference (2 forwards, adapter off), and training on every step (2 forwards with grad and their
backward into the LoRA weights), plus the VAE encode/decode of the sample.
:func:`recipe_attention_flops` is their attention part (``experiments.bench.matrix_bound``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from policy.lora import adapters_disabled

_SUPPORTED = {
    "down": {"CrossAttnDownBlock2D", "DownBlock2D"},
    "up": {"CrossAttnUpBlock2D", "UpBlock2D"},
    "mid": {"UNetMidBlock2DCrossAttn"},
}


@dataclass(frozen=True, kw_only=True)
class FlopBreakdown:
    """FLOPs of one UNet forward by kind of operation (2 FLOPs per multiply-add)."""

    conv: int
    """Convolutions (conv_in/out, ResNet convs and shortcuts, down/upsamplers; proj_in/out when they are 1x1 convs)."""
    linear: int
    """Dense layers: time embedding, ResNet time projections, attention projections, feed-forward, LoRA."""
    attention: int
    """QK^T and attention x V of every self- and cross-attention."""

    @property
    def total(self) -> int:
        """All counted FLOPs."""
        return self.conv + self.linear + self.attention


def unet_forward_flops(
    config: Mapping[str, Any],
    *,
    batch: int,
    text_tokens: int,
    lora_rank: int = 0,
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0"),
) -> FlopBreakdown:
    """Analytic FLOPs of a ``UNet2DConditionModel`` forward, from its config.

    Per image at latent size h x w (``sample_size``), with c the block width, D the cross-attention width and L the
    text length: ResNet 2(9 c_in c + 9 c^2) hw (+ 2 c_in c hw shortcut if c_in != c, + 2 d_t c time projection);
    transformer 40 c^2 hw (proj_in/out, 6 projections, GEGLU feed-forward 8c + 4c) + 4 D c L (cross-attention
    keys/values) + 4 c hw (hw + L) (the two attentions); downsampler 18 c^2 hw / 4, upsampler 18 c^2 (2h)(2w).

    Args:
        config: ``unet.config`` of an SD-style UNet (the block types :func:`build_unet` uses, one transformer layer
            per block, positional time embedding).
        batch: images per forward (with CFG, twice the samples).
        text_tokens: L, the prompt length (77 for CLIP).
        lora_rank: r of a LoRA adapter on ``lora_targets`` of every attention (0 = no adapter); each adapted
            projection adds 2 N r (in + out) for N tokens.
        lora_targets: the adapted projections (peft names).

    Raises:
        ValueError: a block type or option this model does not cover.
    """
    _check_supported(config)
    widths = tuple(int(c) for c in config["block_out_channels"])
    layers = int(config["layers_per_block"])
    dim = int(config["cross_attention_dim"])
    temb = int(config["time_embedding_dim"] or 4 * widths[0])
    height = width = int(config["sample_size"])
    totals = {"conv": 0, "linear": 0, "attention": 0}

    def add(kind: str, flops: int) -> None:
        totals[kind] += batch * flops

    def resnet(c_in: int, c_out: int, hw: int) -> None:
        add("conv", 2 * 9 * (c_in * c_out + c_out * c_out) * hw)
        add("conv", 2 * c_in * c_out * hw if c_in != c_out else 0)
        add("linear", 2 * temb * c_out)

    def lora(tokens: int, c_in: int, c_out: int, name: str) -> int:
        return 2 * tokens * lora_rank * (c_in + c_out) if lora_rank and name in lora_targets else 0

    def transformer(c: int, hw: int) -> None:
        add("conv" if not config["use_linear_projection"] else "linear", 2 * 2 * c * c * hw)  # proj_in, proj_out
        add("linear", 2 * 4 * c * c * hw + 2 * 2 * c * c * hw + 2 * 2 * dim * c * text_tokens)  # attn1 q,k,v,o; attn2
        add("linear", 2 * (8 * c * c + 4 * c * c) * hw)  # GEGLU: c -> 2 x 4c, then 4c -> c
        add("attention", 4 * c * hw * hw + 4 * c * hw * text_tokens)
        adapted = sum(lora(hw, c, c, name) for name in ("to_q", "to_k", "to_v", "to_out.0"))  # self-attention
        adapted += lora(hw, c, c, "to_q") + lora(hw, c, c, "to_out.0")  # cross-attention on the image tokens
        adapted += lora(text_tokens, dim, c, "to_k") + lora(text_tokens, dim, c, "to_v")  # ... and on the text
        add("linear", adapted)

    add("linear", 2 * widths[0] * temb + 2 * temb * temb)  # time embedding MLP
    add("conv", 2 * 9 * int(config["in_channels"]) * widths[0] * height * width)
    skips = [widths[0]]
    c_in, h, w = widths[0], height, width
    for level, kind in enumerate(config["down_block_types"]):
        c = widths[level]
        for _ in range(layers):
            resnet(c_in, c, h * w)
            if kind == "CrossAttnDownBlock2D":
                transformer(c, h * w)
            skips.append(c)
            c_in = c
        if level < len(widths) - 1:
            h, w = h // 2, w // 2
            add("conv", 2 * 9 * c * c * h * w)
            skips.append(c)
    resnet(widths[-1], widths[-1], h * w)
    transformer(widths[-1], h * w)
    resnet(widths[-1], widths[-1], h * w)
    reversed_widths = widths[::-1]
    c_prev = reversed_widths[0]
    for level, kind in enumerate(config["up_block_types"]):
        c = reversed_widths[level]
        for _ in range(layers + 1):
            resnet(c_prev + skips.pop(), c, h * w)
            if kind == "CrossAttnUpBlock2D":
                transformer(c, h * w)
            c_prev = c
        if level < len(widths) - 1:
            h, w = 2 * h, 2 * w
            add("conv", 2 * 9 * c * c * h * w)
    add("conv", 2 * 9 * widths[0] * int(config["out_channels"]) * height * width)
    return FlopBreakdown(**totals)


def _check_supported(config: Mapping[str, Any]) -> None:
    problems = []
    for key, allowed in (("down_block_types", _SUPPORTED["down"]), ("up_block_types", _SUPPORTED["up"])):
        bad = sorted(set(config[key]) - allowed)
        if bad:
            problems.append(f"{key} {bad} (supported: {sorted(allowed)})")
    if config["mid_block_type"] not in _SUPPORTED["mid"]:
        problems.append(f"mid_block_type {config['mid_block_type']!r}")
    if config["transformer_layers_per_block"] != 1 or config["only_cross_attention"]:
        problems.append("transformer_layers_per_block must be 1 and only_cross_attention false")
    for key in ("class_embed_type", "addition_embed_type", "encoder_hid_dim", "time_cond_proj_dim"):
        if config.get(key) is not None:
            problems.append(f"{key} must be None, got {config[key]!r}")
    if config.get("time_embedding_type", "positional") != "positional" or config.get("dual_cross_attention"):
        problems.append("time_embedding_type must be 'positional' and dual_cross_attention false")
    if config["conv_in_kernel"] != 3 or config["conv_out_kernel"] != 3:
        problems.append("conv_in_kernel and conv_out_kernel must be 3")
    if problems:
        raise ValueError("unet_forward_flops does not model this UNet: " + "; ".join(problems))


class FlashAttentionOnMeta(TorchFunctionMode):
    """Route ``F.scaled_dot_product_attention`` to the flash-attention kernel (which has meta and autograd support).

    On the CPU and the meta device SDPA falls back to the math path (explicit softmax, the [S, S] matrix saved for
    backward); on an H100 in bf16 it runs flash attention, which saves only its output and a log-sum-exp and
    recomputes the rest in backward. Counting under this mode gives the GPU's FLOPs and saved tensors.
    """

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            query, key, value = args[:3]
            extra = dict(zip(("attn_mask", "dropout_p", "is_causal"), args[3:])) | kwargs
            if extra.get("attn_mask") is not None or extra.get("dropout_p", 0.0) or extra.get("is_causal"):
                raise ValueError("FlashAttentionOnMeta handles plain attention only (no mask, dropout or causal)")
            flash = torch.ops.aten._scaled_dot_product_flash_attention
            return flash(query, key, value, 0.0, False, False, scale=extra.get("scale"))[0]
        return func(*args, **kwargs)


@dataclass(frozen=True, kw_only=True)
class UNetCost:
    """One UNet's cost per image, counted on the meta device (flash attention)."""

    forward_flops: float
    """Forward without an adapter (the KL reference pass), FLOPs per image."""
    lora_forward_flops: float
    """Forward with the LoRA adapter (sampling, and the training forward), FLOPs per image."""
    lora_backward_flops: float
    """Backward from the output into the LoRA weights (activation gradients through frozen weights, LoRA weight
    gradients; flash attention recomputes its forward), FLOPs per image."""
    saved_bytes_per_image: float
    """Bytes of activations kept for backward per image of a training forward (weights excluded: the difference
    between batch 2 and batch 1)."""
    by_op: dict[str, float]
    """Forward + backward FLOPs per image of the LoRA training pass, by aten op."""


def measure_unet_cost(
    build: Callable[[], torch.nn.Module],
    *,
    text_tokens: int,
    text_width: int,
    prepare: Callable[[torch.nn.Module], None] | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> UNetCost:
    """Count FLOPs and saved activations of a UNet built on the meta device.

    Args:
        build: returns the UNet (with a LoRA adapter); called under ``torch.device("meta")``.
        text_tokens, text_width: L and D of the prompt embeddings.
        prepare: applied to the built UNet before counting (e.g. ``policy.acceleration.set_lora_compute``).
        dtype: of the frozen weights and activations.
    """
    with torch.device("meta"):
        unet = build()
    torch.nn.Module.to(unet, dtype=dtype)  # frozen weights only: the LoRA weights stay float32 below
    for name, param in unet.named_parameters():
        if ".lora_" in name:
            param.data = param.data.float()
    if prepare is not None:
        prepare(unet)
    sample = int(unet.config.sample_size)

    def inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        latents = torch.empty(batch, unet.config.in_channels, sample, sample, device="meta", dtype=dtype)
        timesteps = torch.zeros(batch, device="meta", dtype=torch.long)
        return latents, timesteps, torch.empty(batch, text_tokens, text_width, device="meta", dtype=dtype)

    def training_forward(batch: int) -> tuple[int, torch.Tensor, dict[str, float]]:
        """Saved-for-backward bytes (weights included), the output, and FLOPs by op of a forward with grad."""
        storages: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storages[tensor.untyped_storage()._cdata] = tensor.untyped_storage().nbytes()
            return tensor

        with (
            FlashAttentionOnMeta(),
            FlopCounterMode(display=False) as counter,
            torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor),
        ):
            latents, timesteps, text = inputs(batch)
            out = unet(latents, timesteps, encoder_hidden_states=text).sample
        return sum(storages.values()), out, _by_op(counter)

    one, _, _ = training_forward(1)
    two, out, forward_ops = training_forward(2)
    with FlashAttentionOnMeta(), FlopCounterMode(display=False) as counter:
        out.float().sum().backward()
    backward_ops = _by_op(counter)
    with adapters_disabled(unet), torch.no_grad(), FlashAttentionOnMeta(), FlopCounterMode(display=False) as counter:
        latents, timesteps, text = inputs(1)
        unet(latents, timesteps, encoder_hidden_states=text)
    by_op = {op: (forward_ops.get(op, 0.0) + backward_ops.get(op, 0.0)) / 2 for op in forward_ops | backward_ops}
    return UNetCost(
        forward_flops=float(counter.get_total_flops()),
        lora_forward_flops=sum(forward_ops.values()) / 2,
        lora_backward_flops=sum(backward_ops.values()) / 2,
        saved_bytes_per_image=float(two - one),
        by_op=by_op,
    )


def _by_op(counter: FlopCounterMode) -> dict[str, float]:
    return {str(op): float(flops) for op, flops in counter.get_flop_counts()["Global"].items()}


def vae_flops(build: Callable[[], torch.nn.Module], *, resolution: int, dtype: torch.dtype = torch.bfloat16) -> dict:
    """FLOPs per image of the VAE's encoder (mode of the posterior) and decoder at ``resolution`` px (meta device)."""
    with torch.device("meta"):
        vae = build()
    torch.nn.Module.to(vae, dtype=dtype)
    images = torch.empty(1, 3, resolution, resolution, device="meta", dtype=dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        latents = vae.encode(images).latent_dist.mode()
    encode = counter.get_total_flops()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        vae.decode(latents)
    return {"encode": float(encode), "decode": float(counter.get_total_flops())}


def recipe_flops(
    cost: UNetCost, *, steps: int, guidance: bool, trained_steps: int, vae: Mapping[str, float] | None = None
) -> dict[str, float]:
    """FLOPs of one DDPO sample, by phase.

    Args:
        cost: per-image UNet costs.
        steps: T, DDIM steps sampled.
        guidance: CFG on (every UNet call covers 2 images per sample).
        trained_steps: J, steps trained per sample (T for the full recipe); each needs a reference forward.
        vae: per-image ``encode``/``decode`` FLOPs, or None to leave the VAE out.

    Returns:
        ``sampling``, ``reference``, ``train_forward``, ``train_backward``, ``vae`` and ``total`` FLOPs per sample.
    """
    images = 2 if guidance else 1
    phases = {
        "sampling": steps * images * cost.lora_forward_flops,
        "reference": trained_steps * images * cost.forward_flops,
        "train_forward": trained_steps * images * cost.lora_forward_flops,
        "train_backward": trained_steps * images * cost.lora_backward_flops,
        "vae": 0.0 if vae is None else float(vae["encode"] + vae["decode"]),
    }
    phases["total"] = sum(phases.values())
    return phases


def recipe_attention_flops(cost: UNetCost, *, steps: int, guidance: bool, trained_steps: int) -> float:
    """The attention part (QK^T and attention x V, forward and backward) of :func:`recipe_flops`' UNet FLOPs per
    sample, from ``cost.by_op``: every forward (sampling, reference, training) has the same attention FLOPs (LoRA
    does not touch them), and training adds the flash-attention backward."""
    forward = sum(flops for op, flops in cost.by_op.items() if "attention" in op and "backward" not in op)
    backward = sum(flops for op, flops in cost.by_op.items() if "attention" in op and "backward" in op)
    images = 2 if guidance else 1
    return images * ((steps + 2 * trained_steps) * forward + trained_steps * backward)


def sample_flops(
    model_config: Any, *, steps: int, trained_steps: int, batch: int, requests: int, vae: bool
) -> dict[str, float]:
    """FLOPs of one sample by phase (:func:`recipe_flops`), counted on the meta device for ``model_config`` (an
    ``InpaintModelConfig``).

    The VAE encode runs once per distinct request (``requests`` of them per ``batch`` samples), the decode per
    sample; ``vae=False`` leaves both out (the baseline does neither).
    """
    cost, per_image = count_model(model_config)
    per_sample = {"encode": per_image["encode"] * requests / batch, "decode": per_image["decode"]}
    return recipe_flops(cost, steps=steps, guidance=True, trained_steps=trained_steps, vae=per_sample if vae else None)


@functools.cache
def count_model(model_config: Any) -> tuple[Any, dict[str, float]]:
    """The UNet's per-image cost (with the bench's LoRA) and the VAE's encode/decode FLOPs, counted once."""
    # policy.model pulls in diffusers and transformers: imported when a model is counted
    from policy.config import LoraConfig
    from policy.lora import add_lora
    from policy.model import build_unet, build_vae

    def build() -> Any:
        unet = build_unet(
            model_config.unet,
            sample_size=model_config.resolution // model_config.vae.scale_factor,
            latent_channels=model_config.vae.latent_channels,
            cross_attention_dim=model_config.text.hidden_size,
        )
        add_lora(unet, LoraConfig())
        return unet

    text = model_config.text
    cost = measure_unet_cost(build, text_tokens=text.max_length, text_width=text.hidden_size)
    vae = vae_flops(lambda: build_vae(model_config.vae, model_config.resolution), resolution=model_config.resolution)
    return cost, vae
