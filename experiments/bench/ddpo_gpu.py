"""Benchmark: DDPO throughput at SD-1.5-inpainting size on one GPU (issue 9), against a plain-diffusers baseline.

The model: an SD-1.5-inpainting-shaped policy built from config (UNet 860 M params, SD's VAE, a CLIP-L-shaped text
encoder; random init, nothing downloaded; ``experiments.bench.rollout.sd15_inpainting_config``), bf16 frozen
weights, LoRA r4 on the attention projections (float32 weights), 512 px (64x64x4 latents). The recipe: batch 16
(4 requests x 4 samples), DDIM eta 1 with 50 steps, CFG 5 (one UNet call on 32 latents per step), training on every
step (clipped surrogate + 0.01 x Gaussian KL), the KL reference forward (adapter off) on every trained step, one
AdamW step per epoch.

Rows (one epoch = 16 samples; cumulative fast-path options):

- ``baseline``: plain diffusers in eager mode, as in issue 9: the same ``UNet2DConditionModel`` called directly
  in ddpo-pytorch's loops (T guided forwards at batch 32 without grad; T reference forwards with peft's adapters
  disabled; T forward+backward at batch 32 into the LoRA weights with peft's default float32 LoRA arithmetic), SDPA
  attention, bf16. UNet work and the DDIM step only: the conditioning is prepared outside the timed region and no
  VAE decode is done, which makes the baseline faster and every speed-up below a lower bound;
- ``project eager``: the project's real ``DDPOTrainer`` (sampler with product preservation, VAE encode/decode,
  reward scoring in a worker thread, reference means, clipped update) with the default ``AccelerationConfig``;
- ``+ bf16 LoRA``: ``lora_compute = "model_dtype"``, the reference gate, cuDNN autotuning;
- ``+ compile``: ``torch.compile`` of the UNet (inductor, static shapes; sampling and the reference share one
  graph thanks to the gate, training has the other);
- ``+ R rows per training call`` (``--update-rows R ...``): the compiled path with larger training calls (the
  default, batch / 2 rows = the sampler's 32 latents, keeps the reference pass on the sampling graph; larger calls
  use the memory under the 40 GiB target for better matrix shapes, at the price of one more compiled graph);
- ``+ channels-last UNet`` (``--channels-last``): the UNet's weights converted in place (kept for later rows);
- ``+ CUDA graphs`` (``--cuda-graphs``): inductor's reduce-overhead mode on top;
- ``+ timestep fraction f`` (``--timestep-fraction``): trains on a fraction of the steps; a different algorithm,
  reported separately and never counted toward the target.
- ``bf16 LoRA, gradient during sampling`` (``--during-sampling``): the same update as the ``+ bf16 LoRA`` row
  with ``trainer.optim.gradient = "during_sampling"`` (per-sample LoRA gradients taken in the sampler's calls, no
  replay forward; one more backward per step for the KL; eager: compile is refused for it). Its peak memory is one
  sampling step's activations instead of a training call's.

Old log-probs (``--old-log-probs``, default ``replay``): the recipe is one optimiser step per epoch, where the
ratio against the training forward's own detached log-prob is the same objective as against the sampler's
record, and is exactly 1 whatever bf16 rounding does (``policy/log_prob_gap`` in the diagnostics shows the
gap; ``sampler`` gives the ratio against the sampler's record, as DDPO does).

Compilation dominates a short device session (the inductor cache lives in /tmp, so a fresh machine compiles cold);
compile times and the configurations measured so far are recorded in docs/benchmarks.md.

Each row times ``--epochs`` epochs after ``--warmup`` epochs (which include compilation) and reports the median.
``--timed-steps N`` (< ``--steps``) runs N-step chains and scales the time per sample by steps / N: every part of a
UNet-bound epoch grows linearly with the steps, the VAE, scoring and optimiser step do not, so the scaled time is an
upper bound (the samples/hour a lower bound) and the output says so. TFLOP/s uses the counted FLOPs of the chains
that ran (``experiments.bench.unet_cost``, FlopCounterMode on the meta device: 2 FLOPs per multiply-add, matrix
products, convolutions and attention only); % of limit is against issue 9's 7,150 samples/hour (400 TFLOP per
sample at the 798 TFLOP/s bf16 matmul ceiling measured on an H100). Peak memory is
``torch.cuda.max_memory_allocated`` over the timed epochs (weights included). After the timing, each full-recipe
project row profiles one ``--profile-steps`` epoch (default 4, same call shapes) and reports device time by kernel
family (attention, convolution, matmul, normalisation, inductor's fused kernels, layout copies; ``kernel_profile``):
where the time goes that the TFLOP/s column does not explain. Writes JSON after every row.

    python -m experiments.bench.ddpo_gpu --compile --timed-steps 10 --timestep-fraction 0.5     # on a GPU
    python -m experiments.bench.ddpo_gpu --device cpu --tiny --steps 4 --batch 4               # CPU dry run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from experiments.bench.ddpo_baseline import baseline_epoch
from experiments.bench.kernel_profile import format_families, profile_families
from experiments.bench.rollout import build_requests, sd15_inpainting_config
from experiments.bench.unet_cost import sample_flops
from policy.acceleration_config import AccelerationConfig
from policy.config import InpaintModelConfig, LoraConfig, TextEncoderConfig, UNetConfig, VAEConfig
from policy.trainer_config import DDPOConfig, KLConfig, OptimConfig
from rollout.config import SamplerConfig

LIMIT_SAMPLES_PER_HOUR = 7150.0
"""Issue 9's physical limit: 400 TFLOP per sample at the 798 TFLOP/s bf16 matmul ceiling of one H100."""
TARGET_SAMPLES_PER_HOUR = 5000.0
TARGET_SPEEDUP = 2.4
TARGET_PEAK_GIB = 40.0
REQUESTS = 4
"""Distinct requests per epoch (batch = REQUESTS x samples per request; advantages are per request)."""
GUIDANCE = 5.0
KL_COEF = 0.01
CLIP_RANGE = 1e-4
LEARNING_RATE = 3e-4


