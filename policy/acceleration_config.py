"""Configuration of how the policy's UNet is run on a GPU (section ``[trainer.acceleration]``); torch-free.

Every option is off by default, which is the exact CPU path: the UNet is called eagerly, LoRA in float32. The
options change speed and memory, never the algorithm; their effect on results (float rounding only) is tested in
tests/policy/test_acceleration.py and their speed is measured by experiments/bench/ddpo_gpu.py. See
``policy.acceleration`` for what each one does. Channels-last memory format is ``[policy.model] channels_last``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

AttentionBackend = Literal["auto", "flash", "efficient", "cudnn", "math"]
CompileBackend = Literal["inductor", "aot_eager", "eager"]


@dataclass(frozen=True, kw_only=True)
class AccelerationConfig:
    """Speed options of the UNet calls (sampling, the base pass of the KL and training); all off by default."""

    lora_compute: Literal["float32", "model_dtype"] = "float32"
    """Arithmetic of the LoRA branch. "float32": peft's default, the input is copied to float32 and the low-rank
    products run in float32 (with bf16 frozen weights that is one float32 copy of the activations per adapted layer,
    kept for backward). "model_dtype": the products run in the frozen weights' dtype on a cast of the float32 LoRA
    weights; the weights, their gradients and the optimiser state stay float32 (mixed precision, as autocast does,
    but confined to the adapter). Identical to "float32" when the model is float32."""
    reference_gate: bool = False
    """Compute the base model of the KL (adapter off) by multiplying the LoRA B weights by a shared 0-d tensor set to
    0 instead of peft's adapter switch: exactly the base model's output, and with compile the base pass reuses
    the sampling graph instead of compiling its own (the switch is a guarded Python attribute). Needs
    lora_compute = "model_dtype"."""
    attention: AttentionBackend = "auto"
    """Kernel of torch's scaled_dot_product_attention (diffusers' AttnProcessor2_0 is installed on every attention):
    "auto" lets torch choose; "flash", "efficient" and "cudnn" need CUDA; "math" is the plain implementation."""
    tf32: bool = False
    """Allow TF32 for float32 matrix products and convolutions (CUDA only; process-wide setting). Touches only what
    still runs in float32 (LoRA with lora_compute = "float32", a float32 model)."""
    cudnn_benchmark: bool = False
    """Let cuDNN time its convolution algorithms for each new shape and keep the fastest (CUDA only; process-wide).
    Pays with static shapes, which the sampler and trainer have."""
    compile: bool = False
    """torch.compile the UNet (static shapes: one graph per call signature, e.g. sampling, base and
    training). The first calls of each signature compile (minutes at SD size with inductor)."""
    compile_mode: Literal["default", "max-autotune-no-cudagraphs"] = "default"
    """Inductor mode (compile only): "default" fuses the memory-bound ops; "max-autotune-no-cudagraphs" also
    benchmarks Triton templates against cuBLAS/cuDNN for every matrix product and convolution (much longer
    compile)."""
    compile_backend: CompileBackend = "inductor"
    """torch.compile backend: "inductor" generates kernels; "aot_eager" and "eager" only trace (for tests of the
    compiled path on a CPU, where inductor's C++ compilation is slow)."""
    cuda_graphs: bool = False
    """Replay each compiled graph as a CUDA graph (inductor's reduce-overhead / max-autotune modes): removes kernel
    launch overhead. Needs compile with the inductor backend and a CUDA device; shapes are static per graph."""

    def __post_init__(self) -> None:
        if self.reference_gate and self.lora_compute != "model_dtype":
            raise ValueError(
                "reference_gate needs lora_compute = 'model_dtype' (the gate lives in those LoRA factors)"
            )
        if self.cuda_graphs and not self.compile:
            raise ValueError("cuda_graphs needs compile = true (graphs are captured by torch.compile's inductor)")
        if (
            self.compile
            and self.compile_backend != "inductor"
            and (self.cuda_graphs or self.compile_mode != "default")
        ):
            raise ValueError(
                f"compile_backend = {self.compile_backend!r} has no modes: compile_mode must be 'default' and "
                "cuda_graphs false (they are inductor options)"
            )

    @property
    def enabled(self) -> bool:
        """Whether any option differs from the default (the plain eager call)."""
        return self != AccelerationConfig()

    @property
    def inductor_mode(self) -> str | None:
        """The ``torch.compile`` mode string: compile_mode, with CUDA graphs added when asked for."""
        if not self.compile or self.compile_backend != "inductor":
            return None
        if self.cuda_graphs:
            return "reduce-overhead" if self.compile_mode == "default" else "max-autotune"
        return self.compile_mode
