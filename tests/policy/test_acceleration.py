"""policy.acceleration on a tiny policy (CPU): the options change speed only, never what is computed."""

from __future__ import annotations

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch._dynamo.utils import counters

from policy.acceleration import (
    GatedLinear,
    ModelDtypeLinear,
    accelerate,
    check_device,
    set_lora_compute,
    set_reference_gate,
)
from policy.acceleration_config import AccelerationConfig
from policy.config import InpaintModelConfig, LoraConfig, TextEncoderConfig, UNetConfig, VAEConfig
from policy.lora import adapters_disabled, lora_parameters
from policy.model import InpaintPolicy
from policy.trainer import DDPOTrainer
from policy.trainer_config import DDPOConfig, OptimConfig
from rollout.config import SamplerConfig
from rollout.request import InpaintRequest

TINY = InpaintModelConfig(
    resolution=32,
    unet=UNetConfig(block_out_channels=(16, 32, 32)),
    vae=VAEConfig(block_out_channels=(8, 16, 16)),
    text=TextEncoderConfig(hidden_size=32, num_heads=2, intermediate_size=64, max_length=8),
)
WORDS = ["white", "marble", "oak", "wood"]


def tiny_policy(dtype: torch.dtype = torch.float32, *, perturb: bool = True) -> InpaintPolicy:
    """A 32 px policy with a rank-4 adapter; ``perturb`` makes B non-zero so the adapter changes the output."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        policy = InpaintPolicy.from_config(TINY, lora=LoraConfig(), vocabulary=WORDS, dtype=dtype)
        if perturb:
            with torch.no_grad():
                for param in lora_parameters(policy.unet):
                    param.add_(0.05 * torch.randn_like(param))
    return policy


def unet_inputs(policy: InpaintPolicy, batch: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(batch, 9, 8, 8, generator=generator).to(policy.dtype)
    timestep = torch.tensor([999, 500, 250, 1][:batch])
    prompts = policy.encode_prompts(["white marble", "oak wood", "", "oak"][:batch])
    return latents, timestep, prompts


def tiny_requests(count: int) -> list[InpaintRequest]:
    requests = []
    for i in range(count):
        generator = torch.Generator().manual_seed(i)
        mask = torch.zeros(32, 32, dtype=torch.bool)
        mask[8 + i : 18 + i, 10:18] = True
        rgb = torch.randint(0, 256, (3, 32, 32), generator=generator, dtype=torch.uint8)
        requests.append(
            InpaintRequest(
                request_id=f"r{i}",
                product_id=f"p{i}",
                segment="warm",
                prompt=("white marble", "oak wood")[i % 2],
                product_rgb=rgb,
                product_mask=mask,
            )
        )
    return requests


def mean_red(images: torch.Tensor, requests: object) -> torch.Tensor:
    return images[:, 0].float().mean(dim=(1, 2)) / 255.0


def test_defaults_change_nothing() -> None:
    policy = tiny_policy()
    assert accelerate(policy, AccelerationConfig()) is None
    assert policy.unet_runner is None
    layers = [m for m in policy.unet.modules() if isinstance(m, BaseTunerLayer)]
    assert layers and all(type(f) is torch.nn.Linear for m in layers for f in [*m.lora_A.values(), *m.lora_B.values()])
    assert all(m.cast_input_dtype_enabled for m in layers)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reference_gate": True}, "reference_gate needs lora_compute = 'model_dtype'"),
        ({"cuda_graphs": True}, "cuda_graphs needs compile = true"),
        ({"compile": True, "compile_backend": "eager", "compile_mode": "max-autotune-no-cudagraphs"}, "has no modes"),
    ],
)
def test_bad_configs(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AccelerationConfig(**kwargs)


def test_cuda_only_options_refused_on_cpu() -> None:
    config = AccelerationConfig(tf32=True, attention="flash")
    with pytest.raises(ValueError, match=r"tf32, attention = 'flash' need a CUDA device; the policy is on cpu"):
        check_device(config, torch.device("cpu"))


def test_reference_gate_needs_adapter_and_model_dtype() -> None:
    policy = InpaintPolicy.from_config(TINY, vocabulary=WORDS)
    assert accelerate(policy, AccelerationConfig(attention="math")) is not None  # options without LoRA: fine
    with pytest.raises(ValueError, match="reference_gate needs a LoRA adapter"):
        accelerate(policy, AccelerationConfig(lora_compute="model_dtype", reference_gate=True))
    adapted = tiny_policy()
    with pytest.raises(ValueError, match="needs lora_compute = 'model_dtype'"):
        set_reference_gate(adapted.unet, True)


def test_model_dtype_lora_is_exact_in_float32_and_close_in_bf16() -> None:
    for dtype, tolerance in ((torch.float32, 0.0), (torch.bfloat16, 2e-2)):
        policy = tiny_policy(dtype)
        inputs = unet_inputs(policy)
        with torch.no_grad():
            expected = policy.predict_noise(*inputs)
            accelerate(policy, AccelerationConfig(lora_compute="model_dtype"))
            got = policy.predict_noise(*inputs)
        error = ((got - expected).norm() / expected.norm()).item()
        assert error <= tolerance, (dtype, error)


def test_bf16_lora_weights_grads_and_adam_state_stay_float32() -> None:
    policy = tiny_policy(torch.bfloat16)
    accelerate(policy, AccelerationConfig(lora_compute="model_dtype", reference_gate=True))
    params = policy.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    policy.predict_noise(*unet_inputs(policy)).square().mean().backward()
    optimizer.step()
    assert params and all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in params)
    assert all(p.grad.abs().sum() > 0 for p in params)  # every factor gets a gradient through the gate (= 1)
    states = [optimizer.state[p] for p in params]
    assert all(s["exp_avg"].dtype == torch.float32 and s["exp_avg_sq"].dtype == torch.float32 for s in states)
    frozen = [p for p in policy.unet.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)


def test_reference_gate_equals_peft_switch_exactly() -> None:
    policy = tiny_policy(torch.bfloat16)
    inputs = unet_inputs(policy)
    with torch.no_grad(), adapters_disabled(policy.unet):
        base = policy.predict_noise(*inputs)
    runner = accelerate(policy, AccelerationConfig(lora_compute="model_dtype", reference_gate=True))
    with torch.no_grad():
        adapted = policy.predict_noise(*inputs)
        with policy.as_base():
            assert runner.gate.item() == 0.0
            gated = policy.predict_noise(*inputs)
    assert runner.gate.item() == 1.0
    assert torch.equal(gated, base)
    assert not torch.allclose(adapted, base)  # the adapter (perturbed B) does change the output
    assert all(p.requires_grad for p in policy.trainable_parameters())


def test_gate_is_not_saved_and_float32_undoes_everything() -> None:
    policy = tiny_policy()
    keys = set(policy.unet.state_dict())
    accelerate(policy, AccelerationConfig(lora_compute="model_dtype", reference_gate=True))
    assert set(policy.unet.state_dict()) == keys
    assert any(isinstance(m, GatedLinear) for m in policy.unet.modules())
    set_lora_compute(policy.unet, "float32")
    assert not any(isinstance(m, ModelDtypeLinear) for m in policy.unet.modules())
    assert not any("lora_gate" in m._buffers for m in policy.unet.modules())


def test_sampling_timestep_is_broadcast_without_changing_the_output() -> None:
    policy = tiny_policy()
    latents, _, prompts = unet_inputs(policy)
    with torch.no_grad():
        expected = policy.predict_noise(latents, torch.tensor(500), prompts)
        accelerate(policy, AccelerationConfig(attention="math"))
        got = policy.predict_noise(latents, torch.tensor(500), prompts)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def make_trainer(acceleration: AccelerationConfig) -> DDPOTrainer:
    config = DDPOConfig(
        epochs=2,
        requests_per_epoch=2,
        samples_per_request=2,
        sampler=SamplerConfig(num_steps=3, guidance_scale=3.0, batch_size=4),
        optim=OptimConfig(samples_per_step=4, rows_per_forward=2),  # reference calls: 4 rows, the sampler's shape
        eval_every=0,
        acceleration=acceleration,
    )
    return DDPOTrainer(tiny_policy(perturb=False), mean_red, tiny_requests(2), config, seed=0)


def run_epoch(trainer: DDPOTrainer) -> dict[str, float]:
    record = trainer.run_epoch()
    trainer.epoch += 1
    return record


def test_compiled_trainer_matches_eager_with_two_graphs_and_no_recompiles() -> None:
    """Sampling and the gated reference share a graph, training has the other; the next epoch never recompiles.

    Backend "eager" (dynamo's graph capture without code generation) checks the tracing, guards and the gate;
    inductor's C++ code generation would take minutes on a CPU and its kernels are benchmarked on the GPU.
    """
    gated = AccelerationConfig(lora_compute="model_dtype", reference_gate=True)
    eager_trainer = make_trainer(gated)
    eager = [run_epoch(eager_trainer) for _ in range(2)]
    torch._dynamo.reset()
    counters.clear()
    trainer = make_trainer(AccelerationConfig(**{**gated.__dict__, "compile": True, "compile_backend": "eager"}))
    compiled = [run_epoch(trainer)]
    assert counters["stats"]["unique_graphs"] == 2
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled.append(run_epoch(trainer))
    assert counters["stats"]["unique_graphs"] == 2
    torch._dynamo.reset()
    assert compiled[0]["policy/kl"] == 0.0  # B = 0 before the first update: the gated reference is exact
    assert compiled[1]["policy/kl"] > 0.0
    for got, expected in zip(compiled, eager):
        for key in ("reward/mean", "policy/kl", "policy/loss", "rollout/log_prob_mean"):
            assert got[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-9), key