def pixel_reward(images: Any, requests: Any) -> Any:
    """Stand-in reward at no cost (mean red minus blue): the benchmark measures the policy side."""
    return (images[:, 0].float() - images[:, 2].float()).mean(dim=(1, 2)) / 255.0


def tiny_config() -> Any:
    """A 32 px model (0.36 M UNet params) for the CPU dry run: same code, seconds instead of minutes."""
    return InpaintModelConfig(
        resolution=32,
        unet=UNetConfig(block_out_channels=(16, 32, 32)),
        vae=VAEConfig(block_out_channels=(8, 16, 16)),
        text=TextEncoderConfig(hidden_size=32, num_heads=2, intermediate_size=64, max_length=8),
    )


def bench_requests(resolution: int) -> list:
    """``REQUESTS`` random product photos with rectangular products (``experiments.bench.rollout``)."""
    return build_requests(REQUESTS, resolution)


class BenchRow(NamedTuple):
    """One row of the table: what runs, with which options (cumulative options are repeated in later rows)."""

    name: str
    kind: str
    """"baseline" (plain diffusers) or "project" (the DDPOTrainer)."""
    acceleration: Any = None
    """The project's AccelerationConfig (None for the baseline)."""
    fraction: float = 1.0
    """Timestep fraction trained (1 = the full recipe)."""
    rows_per_forward: int | None = None
    """Rows per training call; None = --rows-per-forward."""
    channels_last: bool = False
    """Convert the UNet to channels-last before this row (kept for later rows)."""
    gradient: str = "re_forward"
    """trainer.optim.gradient: "re_forward" (replay the trained rows) or "during_sampling"."""


