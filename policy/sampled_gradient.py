"""DDPO's update gradient taken while sampling: per-sample sums of grad log pi on the LoRA weights, weighted by the
advantages once the rewards are in (``trainer.optim.gradient = "during_sampling"``).

With one optimiser step per epoch the policy that is trained is the policy that sampled, so the PPO ratio is
exactly 1, the clip is inactive, and the step's objective over its N = S x J trained (sample, step) rows is

    L = (1 / N) sum_(i,t) [ -A_i log pi(x_t'^i | x_t^i) + kl_coef KL_t^i ]

    grad L = (1 / N) ( -sum_i A_i g_i + kl_coef K ),   g_i = sum_t grad log pi_t^i,   K = sum_(i,t) grad KL_t^i.

g_i (one per sample: S x the adapter's size) and K do not depend on the advantages, so they are accumulated at
each trained step of the sampling loop from the sampler's own UNet call, run with grad; the replay forward of
the trained rows disappears. Per step: a base forward (adapters off, no grad) at the same x_t gives mu_base;
forward hooks record each LoRA factor's input and output in the step's forward (with grad); one backward of
sum_i m_i log pi_t^i (m_i = 1 on trained rows) down to those outputs gives every g_i; when kl_coef > 0, a second
backward of sum_i m_i KL_t^i adds to K. Memory: one step's activations at the sampler's batch, not the replay's.

Cost per trained step, in UNet forward-equivalents F and LoRA backwards (activation gradients only) Bk: sampling
F + base F + Bk (+ Bk for the KL), against the re-forward's sampling F + base F + replay F + Bk. The
replay forward is saved; with kl_coef > 0 a backward is added, so the two cost about the same arithmetic (a
backward cannot separate the advantage-weighted per-sample terms from the KL's summed term without knowing the
advantages). The measured balance depends on how well the device uses the sampler's smaller UNet calls
(``experiments.bench.sampled_gradient``).

Per-sample gradients of a LoRA factor W (peft's ``lora_A`` / ``lora_B``, an ``nn.Linear`` or ``nn.Conv2d`` without
bias) come from its input a_r and its output gradient d_r on each row r of the UNet batch: grad_r W = sum over
positions of d_r a_r^T (a convolution's input unfolded into patches: R x in k^2 x positions floats, negligible on the
studio model but ~1.5 GB for one 3x3 conv call at SD's 64x64 latents with 32 rows; the recipes' attention-only LoRA
has no such cost), :func:`per_row_weight_grad`. This holds
because the UNet treats its rows independently (GroupNorm and attention act within a row), so the gradient of a
sum over rows reaches each row's activations as if the row had been differentiated alone. With classifier-free
guidance the UNet batch is [unconditional; conditional] and the guided mean of sample i uses rows i and B + i:
both rows' gradients go to sample i. The product latents replaced after each step are inputs (no grad) and the
log-prob and KL are background means, as in the replay (``policy.replay``), so the same terms are differentiated.

Same update as ``"re_forward"`` up to float rounding: the sampler's UNet calls have other shapes than the replay's
(``sampler.batch_size`` samples at one timestep instead of ``rows_per_forward`` rows of mixed timesteps).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from types import TracebackType

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer

from policy.losses import gaussian_kl
from policy.model import InpaintPolicy
from rollout.ddim_logprob import DDIMStepOutput
from rollout.denoise import DenoisingConditioning, denoise_step
from rollout.protocols import DenoisingStepFn


def per_row_weight_grad(factor: torch.nn.Module, inputs: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
    """The gradient of a bias-free Linear or Conv2d weight contributed by each row of a batch, float32.

    Args:
        factor: the layer (``nn.Linear``, or ``nn.Conv2d`` with groups = 1 and zero padding).
        inputs: ``[R, ..., in]`` (Linear) or ``[R, in, H, W]`` (Conv2d): what the layer received.
        grad_output: the gradient of the loss with respect to the layer's output, ``[R, ..., out]`` or
            ``[R, out, H', W']``.

    Returns:
        ``[R, *factor.weight.shape]``: row r's term of ``factor.weight.grad`` (their sum is the whole batch's).
    """
    rows = inputs.shape[0]
    a, d = inputs.float(), grad_output.float()
    if isinstance(factor, torch.nn.Conv2d):
        patches = F.unfold(
            a, factor.kernel_size, dilation=factor.dilation, padding=factor.padding, stride=factor.stride
        )
        return torch.bmm(d.flatten(2), patches.transpose(1, 2)).view(rows, *factor.weight.shape)
    return torch.bmm(d.reshape(rows, -1, d.shape[-1]).transpose(1, 2), a.reshape(rows, -1, a.shape[-1]))


def lora_factors(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """Every ``lora_A`` / ``lora_B`` module of the attached adapter(s), in module order.

    Raises:
        ValueError: a factor this module cannot take per-sample gradients of (not Linear/Conv2d, a bias, grouped
            or non-zero-padded convolution).
    """
    factors = []
    for name, layer in unet.named_modules():
        if not isinstance(layer, BaseTunerLayer):
            continue
        for factor in [*layer.lora_A.values(), *layer.lora_B.values()]:
            conv = isinstance(factor, torch.nn.Conv2d)
            if not isinstance(factor, torch.nn.Linear | torch.nn.Conv2d) or factor.bias is not None:
                raise ValueError(f"{name}: per-sample gradients need bias-free Linear or Conv2d LoRA factors")
            if conv and (factor.groups != 1 or factor.padding_mode != "zeros" or isinstance(factor.padding, str)):
                raise ValueError(f"{name}: per-sample gradients need ungrouped, zero-padded LoRA convolutions")
            factors.append(factor)
    return factors


class SampledGradient:
    """Accumulates g_i (per sample) and K while the sampler runs; :meth:`gradients` combines them (module docstring).

    Use as a context manager around the sampling (it installs forward hooks on the LoRA factors and removes them on
    exit) and pass ``step_fn=gradient.step_fn(offset)`` to ``rollout.sampler.sample_trajectories`` for the call
    whose first sample is sample ``offset`` of the epoch.

    Args:
        policy: the policy that samples (and is trained); eval mode, so no dropout.
        params: the trained LoRA parameters (``policy.trainable_parameters()``), in the optimiser's order.
        trained: ``[S, T]`` bool, True for the (sample, step) rows the update trains on (every step with
            ``timestep_fraction`` = 1).
        kl_gradient: whether K is needed (kl_coef > 0); the KL itself is measured either way (``policy/kl``).
    """

    def __init__(
        self,
        policy: InpaintPolicy,
        params: Sequence[torch.nn.Parameter],
        trained: torch.Tensor,
        *,
        kl_gradient: bool,
    ) -> None:
        if trained.ndim != 2 or trained.dtype != torch.bool:
            raise ValueError(f"trained must be a bool [S, T] mask, got {trained.dtype} {list(trained.shape)}")
        self.policy = policy
        self.params = list(params)
        self.trained = trained.cpu()
        self.kl_gradient = kl_gradient
        index = {id(p): i for i, p in enumerate(self.params)}
        self._factors = [(f, index[id(f.weight)]) for f in lora_factors(policy.unet) if id(f.weight) in index]
        missing = set(range(len(self.params))) - {i for _, i in self._factors}
        if missing:
            raise ValueError(f"{len(missing)} trained parameter(s) are not the weight of any LoRA factor")
        samples = trained.shape[0]
        self.per_sample = [torch.zeros(samples, *p.shape, dtype=torch.float32, device=p.device) for p in self.params]
        """g_i for every parameter: ``[S, *param.shape]`` float32."""
        self.kl_sum = [torch.zeros(p.shape, dtype=torch.float32, device=p.device) for p in self.params]
        """K for every parameter (zeros unless ``kl_gradient``)."""
        self.kl_total = torch.zeros((), dtype=torch.float64, device=self.params[0].device)
        """Sum of the trained rows' KL_t (mean over background latent dims), for ``policy/kl``."""
        self._records: list[tuple[int, torch.nn.Module, torch.Tensor, torch.Tensor]] | None = None
        """While a trained step's forward runs: (parameter index, factor, input, output) of every factor call."""
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> SampledGradient:
        self._hooks = [
            factor.register_forward_hook(functools.partial(self._on_forward, index)) for factor, index in self._factors
        ]
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    @property
    def rows(self) -> int:
        """Trained (sample, step) rows of this process."""
        return int(self.trained.sum())

    def step_fn(self, offset: int) -> DenoisingStepFn:
        """The sampler's step for a ``sample_trajectories`` call whose samples start at sample ``offset``."""
        return functools.partial(self._step, offset)

    def gradients(self, advantages: torch.Tensor, kl_coef: float, rows: int) -> list[torch.Tensor]:
        """grad L = (1 / rows) (-sum_i A_i g_i + kl_coef K) for every parameter.

        Args:
            advantages: ``[S]`` this process's (clipped, weighted) advantages.
            kl_coef: the KL weight of this epoch.
            rows: N, the trained rows of the step over every process (the mean's denominator).
        """
        if advantages.shape != (self.trained.shape[0],):
            raise ValueError(f"advantages must be [{self.trained.shape[0]}], got {list(advantages.shape)}")
        grads = []
        for per_sample, kl in zip(self.per_sample, self.kl_sum):
            weights = -advantages.to(device=per_sample.device, dtype=torch.float32) / rows
            grad = torch.tensordot(weights, per_sample, dims=1)
            grads.append(grad + (kl_coef / rows) * kl if self.kl_gradient else grad)
        return grads

    def metric_sums(self, advantages: torch.Tensor, kl_coef: float) -> dict[str, torch.Tensor]:
        """Sums over this process's trained rows of what the re-forward update logs per row (float64).

        The ratio is 1 on every row, so the clip fraction, approx_kl and the log-prob gap are 0.
        """
        counts = self.trained.sum(dim=1).double()
        pg = -(advantages.detach().double().cpu() * counts).sum()
        kl = self.kl_total.cpu()
        zero = torch.zeros((), dtype=torch.float64)
        return {
            "policy/loss": pg + kl_coef * kl,
            "policy/pg_loss": pg,
            "policy/kl": kl,
            "policy/ratio_mean": counts.sum(),
            "policy/clipfrac": zero,
            "policy/approx_kl": zero,
            "policy/log_prob_gap": zero,
        }

    # ------------------------------------------------------------------------------------------------------

    def _on_forward(
        self, index: int, factor: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> None:
        if self._records is not None and output.requires_grad:  # not: plain sampling, the base pass, evaluation
            self._records.append((index, factor, inputs[0].detach(), output))

    def _step(
        self,
        offset: int,
        first: int,
        step: int,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        conditioning: DenoisingConditioning,
        *,
        eta: float,
        variance_noise: torch.Tensor,
    ) -> DDIMStepOutput:
        policy, start, batch = self.policy, offset + first, latents.shape[0]
        mask = self.trained[start : start + batch, step].to(latents.device)
        if not bool(mask.any()):
            return denoise_step(policy, latents, timestep, conditioning, eta=eta, variance_noise=variance_noise)
        with torch.no_grad(), policy.as_base():
            ref = denoise_step(policy, latents, timestep, conditioning, eta=eta, variance_noise=variance_noise)
        self._records = []
        try:
            with torch.enable_grad():
                out = denoise_step(policy, latents, timestep, conditioning, eta=eta, variance_noise=variance_noise)
            records = self._records
        finally:
            self._records = None
        weights = mask.float()
        with torch.enable_grad():  # the sampler runs under no_grad
            kl = gaussian_kl(out.mean, ref.mean, out.std, conditioning.background)
            log_prob_sum, kl_rows_sum = (out.log_prob * weights).sum(), (kl * weights).sum()
        # The backward runs to the factors' outputs, not to the weights: autograd's summed weight gradients would
        # cost as much as the per-row ones and are not needed.
        outputs = [output for *_, output in records]
        grads = torch.autograd.grad(log_prob_sum, outputs, retain_graph=self.kl_gradient, allow_unused=True)
        for (index, factor, inputs, _), grad in zip(records, grads):
            if grad is not None:  # rows [unconditional; conditional] of the UNet batch: rows i and B + i -> sample i
                per_row = per_row_weight_grad(factor, inputs, grad)
                self.per_sample[index][start : start + batch] += per_row.view(-1, batch, *per_row.shape[1:]).sum(0)
        if self.kl_gradient:
            grads = torch.autograd.grad(kl_rows_sum, outputs, allow_unused=True)
            for (index, factor, inputs, _), grad in zip(records, grads):
                if grad is not None:
                    self.kl_sum[index] += per_row_weight_grad(factor, inputs, grad).sum(0)
        self.kl_total += (kl.detach().double() * weights.double()).sum()  # stays on the device: no sync
        return DDIMStepOutput(
            prev_sample=out.prev_sample.detach(),
            log_prob=out.log_prob.detach(),
            mean=out.mean.detach(),
            std=out.std.detach(),
            pred_original_sample=out.pred_original_sample.detach(),
        )
