"""Running the policy's UNet fast on a GPU without changing what it computes (beyond float rounding).

:func:`accelerate` applies an :class:`~policy.acceleration_config.AccelerationConfig` to an
:class:`~policy.model.InpaintPolicy` in place and installs a :class:`UNetRunner` as ``policy.unet_runner``, through
which ``predict_noise`` (hence the sampler, the base pass of the KL, training and evaluation) calls the UNet:

- LoRA arithmetic in the model dtype (:func:`set_lora_compute`): with bf16 frozen weights, peft copies every
  adapted layer's input to float32 and keeps that copy for backward (measured on the meta device at SD size:
  0.97 GiB of saved activations per image instead of 0.74). Casting the float32 LoRA weights to bf16 inside the
  product instead keeps the weights, their gradients and AdamW's state float32 (mixed precision confined to the
  adapter). Not ``torch.autocast``: autocast also runs GroupNorm/LayerNorm in float32 and returns float32
  activations, which costs memory traffic in eager mode and changes the frozen model's arithmetic;
- the attention kernel (diffusers' ``AttnProcessor2_0`` everywhere, ``torch.nn.attention.sdpa_kernel`` around the
  call);
- TF32 and cuDNN autotuning (process-wide switches, CUDA only);
- ``torch.compile`` of the UNet with static shapes, and CUDA graphs on top (inductor's reduce-overhead mode). A 0-d
  timestep (the sampler's) is repeated to ``[B]`` before the call (the UNet broadcasts it the same way), so that
  sampling and replaying stored rows present one call signature;
- the reference gate (config key ``reference_gate``, :func:`set_reference_gate`; it turns the policy into the base
  model for the KL): peft's adapter switch is a Python attribute that dynamo guards on (and it flips
  ``requires_grad`` of the LoRA weights), so the adapters-disabled base pass of the KL would compile a graph of its
  own. With the gate, the LoRA B factors multiply their weight by a shared 0-d tensor, which
  :meth:`UNetRunner.as_base` sets to 0: the adapter's output is then exactly zero, ``W x + 0`` is exactly the base
  model's output, and sampling and the base pass (both without grad, same shapes) share one compiled graph.
  Without the gate :meth:`UNetRunner.as_base` is peft's switch (``policy.lora.adapters_disabled``).

Channels-last memory format is a model option (``InpaintModelConfig.channels_last``); no other state is changed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from peft.tuners.tuners_utils import BaseTunerLayer
from torch.nn.attention import SDPBackend, sdpa_kernel

from policy.acceleration_config import AccelerationConfig
from policy.lora import adapters_disabled
from policy.model import InpaintPolicy

logger = logging.getLogger(__name__)

RECOMPILE_LIMIT = 64
"""Dynamo's per-function graph limit is raised to this with compile on (its default, 8, is reached by a training
run's sampling, base, training, evaluation and partial-chunk signatures; past it dynamo silently runs eager)."""
_SDPA_BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}


class ModelDtypeLinear(torch.nn.Linear):
    """A LoRA factor computed in its input's dtype: the float32 weight is cast inside the product.

    The cast is differentiable, so the weight's gradient arrives in float32. Swapped in for ``nn.Linear`` by
    :func:`set_lora_compute` (same parameters and state-dict names, so saving and loading are unchanged).
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(input.dtype)
        return F.linear(input, self.weight.to(input.dtype), bias)


class ModelDtypeConv2d(torch.nn.Conv2d):
    """:class:`ModelDtypeLinear` for LoRA on convolutions."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(input.dtype)
        return self._conv_forward(input, self.weight.to(input.dtype), bias)


class GatedLinear(ModelDtypeLinear):
    """:class:`ModelDtypeLinear` whose weight is multiplied by the shared 0-d buffer ``lora_gate`` (1 or 0).

    Installed on the LoRA B factors by :func:`set_reference_gate`. The product with 1 is exact, so the adapted
    output and its gradients are unchanged; with 0 the branch outputs exact zeros (the base model).
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else (self.bias * self.lora_gate).to(input.dtype)
        return F.linear(input, (self.weight * self.lora_gate).to(input.dtype), bias)


class GatedConv2d(ModelDtypeConv2d):
    """:class:`GatedLinear` for LoRA on convolutions."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else (self.bias * self.lora_gate).to(input.dtype)
        return self._conv_forward(input, (self.weight * self.lora_gate).to(input.dtype), bias)