def run_baseline(policy: Any, requests: list, args: argparse.Namespace, sync: Callable[[], None]) -> dict[str, Any]:
    """Time :func:`baseline_epoch` (``--warmup`` untimed epochs, then ``--epochs`` timed ones)."""
    # heavy (torch, diffusers): imported when the benchmark runs, so importing the module stays light
    import torch

    from rollout.denoise import prepare_conditioning
    from rollout.masks import latent_product_mask

    per_request = args.batch // REQUESTS
    chosen = [r for r in requests for _ in range(per_request)]
    device = policy.device
    with torch.no_grad():
        pixels = torch.stack([r.product_rgb for r in chosen]).to(device=device, dtype=torch.float32) / 127.5 - 1.0
        mask = torch.stack([r.product_mask for r in chosen])
        conditioning = prepare_conditioning(
            prompt_embeds=policy.encode_prompts([r.prompt for r in chosen]),
            negative_prompt_embeds=policy.encode_prompts([""]).expand(len(chosen), -1, -1),
            latent_product=latent_product_mask(mask, policy.vae_scale_factor).to(device),
            masked_image_latents=policy.encode_images(pixels * mask.to(device)[:, None]),
            guidance_scale=GUIDANCE,
            dtype=policy.dtype,
        )
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=LEARNING_RATE)
    return time_epochs(
        lambda epoch, steps: baseline_epoch(
            policy,
            conditioning,
            steps,
            optimizer,
            seed=epoch,
            guidance=GUIDANCE,
            clip_range=CLIP_RANGE,
            kl_coef=KL_COEF,
        ),
        args,
        sync,
    )


def run_project(
    policy: Any,
    requests: list,
    args: argparse.Namespace,
    acceleration: Any,
    sync: Callable[[], None],
    timestep_fraction: float = 1.0,
    rows_per_forward: int | None = None,
    gradient: str = "re_forward",
) -> dict[str, Any]:
    """Time the project's ``DDPOTrainer.run_epoch`` with ``acceleration`` applied to ``policy`` (training calls
    of ``rows_per_forward`` rows, default ``--rows-per-forward``; ``gradient`` is ``optim.gradient``)."""

    # heavy (torch, diffusers, transformers): imported when the benchmark runs, so importing the module stays light
    from policy.trainer import DDPOTrainer

    trainers: dict[int, DDPOTrainer] = {}

    def trainer_for(steps: int) -> DDPOTrainer:
        """One trainer per chain length (warm-up chains may be shorter); all share the policy and its runner."""
        if steps not in trainers:
            config = DDPOConfig(
                epochs=args.warmup + args.epochs,
                requests_per_epoch=REQUESTS,
                samples_per_request=args.batch // REQUESTS,
                sampler=SamplerConfig(num_steps=steps, eta=1.0, guidance_scale=GUIDANCE, batch_size=args.batch),
                optim=OptimConfig(
                    learning_rate=LEARNING_RATE,
                    clip_range=CLIP_RANGE,
                    samples_per_step=args.batch,
                    rows_per_forward=rows_per_forward or args.rows_per_forward,
                    timestep_fraction=timestep_fraction,
                    old_log_probs=args.old_log_probs,
                    gradient=gradient,
                ),
                kl=KLConfig(coef=KL_COEF),
                acceleration=acceleration,
                overlap_scoring=True,
                eval_every=0,
                checkpoint_every=0,
            )
            trainers[steps] = DDPOTrainer(policy, pixel_reward, requests, config, seed=0)
        return trainers[steps]

    records: list[dict[str, float]] = []

    def epoch(_: int, steps: int) -> None:
        trainer = trainer_for(steps)
        records.append(trainer.run_epoch())
        trainer.epoch += 1

    result = time_epochs(epoch, args, sync)
    last = records[-1]
    result["trained_steps"] = trainer_for(args.timed_steps).config.trained_steps
    result["phases_s"] = {
        part: statistics.median(r[f"time/{part}_s"] for r in records[args.warmup :])
        for part in ("sample_score", "reference", "update")
    }
    result["rows_per_forward"] = rows_per_forward or args.rows_per_forward
    result["diagnostics"] = {
        k: last[k] for k in ("policy/kl", "policy/ratio_mean", "policy/clipfrac", "policy/log_prob_gap", "reward/mean")
    }
    result["preservation_max_abs_diff"] = max(r.get("preservation/max_abs_diff", 0.0) for r in records)
    if args.profile_steps and timestep_fraction == 1.0:
        try:  # after the timing, on the compiled graphs already built (same call shapes: no recompilation)
            profiled = trainer_for(args.profile_steps)
            result["profile"] = profile_families(profiled.run_epoch, cuda=on_cuda(args)) | {
                "steps": args.profile_steps
            }
            print(f"    profile ({args.profile_steps}-step epoch): {format_families(result['profile'])}", flush=True)
        except Exception as exc:  # the profile is a diagnosis; the timing stands without it
            result["profile_error"] = f"{type(exc).__name__}: {exc}"[:500]
    return result


