"""How fast could the recipe be if only its matrix work took time? A bound from a ``ddpo_gpu`` result (issue 9).

For each row of ``experiments.bench.ddpo_gpu``'s JSON that carries a kernel profile (``kernel_profile``), the
profiled epoch's counted FLOPs are split into attention and the rest (convolutions and matrix products, the VAE's
included) and divided by the device time of the matching kernel families: the rate each ran at there (cuDNN's
attention and convolutions, cuBLAS's GEMMs, on these shapes). The bound is the time the recipe's FLOPs take at those
rates with nothing else on the device: no normalisation, elementwise or copy kernels, no gaps. A throughput target
above the bound cannot be reached by fusing, compiling or scheduling the rest away; only faster matrix kernels (or
fewer FLOPs: a different algorithm or precision) reach it.

    python -m experiments.bench.matrix_bound runs/bench/ddpo_gpu.json

Approximations, both small at 50 steps: the VAE's mid-block attention is counted with the matrix FLOPs but timed
with the attention kernels; attention FLOPs follow the flash-attention convention (the backward recomputes the
forward: 2.5x), whichever kernel ran.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from experiments.bench.ddpo_gpu import REQUESTS, tiny_config
from experiments.bench.rollout import sd15_inpainting_config
from experiments.bench.unet_cost import count_model, sample_flops

MATRIX_FAMILIES = ("convolution", "matmul")
"""Kernel families whose time the non-attention FLOPs are divided by (a 1x1 convolution may run as a GEMM)."""


def family_flops(model_config: Any, *, steps: int, trained_steps: int, batch: int) -> dict[str, float]:
    """Counted FLOPs per sample of a DDPO epoch split into ``attention`` and ``matrix`` (everything else)."""
    # heavy (torch, diffusers, transformers): imported when the benchmark runs, so importing the module stays light
    from experiments.bench.unet_cost import recipe_attention_flops

    cost, _ = count_model(model_config)
    total = sample_flops(
        model_config, steps=steps, trained_steps=trained_steps, batch=batch, requests=REQUESTS, vae=True
    )["total"]
    attention = recipe_attention_flops(cost, steps=steps, guidance=True, trained_steps=trained_steps)
    return {"attention": attention, "matrix": total - attention}


def matrix_bound(
    profile: dict[str, Any], *, batch: int, profiled: dict[str, float], recipe: dict[str, float]
) -> dict[str, float]:
    """The bound for one row.

    Args:
        profile: ``kernel_profile.family_table`` of the profiled epoch (with ``total_ms``).
        batch: samples per epoch.
        profiled, recipe: :func:`family_flops` of the profiled epoch and of the recipe reported.

    Returns:
        ``attention_tflops_per_s`` and ``matrix_tflops_per_s`` (the rates in the profile), ``matrix_kernel_share``
        (attention + convolution + matmul of the profiled device time), ``bound_epoch_s`` and
        ``bound_samples_per_hour`` (the recipe at those rates with nothing else).
    """
    families = profile["families"]
    attention_s = families.get("attention", {}).get("ms", 0.0) / 1e3
    matrix_s = sum(families.get(name, {}).get("ms", 0.0) for name in MATRIX_FAMILIES) / 1e3
    if attention_s <= 0 or matrix_s <= 0:
        raise ValueError(f"the profile has no attention or no convolution/matmul time: {sorted(families)}")
    attention_rate = batch * profiled["attention"] / attention_s
    matrix_rate = batch * profiled["matrix"] / matrix_s
    epoch = batch * (recipe["attention"] / attention_rate + recipe["matrix"] / matrix_rate)
    return {
        "attention_tflops_per_s": attention_rate / 1e12,
        "matrix_tflops_per_s": matrix_rate / 1e12,
        "matrix_kernel_share": (attention_s + matrix_s) * 1e3 / profile["total_ms"],
        "bound_epoch_s": epoch,
        "bound_samples_per_hour": 3600.0 * batch / epoch,
    }


def bounds(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """:func:`matrix_bound` for every profiled row of a ``ddpo_gpu`` payload (name, measured samples/h, bound)."""
    settings = payload["settings"]
    model_config = tiny_config() if settings["tiny"] else sd15_inpainting_config()
    batch, steps = int(settings["batch"]), int(settings["steps"])
    recipe = family_flops(model_config, steps=steps, trained_steps=steps, batch=batch)
    results = []
    for row in payload["rows"]:
        profile = row.get("profile")
        if profile is None or row.get("timestep_fraction", 1.0) != 1.0:
            continue
        profiled = family_flops(model_config, steps=profile["steps"], trained_steps=profile["steps"], batch=batch)
        bound = matrix_bound(profile, batch=batch, profiled=profiled, recipe=recipe)
        results.append({"name": row["name"], "samples_per_hour": row["samples_per_hour"], **bound})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", type=Path, help="a JSON file written by experiments.bench.ddpo_gpu")
    parser.add_argument("--target", type=float, default=5000.0, help="samples/hour to compare with (issue 9: 5,000)")
    args = parser.parse_args(argv)
    try:
        payload = json.loads(args.result.read_text(encoding="utf-8"))
        rows = bounds(payload)
    except (OSError, json.JSONDecodeError, KeyError, ValueError) as exc:
        print(f"error: {args.result}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if not rows:
        print(
            f"error: {args.result}: no full-recipe row has a kernel profile (run ddpo_gpu with --profile-steps > 0)",
            file=sys.stderr,
        )
        return 1
    print(
        f"matrix-only bound for {payload['device']} ({payload['settings']['steps']} steps, batch "
        f"{payload['settings']['batch']}): the recipe's FLOPs at the profiled rates of the matrix kernels alone"
    )
    print(
        f"{'configuration':<34} {'samples/h':>10} {'attn TFLOP/s':>13} {'conv+mm TFLOP/s':>16} "
        f"{'matrix share':>13} {'bound/h':>9} {'target/bound':>13}"
    )
    for row in rows:
        print(
            f"{row['name']:<34} {row['samples_per_hour']:>10,.0f} {row['attention_tflops_per_s']:>13.0f} "
            f"{row['matrix_tflops_per_s']:>16.0f} {100 * row['matrix_kernel_share']:>12.0f}% "
            f"{row['bound_samples_per_hour']:>9,.0f} {args.target / row['bound_samples_per_hour']:>12.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