_MODEL_DTYPE_CLASS = {torch.nn.Linear: ModelDtypeLinear, torch.nn.Conv2d: ModelDtypeConv2d}
_FLOAT32_CLASS = {
    ModelDtypeLinear: torch.nn.Linear,
    ModelDtypeConv2d: torch.nn.Conv2d,
    GatedLinear: torch.nn.Linear,
    GatedConv2d: torch.nn.Conv2d,
}
_GATED_CLASS = {ModelDtypeLinear: GatedLinear, ModelDtypeConv2d: GatedConv2d}
_UNGATED_CLASS = {v: k for k, v in _GATED_CLASS.items()}
_GATE = "lora_gate"


def set_lora_compute(unet: torch.nn.Module, mode: str) -> int:
    """Run every LoRA branch of ``unet`` in float32 (peft's default) or in the frozen weights' dtype.

    A hack on peft's modules, stated: "model_dtype" switches peft's input cast off (``cast_input_dtype_enabled``,
    the flag of ``peft.helpers.disable_input_dtype_casting``) and swaps the class of each ``lora_A``/``lora_B``
    factor for :class:`ModelDtypeLinear`/:class:`ModelDtypeConv2d`; "float32" undoes both. Parameters are
    untouched (float32).

    Returns:
        The number of adapted layers.

    Raises:
        ValueError: an unknown mode, a UNet without LoRA layers, or a factor that is neither Linear nor Conv2d.
    """
    if mode not in ("float32", "model_dtype"):
        raise ValueError(f"lora_compute must be 'float32' or 'model_dtype', got {mode!r}")
    layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
    if not layers:
        raise ValueError("the UNet has no LoRA layers; attach an adapter before setting its compute dtype")
    table = _MODEL_DTYPE_CLASS if mode == "model_dtype" else _FLOAT32_CLASS
    for layer in layers:
        factors = [*layer.lora_A.values(), *layer.lora_B.values()]
        for factor in factors:
            if type(factor) not in _MODEL_DTYPE_CLASS and type(factor) not in _FLOAT32_CLASS:
                raise ValueError(f"LoRA factor of type {type(factor).__name__} is not supported (Linear or Conv2d)")
        for factor in factors:
            if mode == "float32" and _GATE in factor._buffers:
                del factor._buffers[_GATE]
            factor.__class__ = table.get(type(factor), type(factor))
        layer.cast_input_dtype_enabled = mode == "float32"
    return len(layers)


def set_reference_gate(unet: torch.nn.Module, on: bool) -> torch.Tensor | None:
    """Install (or remove) the reference gate on every LoRA B factor; returns the shared gate tensor (or None).

    The gate is one 0-d float32 tensor on the UNet's device, set to 1, registered as a non-persistent buffer
    ``lora_gate`` of every B factor (so state dicts and saved adapters are unchanged). Move the UNet before
    installing it: ``Module.to`` copies buffers per module, which would break the sharing.

    Raises:
        ValueError: the LoRA factors do not compute in the model dtype (call ``set_lora_compute(unet,
            "model_dtype")`` first), or the UNet has no LoRA layers.
    """
    layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
    if not layers:
        raise ValueError("the UNet has no LoRA layers; attach an adapter before installing the reference gate")
    factors = [factor for layer in layers for factor in layer.lora_B.values()]
    if on and any(type(f) not in _GATED_CLASS and type(f) not in _UNGATED_CLASS for f in factors):
        raise ValueError("the reference gate needs lora_compute = 'model_dtype' (set_lora_compute first)")
    if not on:
        for factor in factors:
            factor._buffers.pop(_GATE, None)
            factor.__class__ = _UNGATED_CLASS.get(type(factor), type(factor))
        return None
    gate = torch.ones((), dtype=torch.float32, device=factors[0].weight.device)
    for factor in factors:
        factor.__class__ = _GATED_CLASS.get(type(factor), type(factor))
        factor._buffers.pop(_GATE, None)
        factor.register_buffer(_GATE, gate, persistent=False)
    return gate


def use_sdpa_processor(unet: UNet2DConditionModel) -> None:
    """Give every attention layer diffusers' ``AttnProcessor2_0`` (torch's scaled_dot_product_attention)."""
    if any(not isinstance(p, AttnProcessor2_0) for p in unet.attn_processors.values()):
        unet.set_attn_processor(AttnProcessor2_0())


def check_device(config: AccelerationConfig, device: torch.device) -> None:
    """Refuse options that need CUDA on another device.

    Raises:
        ValueError: naming the options.
    """
    if device.type == "cuda":
        return
    needs_cuda = [
        name
        for name, on in (
            ("tf32", config.tf32),
            ("cudnn_benchmark", config.cudnn_benchmark),
            ("cuda_graphs", config.cuda_graphs),
            (f"attention = {config.attention!r}", config.attention in ("flash", "efficient", "cudnn")),
        )
        if on
    ]
    if needs_cuda:
        raise ValueError(
            f"acceleration option(s) {', '.join(needs_cuda)} need a CUDA device; the policy is on {device}"
        )


