"""Benchmark: rollout sampling and the UNet passes a DDPO epoch is made of.

CPU (default): the tiny studio model (64 px, 16x16x4 latents, LoRA r4), 2 threads. Measures, as medians over
``--repeats`` timed runs after one warm-up:

- ``sampler``: seconds per batch of 8 samples, 20 DDIM steps, CFG on (one UNet forward on 16 latents per step),
  including prompt/VAE encoding, decoding, compositing and verification;
- ``unet_forward``: one guided noise prediction (UNet forward at batch 16) without grad;
- ``lora_fwd_bwd``: one training step's policy pass: guided prediction + DDIM log-prob + backward into the LoRA
  weights (what DDPO does on every stored step);
- ``reference_forward``: the same prediction with adapters disabled (pi_ref for the KL term), without grad.

From these it prints an *estimate* of a DDPO epoch (batch 8, 20 steps, training on every step, KL reference
forward): sampler + steps x (lora_fwd_bwd + reference_forward). The RL engineer's target is <= 1.5 s on 2 cores
(reward scoring and the optimiser step come on top). ``--compare-attention`` also times a UNet with
cross-attention at the 8x8 level (the larger alternative in policy/config.py).

``--gpu``: the same measurements on an SD-1.5-inpainting-shaped model built from config (UNet 860 M params:
block_out_channels (320, 640, 1280, 1280), cross_attention_dim 768, in_channels 9, attention_head_dim 8;
SD's VAE and CLIP-L text shapes; random init, no download), bf16 frozen weights, 512 px, 50 steps, batch 8,
with samples/hour and peak memory. Without CUDA it says so and exits 0.

    python -m experiments.bench.rollout                    # CPU, tiny model
    python -m experiments.bench.rollout --gpu              # CUDA, SD-1.5-shaped model
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from policy.config import InpaintModelConfig, LoraConfig, TextEncoderConfig, UNetConfig, VAEConfig
from rollout.config import SamplerConfig

DDPO_EPOCH_TARGET_S = 1.5
SD15_INPAINTING_UNET_PARAMS = 859_535_364  # SD-1.5 (859,520,964) + 5 extra conv_in input channels


def timed(fn: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after one untimed warm-up call."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def build_requests(batch: int, resolution: int) -> list:
    """``batch`` requests at ``resolution`` px: random pixels with a rectangular product of varying size."""
    # heavy (torch): imported when the benchmark runs, so importing the module stays light
    import torch

    from rollout.request import InpaintRequest

    generator = torch.Generator().manual_seed(0)
    requests = []
    for i in range(batch):
        rgb = torch.randint(0, 256, (3, resolution, resolution), generator=generator, dtype=torch.uint8)
        mask = torch.zeros(resolution, resolution, dtype=torch.bool)
        side = resolution // 3 + i % 4
        top = resolution // 3 + i % 3
        mask[top : top + side, resolution // 3 : resolution // 3 + side] = True
        requests.append(
            InpaintRequest(
                request_id=f"bench-{i}",
                product_id=f"product-{i % 4}",
                segment="all",
                prompt="white marble tabletop, soft window light" if i % 2 else "oak wood floor, golden hour light",
                product_rgb=rgb,
                product_mask=mask,
            )
        )
    return requests


def measure(policy: Any, *, batch: int, steps: int, guidance: float, repeats: int, sync: Callable[[], None]) -> dict:
    """Time sampling and the three per-step UNet passes of DDPO on ``policy``; seconds (medians and all runs)."""
    # heavy (torch, diffusers): imported when the benchmark runs, so importing the module stays light
    import torch

    from rollout.denoise import conditioning_from_trajectory, denoise_step
    from rollout.sampler import sample_trajectories

    requests = build_requests(batch, policy.resolution)
    config = SamplerConfig(num_steps=steps, guidance_scale=guidance, eta=1.0, batch_size=batch)
    seeds = list(range(batch))
    rollout = sample_trajectories(policy, requests, seeds, config)
    trajectory = rollout.trajectory
    conditioning = conditioning_from_trajectory(trajectory, dtype=policy.dtype)
    step = steps // 2
    latents, timestep, next_latents = (
        trajectory.latents[:, step],
        trajectory.timesteps[step],
        trajectory.latents[:, step + 1],
    )
    params = policy.trainable_parameters()

    def sample() -> None:
        sample_trajectories(policy, requests, seeds, config)

    def forward() -> None:
        with torch.no_grad():
            denoise_step(policy, latents, timestep, conditioning, eta=1.0, prev_sample=next_latents)

    def forward_backward() -> None:
        out = denoise_step(policy, latents, timestep, conditioning, eta=1.0, prev_sample=next_latents)
        out.log_prob.mean().backward()
        for p in params:
            p.grad = None

    def reference() -> None:
        with torch.no_grad(), policy.as_base():
            denoise_step(policy, latents, timestep, conditioning, eta=1.0, prev_sample=next_latents)

    policy.scheduler.set_timesteps(steps, device=policy.device)
    runs = {
        "unet_forward": timed(forward, repeats, sync),
        "lora_fwd_bwd": timed(forward_backward, repeats, sync),
        "reference_forward": timed(reference, repeats, sync),
        "sampler": timed(sample, repeats, sync),
    }
    medians = {name: statistics.median(times) for name, times in runs.items()}
    epoch = medians["sampler"] + steps * (medians["lora_fwd_bwd"] + medians["reference_forward"])
    return {
        "median_s": medians,
        "runs_s": runs,
        "ddpo_epoch_estimate_s": epoch,
        "preservation_ok": rollout.preservation.ok,
        "unet_batch": batch * (2 if config.do_classifier_free_guidance else 1),
    }


def describe_model(policy: Any) -> dict:
    # heavy (torch, diffusers, transformers): imported when the benchmark runs, so importing the module stays light
    from policy.model import describe

    return describe(policy)


def print_table(title: str, result: dict, steps: int, batch: int) -> None:
    med = result["median_s"]
    unet_batch = result["unet_batch"]
    rows = [
        (f"sampler: batch of {batch}, {steps} steps, CFG", med["sampler"], "s / batch"),
        (f"UNet guided forward (batch {unet_batch}), no grad", med["unet_forward"] * 1e3, "ms"),
        (f"LoRA forward + backward (batch {unet_batch})", med["lora_fwd_bwd"] * 1e3, "ms"),
        (f"reference forward, adapters off (batch {unet_batch})", med["reference_forward"] * 1e3, "ms"),
        (f"DDPO epoch estimate (sampler + {steps} x (fwd/bwd + ref))", result["ddpo_epoch_estimate_s"], "s"),
    ]
    print(f"\n{title}")
    width = max(len(r[0]) for r in rows)
    for name, value, unit in rows:
        print(f"  {name:<{width}}  {value:10.3f} {unit}")


def run_cpu(args: argparse.Namespace) -> dict:
    # heavy (torch, diffusers, transformers): imported when the benchmark runs, so importing the module stays light
    import torch

    from experiments.studio.prompts import studio_vocabulary
    from policy.model import InpaintPolicy

    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {}
    variants = {"default": InpaintModelConfig()}
    if args.compare_attention:
        variants["attention_8x8"] = InpaintModelConfig(unet=UNetConfig(cross_attention_levels=(False, True, True)))
    for name, config in variants.items():
        policy = InpaintPolicy.from_config(config, lora=LoraConfig(), vocabulary=studio_vocabulary())
        result = measure(
            policy, batch=args.batch, steps=args.steps, guidance=args.guidance, repeats=args.repeats, sync=lambda: None
        )
        result["model"] = describe_model(policy)
        results[name] = result
        print_table(
            f"CPU, {args.threads} thread(s), tiny model '{name}' (UNet {result['model']['unet_params'] / 1e6:.2f} M "
            f"params, cross-attention levels {list(config.unet.cross_attention_levels)})",
            result,
            args.steps,
            args.batch,
        )
    epoch = results["default"]["ddpo_epoch_estimate_s"]
    verdict = "within" if epoch <= DDPO_EPOCH_TARGET_S else "OVER"
    print(
        f"\nDDPO epoch estimate {epoch:.2f} s: {verdict} the {DDPO_EPOCH_TARGET_S} s target (before scoring/optimiser)"
    )
    return results


def run_gpu(args: argparse.Namespace) -> dict | None:
    # heavy (torch, diffusers, transformers): imported when the benchmark runs, so importing the module stays light
    import torch

    if not torch.cuda.is_available():
        print("--gpu: CUDA is not available on this machine; nothing measured (run it on a GPU host).")
        return None
    # heavy (diffusers, transformers): only once CUDA is known to be there
    from experiments.studio.prompts import studio_vocabulary
    from policy.model import InpaintPolicy

    device = torch.device("cuda:0")
    config = sd15_inpainting_config()
    steps = args.steps
    policy = InpaintPolicy.from_config(
        config, lora=LoraConfig(), vocabulary=studio_vocabulary(), device=device, dtype=torch.bfloat16
    )
    info = describe_model(policy)
    if info["unet_params"] != SD15_INPAINTING_UNET_PARAMS:
        print(
            f"warning: UNet has {info['unet_params']:,} params, SD-1.5 inpainting has {SD15_INPAINTING_UNET_PARAMS:,}"
        )
    torch.cuda.reset_peak_memory_stats(device)
    result = measure(
        policy,
        batch=args.batch,
        steps=steps,
        guidance=args.guidance,
        repeats=args.repeats,
        sync=torch.cuda.synchronize,
    )
    result["model"] = info
    result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    result["device"] = torch.cuda.get_device_name(device)
    epoch = result["ddpo_epoch_estimate_s"]
    result["samples_per_hour"] = {
        "sampling_only": 3600 * args.batch / result["median_s"]["sampler"],
        "ddpo_estimate": 3600 * args.batch / epoch,
    }
    print_table(
        f"{result['device']}, SD-1.5-inpainting-shaped (UNet {info['unet_params'] / 1e6:.1f} M params), bf16, "
        f"{policy.resolution} px",
        result,
        steps,
        args.batch,
    )
    print(
        f"  samples/hour: sampling only {result['samples_per_hour']['sampling_only']:,.0f}, DDPO estimate "
        f"{result['samples_per_hour']['ddpo_estimate']:,.0f}; peak memory {result['peak_memory_gib']:.1f} GiB"
    )
    return result


def sd15_inpainting_config() -> Any:
    """Stable Diffusion 1.5 inpainting's architecture (random init): 860 M UNet, 84 M VAE, CLIP-L text encoder."""
    return InpaintModelConfig(
        resolution=512,
        channels_last=True,
        unet=UNetConfig(
            block_out_channels=(320, 640, 1280, 1280),
            cross_attention_levels=(True, True, True, False),
            layers_per_block=2,
            attention_head_dim=8,
            norm_num_groups=32,
        ),
        vae=VAEConfig(
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, scaling_factor=0.18215
        ),
        text=TextEncoderConfig(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072, max_length=77),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="CUDA benchmark of the SD-1.5-inpainting-shaped model")
    parser.add_argument(
        "--batch", type=int, default=8, help="samples per batch (default 8; CFG doubles the UNet batch)"
    )
    parser.add_argument("--steps", type=int, help="DDIM steps (default 20 on CPU, 50 with --gpu)")
    parser.add_argument("--guidance", type=float, default=5.0, help="CFG scale (default 5; <= 1 turns CFG off)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per measurement (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--compare-attention", action="store_true", help="also time cross-attention at 8x8 (CPU)")
    parser.add_argument("--out", type=Path, help="JSON output (default runs/bench/rollout_{cpu,gpu}.json)")
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 50 if args.gpu else 20
    # heavy (torch): imported when the benchmark runs, so importing the module stays light
    import torch

    load_before = os.getloadavg()[0]
    if not args.gpu and load_before > 0.5:
        print(f"warning: 1-minute load average is {load_before:.2f}; other processes will inflate these timings")
    results = run_gpu(args) if args.gpu else run_cpu(args)
    if results is None:
        return 0
    out = args.out or Path(f"runs/bench/rollout_{'gpu' if args.gpu else 'cpu'}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "rollout",
        "mode": "gpu" if args.gpu else "cpu",
        "batch": args.batch,
        "steps": args.steps,
        "guidance_scale": args.guidance,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
        "results": results,
    }
    out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