def on_cuda(args: argparse.Namespace) -> bool:
    """Whether the bench runs on a CUDA device (``--device cuda...`` and one is there)."""
    # heavy (torch): imported when the benchmark runs, so importing the module stays light
    import torch

    return torch.cuda.is_available() and args.device.startswith("cuda")


def time_epochs(run: Callable[[int, int], None], args: argparse.Namespace, sync: Callable[[], None]) -> dict[str, Any]:
    """Wall seconds of ``--warmup`` calls of ``run(epoch, warmup_steps)`` then ``--epochs`` calls of
    ``run(epoch, timed_steps)`` (synchronised), and the peak memory of the timed ones."""
    # heavy (torch): imported when the benchmark runs, so importing the module stays light
    import torch

    cuda = on_cuda(args)
    warmup, timed = [], []
    for epoch in range(args.warmup + args.epochs):
        if epoch == args.warmup and cuda:
            torch.cuda.reset_peak_memory_stats()
        sync()
        start = time.perf_counter()
        run(epoch, args.warmup_steps if epoch < args.warmup else args.timed_steps)
        sync()
        seconds = time.perf_counter() - start
        (warmup if epoch < args.warmup else timed).append(seconds)
        print(f"    {'warm-up' if epoch < args.warmup else 'timed'} epoch: {seconds:.2f} s", flush=True)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return {"epoch_s": statistics.median(timed), "epochs_s": timed, "warmup_s": warmup, "peak_memory_gib": peak}


def summarise(result: dict[str, Any], args: argparse.Namespace, flops: dict[str, float] | None) -> None:
    """Add samples/hour (at ``--steps``), TFLOP/s and % of the limit to a timed row, in place."""
    per_hour_timed = 3600.0 * args.batch / result["epoch_s"]
    result["samples_per_hour_timed_steps"] = per_hour_timed
    result["samples_per_hour"] = per_hour_timed * args.timed_steps / args.steps
    phases = result.get("phases_s")
    if phases is not None and result.get("trained_steps") == args.timed_steps:
        # Sampling and the reference make the same UNet calls (same count and shapes), so what sampling takes beyond
        # the reference is the part that does not grow with the steps (VAE, scoring, compositing).
        fixed = max(0.0, phases["sample_score"] - phases["reference"])
        epoch = fixed + (result["epoch_s"] - fixed) * args.steps / args.timed_steps
        result["samples_per_hour_linear_estimate"] = 3600.0 * args.batch / epoch
    result["flops_per_sample"] = None if flops is None else flops["total"]
    result["tflops_per_s"] = None if flops is None else flops["total"] * args.batch / result["epoch_s"] / 1e12
    result["percent_of_limit"] = 100.0 * result["samples_per_hour"] / LIMIT_SAMPLES_PER_HOUR


def print_table(rows: list[dict[str, Any]], header: str) -> None:
    """The results table (the last thing printed)."""
    print(f"\n{header}")
    columns = f"{'configuration':<34} {'s/epoch':>8} {'samples/h':>10} {'TFLOP/s':>8} {'% limit':>8} {'peak GiB':>9}"
    print(f"{columns} {'speed-up':>9} {'warm-up s':>10}")
    for row in rows:
        if "error" in row:
            print(f"{row['name']:<34} FAILED: {row['error']}")
            continue
        peak = "-" if row["peak_memory_gib"] is None else f"{row['peak_memory_gib']:.1f}"
        speedup = "-" if row.get("speedup") is None else f"{row['speedup']:.2f}x"
        tflops = "-" if row["tflops_per_s"] is None else f"{row['tflops_per_s']:.1f}"
        print(
            f"{row['name']:<34} {row['epoch_s']:>8.2f} {row['samples_per_hour']:>10,.0f} {tflops:>8} "
            f"{row['percent_of_limit']:>7.1f}% {peak:>9} {speedup:>9} {sum(row['warmup_s']):>10.1f}"
        )