class UNetRunner:
    """Calls the UNet as configured: chosen attention kernel, compiled module, CUDA-graph step marks.

    Args:
        unet: the policy's UNet (LoRA attached or not).
        config: the options; ``lora_compute`` and the process-wide switches are applied by :func:`accelerate`.
    """

    def __init__(
        self, unet: UNet2DConditionModel, config: AccelerationConfig, gate: torch.Tensor | None = None
    ) -> None:
        if config.reference_gate and gate is None:
            raise ValueError("reference_gate is on but no gate tensor was given (set_reference_gate installs one)")
        self.config = config
        self.unet = unet
        self.gate = gate
        """The 0-d reference gate shared by the LoRA B factors (1 = policy, 0 = base model), or None."""
        self.module: torch.nn.Module | UNet2DConditionModel = unet
        if config.compile:
            mode = config.inductor_mode
            self.module = torch.compile(unet, backend=config.compile_backend, mode=mode, dynamic=False)

    def __call__(
        self, latent_input: torch.Tensor, timestep: torch.Tensor, prompt_embeds: torch.Tensor
    ) -> torch.Tensor:
        """UNet ``sample`` output ``[B, C, h, w]`` in the model dtype (the arguments of
        ``InpaintPolicy.predict_noise``, already in the model dtype; ``timestep`` 0-d or ``[B]``)."""
        if self.config.cuda_graphs:
            # Each call is a new step: the previous outputs are consumed (the sampler and the trainer take .float()
            # copies, and training runs backward before the next forward).
            torch.compiler.cudagraph_mark_step_begin()
        if timestep.ndim == 0:
            # The UNet does the same broadcast inside; doing it here gives sampling (one timestep per call) and
            # replay (one per row) the same input signature, hence the same compiled graph.
            timestep = timestep.reshape(1).repeat(latent_input.shape[0])
        with self._attention():
            out = self.module(latent_input, timestep, encoder_hidden_states=prompt_embeds).sample
        # A CUDA-graph output lives in the graph's static memory and is overwritten by the next replay.
        return out.clone() if self.config.cuda_graphs else out

    @contextlib.contextmanager
    def as_base(self) -> Iterator[None]:
        """The base model for the calls inside: the gate set to 0 (restored to 1 after), or peft's adapter switch
        when there is no gate. Use under ``torch.no_grad()`` (with the gate, LoRA weights keep requires_grad)."""
        if self.gate is None:
            with adapters_disabled(self.unet):
                yield
            return
        self.gate.fill_(0.0)
        try:
            yield
        finally:
            self.gate.fill_(1.0)

    @contextlib.contextmanager
    def _attention(self) -> Iterator[None]:
        if self.config.attention == "auto":
            yield
            return
        with sdpa_kernel([_SDPA_BACKENDS[self.config.attention]]):
            yield


def accelerate(policy: InpaintPolicy, config: AccelerationConfig) -> UNetRunner | None:
    """Apply ``config`` to ``policy`` in place; returns the runner now in ``policy.unet_runner``.

    With every option at its default nothing is changed (a runner installed earlier stays). Applying the same
    config again returns the installed runner; a different one replaces it (and resets dynamo's caches when the
    compile settings change, so that the new mode takes effect).

    Raises:
        ValueError: a CUDA-only option on another device, or LoRA settings on a UNet without an adapter.
    """
    current = policy.unet_runner
    if not config.enabled:
        return current if isinstance(current, UNetRunner) else None
    if isinstance(current, UNetRunner) and current.config == config:
        return current
    check_device(config, policy.device)
    if config.reference_gate and not policy.has_adapter:
        raise ValueError("reference_gate needs a LoRA adapter (without one the UNet already is the base model)")
    if config.lora_compute != "float32" or policy.has_adapter:
        set_lora_compute(policy.unet, config.lora_compute)
    gate = set_reference_gate(policy.unet, config.reference_gate) if policy.has_adapter else None
    use_sdpa_processor(policy.unet)
    if config.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if config.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if config.compile:
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        if isinstance(current, UNetRunner) and current.config.compile:
            torch._dynamo.reset()
    runner = UNetRunner(policy.unet, config, gate)
    policy.unet_runner = runner
    logger.info("UNet acceleration: %s", config)
    return runner