def verdicts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets against the fastest full-recipe row (timestep-fraction rows excluded)."""
    full = [r for r in rows if "error" not in r and r["kind"] == "project" and r["timestep_fraction"] == 1.0]
    if not full:
        return {}
    best = max(full, key=lambda r: r["samples_per_hour"])
    peak = best["peak_memory_gib"]
    return {
        "best_row": best["name"],
        "samples_per_hour": best["samples_per_hour"],
        "meets_samples_per_hour": best["samples_per_hour"] >= TARGET_SAMPLES_PER_HOUR,
        "speedup": best.get("speedup"),
        "meets_speedup": best.get("speedup") is not None and best["speedup"] >= TARGET_SPEEDUP,
        "peak_memory_gib": peak,
        "meets_peak_memory": peak is not None and peak <= TARGET_PEAK_GIB,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="torch device (default cuda; cpu for the dry run)")
    parser.add_argument("--tiny", action="store_true", help="a 32 px, 0.36 M-param model instead of SD-1.5 size")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="frozen weights' dtype")
    parser.add_argument("--batch", type=int, default=16, help=f"samples per epoch, a multiple of {REQUESTS}")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps of the recipe reported (default 50)")
    parser.add_argument("--timed-steps", type=int, help="DDIM steps actually run (default --steps); time is scaled")
    parser.add_argument("--warmup-steps", type=int, help="DDIM steps of the warm-up epochs (default --timed-steps)")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per row (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs per row before timing (compilation)")
    parser.add_argument(
        "--rows-per-forward",
        type=int,
        help="(sample, step) rows per training UNet call (x2 with CFG); default batch / 2, which makes the reference "
        "pass's calls (2 x rows) the sampler's shape, so that compiled sampling and reference share one graph",
    )
    parser.add_argument("--compile", action="store_true", help="add the torch.compile row")
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        choices=("inductor", "aot_eager", "eager"),
        help="torch.compile backend",
    )
    parser.add_argument(
        "--update-rows",
        type=int,
        nargs="+",
        default=[],
        metavar="ROWS",
        help="add compiled rows with ROWS (sample, step) rows per training call (larger calls, more memory); the "
        "last value is kept by the rows after",
    )
    parser.add_argument(
        "--channels-last", action="store_true", help="add a compiled row with the UNet in channels-last format"
    )
    parser.add_argument(
        "--cuda-graphs", action="store_true", help="add a compiled row replayed as CUDA graphs (reduce-overhead)"
    )
    parser.add_argument(
        "--old-log-probs",
        default="replay",
        choices=("replay", "sampler"),
        help="what the ratio is taken against (optim.old_log_probs; default replay: the recipe is one optimiser "
        "step per epoch, where both are the same objective and replay is immune to bf16 rounding)",
    )
    parser.add_argument(
        "--profile-steps",
        type=int,
        default=4,
        help="after each full-recipe project row, profile one epoch of this many steps and report device time by "
        "kernel family (experiments.bench.kernel_profile; 0 = off)",
    )
    parser.add_argument("--timestep-fraction", type=float, help="add a row training on this fraction of the steps")
    parser.add_argument(
        "--during-sampling",
        action="store_true",
        help="add an eager bf16-LoRA row with trainer.optim.gradient = 'during_sampling' (the same update without "
        "the replay forward; compare with the '+ bf16 LoRA, reference gate' row: compile is refused for it)",
    )
    parser.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the baseline row")
    parser.add_argument(
        "--no-eager-rows",
        dest="eager_rows",
        action="store_false",
        help="skip the 'project eager' and 'bf16 LoRA' rows",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (CPU dry run)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/ddpo_gpu.json"), help="JSON output path")
    args = parser.parse_args(argv)
    args.timed_steps = args.timed_steps or args.steps
    args.warmup_steps = args.warmup_steps or args.timed_steps
    args.rows_per_forward = args.rows_per_forward or max(1, args.batch // 2)
    if args.batch < REQUESTS or args.batch % REQUESTS:
        parser.error(f"--batch must be a positive multiple of {REQUESTS}, got {args.batch}")
    if not 1 <= args.timed_steps <= args.steps:
        parser.error(f"--timed-steps must be in [1, --steps = {args.steps}], got {args.timed_steps}")
    if (args.update_rows or args.channels_last or args.cuda_graphs) and not args.compile:
        parser.error("--update-rows, --channels-last and --cuda-graphs add compiled rows: give --compile too")
    if args.cuda_graphs and args.compile_backend != "inductor":
        parser.error("--cuda-graphs needs --compile-backend inductor")
    if any(rows < 1 for rows in args.update_rows):
        parser.error(f"--update-rows must be >= 1, got {args.update_rows}")
    if args.epochs < 1 or args.warmup < 0 or args.rows_per_forward < 1 or args.warmup_steps < 1:
        parser.error("need --epochs >= 1, --warmup >= 0, --warmup-steps >= 1 and --rows-per-forward >= 1")
    if args.profile_steps < 0:
        parser.error(f"--profile-steps must be >= 0, got {args.profile_steps}")
    if args.timestep_fraction is not None and not 0 < args.timestep_fraction < 1:
        parser.error(f"--timestep-fraction must be in (0, 1), got {args.timestep_fraction}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # heavy (torch, diffusers, transformers): imported when the benchmark runs, so importing the module stays light
    import torch

    from experiments.studio.prompts import studio_vocabulary
    from policy.model import InpaintPolicy, describe

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        print("CUDA is not available here; run with --device cpu --tiny for the dry run.")
        return 1
    torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    model_config = tiny_config() if args.tiny else sd15_inpainting_config()
    dtype = getattr(torch, args.dtype)
    started = time.perf_counter()
    torch.manual_seed(0)
    policy = InpaintPolicy.from_config(
        model_config, lora=LoraConfig(), vocabulary=studio_vocabulary(), device=device, dtype=dtype
    )
    requests = bench_requests(policy.resolution)
    model = describe(policy)
    print(f"built {model['unet_params'] / 1e6:.1f} M-param UNet in {time.perf_counter() - started:.1f} s", flush=True)

    bf16_lora = AccelerationConfig(lora_compute="model_dtype", reference_gate=True, cudnn_benchmark=cuda)
    compiled = AccelerationConfig(**{**bf16_lora.__dict__, "compile": True, "compile_backend": args.compile_backend})
    fast = compiled if args.compile else bf16_lora
    plan: list[BenchRow] = []
    if args.baseline:
        plan.append(BenchRow("baseline (plain diffusers, eager)", "baseline"))
    if args.eager_rows:
        plan += [
            BenchRow("project eager", "project", AccelerationConfig()),
            BenchRow("+ bf16 LoRA, reference gate", "project", bf16_lora),
        ]
    if args.compile:
        plan.append(BenchRow(f"+ torch.compile ({args.compile_backend})", "project", compiled))
    for rows in args.update_rows:
        plan.append(BenchRow(f"+ {rows} rows per training call", "project", compiled, rows_per_forward=rows))
    fast_rows = args.update_rows[-1] if args.update_rows else None
    if args.channels_last:
        plan.append(
            BenchRow("+ channels-last UNet", "project", compiled, rows_per_forward=fast_rows, channels_last=True)
        )
    if args.cuda_graphs:
        fast = dataclasses.replace(compiled, cuda_graphs=True)
        plan.append(BenchRow("+ CUDA graphs", "project", fast, rows_per_forward=fast_rows))
    if args.during_sampling:
        plan.append(
            BenchRow(
                "  bf16 LoRA, gradient during sampling",
                "project",
                bf16_lora,
                gradient="during_sampling",
            )
        )
    if args.timestep_fraction is not None:
        name = f"  fast path, timestep fraction {args.timestep_fraction:g}"
        plan.append(BenchRow(name, "project", fast, args.timestep_fraction, rows_per_forward=fast_rows))

    payload: dict[str, Any] = {
        "benchmark": "ddpo_gpu",
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "model": model,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "recipe": {
            "guidance_scale": GUIDANCE,
            "eta": 1.0,
            "kl_coef": KL_COEF,
            "clip_range": CLIP_RANGE,
            "lora_rank": 4,
        },
        "scaling": (
            f"chains of {args.timed_steps} steps were run; times per sample are scaled by {args.steps}/"
            f"{args.timed_steps} (an upper bound: VAE, scoring and the optimiser step do not grow with the steps)"
            if args.timed_steps != args.steps
            else "none: full chains were run"
        ),
        "limit_samples_per_hour": LIMIT_SAMPLES_PER_HOUR,
        "targets": {
            "samples_per_hour": TARGET_SAMPLES_PER_HOUR,
            "speedup": TARGET_SPEEDUP,
            "peak_gib": TARGET_PEAK_GIB,
        },
        "rows": [],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    baseline_rate = None
    for name, kind, acceleration, fraction, rows_per_forward, channels_last, gradient in plan:
        if channels_last:
            # In place and kept for the later rows (cumulative); the compiled graphs recompile for the new strides.
            policy.unet.to(memory_format=torch.channels_last)
        print(f"running: {name}", flush=True)
        trained = max(1, round(args.timed_steps * fraction))
        row: dict[str, Any] = {"name": name, "kind": kind, "timestep_fraction": fraction}
        try:
            if kind == "baseline":
                row |= run_baseline(policy, requests, args, sync)
            else:
                row |= run_project(policy, requests, args, acceleration, sync, fraction, rows_per_forward, gradient)
                row["gradient"] = gradient
                row["channels_last"] = policy.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
                row["acceleration"] = acceleration.__dict__
            try:
                flops = sample_flops(
                    model_config,
                    requests=REQUESTS,
                    steps=args.timed_steps,
                    trained_steps=trained,
                    batch=args.batch,
                    vae=kind == "project",
                )
            except Exception as exc:  # the count runs on the meta device; the timings stand without it
                flops, row["flops_error"] = None, f"{type(exc).__name__}: {exc}"[:500]
            summarise(row, args, flops)
            if kind == "baseline":
                baseline_rate = row["samples_per_hour"]
            row["speedup"] = None if baseline_rate is None else row["samples_per_hour"] / baseline_rate
        except Exception as exc:  # a failed row (e.g. out of memory, a compile error) must not lose the others
            row["error"] = f"{type(exc).__name__}: {exc}"[:2000]
            traceback.print_exc()
            print(f"  {name} failed: {row['error']}", flush=True)
            if cuda:
                torch.cuda.empty_cache()
        payload["rows"].append(row)
        payload["verdicts"] = verdicts(payload["rows"])
        args.out.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
        print(
            f"  done: {json.dumps({k: row.get(k) for k in ('epoch_s', 'samples_per_hour', 'peak_memory_gib')})}",
            flush=True,
        )

    print_table(
        payload["rows"],
        f"DDPO at {policy.resolution} px on {payload['device']}: UNet {model['unet_params'] / 1e6:.0f} M params, "
        f"{args.dtype}, batch {args.batch}, {args.steps} DDIM steps (timed {args.timed_steps}), CFG {GUIDANCE:g}, "
        f"every step trained + KL reference; samples/h at {args.steps} steps; limit {LIMIT_SAMPLES_PER_HOUR:,.0f}/h",
    )
    print(f"scaling: {payload['scaling']}")
    print(f"verdicts: {json.dumps(payload.get('verdicts', {}))}")
    print(f"wrote {args.out}")
    print(f"matrix-only bound of the profiled rows: python -m experiments.bench.matrix_bound {args.out}")
    return 0 if all("error" not in r for r in payload["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
