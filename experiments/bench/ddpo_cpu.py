"""Benchmark: seconds per DDPO epoch on the CPU with the tiny studio model.

One epoch = 8 samples (2 requests x 4) at 64 px, 20 DDIM steps with classifier-free guidance (scale 5), reward
scoring, the base model's Gaussian means of every step (the KL reference forward, adapters disabled), and
training on every step (clipped surrogate + kl_coef x Gaussian KL, one AdamW step on the LoRA weights). The
target is <= 1.5 s per epoch on 2 cores. Reported: medians of wall time (and of the process's CPU time, all threads,
which a busy machine inflates less) over ``--epochs`` timed epochs after one warm-up
epoch, with the split into sampling + scoring, reference pass and update, for several ``rows_per_forward``
(how many (sample, step) rows one UNet call stacks: 8 is DDPO's one-timestep-at-a-time loop, 160 is all 20
steps of all 8 samples in one call).

The reward is ``--reward MODEL_DIR`` (a ``backdrop reward train`` model, scored through its RewardScorer) or, by
default, a pixel statistic that costs nothing, so that the number measures the policy side; the scorer's own
cost is printed separately when a model is given. The machine's load average is recorded: on a shared machine
the timings are upper bounds.

    python -m experiments.bench.ddpo_cpu                      # 2 threads, rows_per_forward 8, 40, 160
    python -m experiments.bench.ddpo_cpu --threads 1 --epochs 5 --rows 160
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from policy.config import InpaintModelConfig, LoraConfig
from policy.trainer_config import DDPOConfig, OptimConfig
from rollout.config import SamplerConfig

TARGET_S = 1.5
PARTS = ("time/sample_score_s", "time/reference_s", "time/update_s", "time/epoch_s")


def pixel_reward(images: Any, requests: Any) -> Any:
    """Stand-in reward: mean red minus blue of the image (no model: the bench measures the policy side)."""
    return (images[:, 0].float() - images[:, 2].float()).mean(dim=(1, 2)) / 255.0


def build_requests(count: int, resolution: int) -> list:
    """``count`` studio-world requests (catalogue shot, noisy mask, prompt) at ``resolution`` px."""
    # heavy (torch, pyarrow): imported when the benchmark runs, so importing the module stays light
    from experiments.studio.requests import product_request
    from offline_data.simulator import SimulatorConfig, StudioWorld, WorldConfig

    world = StudioWorld(SimulatorConfig(world=WorldConfig(products=count, image_size=resolution)))
    return [product_request(world, i, prompt=world.product_prompts[i][0], segment="warm") for i in range(count)]


def measure(args: argparse.Namespace, rows_per_forward: int, reward_fn: Any) -> dict[str, Any]:
    """Time ``args.epochs`` epochs after one warm-up with ``rows_per_forward`` rows per UNet call."""
    # heavy (torch, diffusers, transformers): imported when the benchmark runs, so importing the module stays light
    import torch

    from experiments.studio.prompts import studio_vocabulary
    from policy.model import STUDIO_TINY, InpaintPolicy
    from policy.trainer import DDPOTrainer

    torch.manual_seed(0)
    if STUDIO_TINY.is_dir():
        policy = InpaintPolicy.studio_base(lora=LoraConfig())  # the shipped base, mask-aware decoder included
    else:
        policy = InpaintPolicy.from_config(  # same UNet, random init
            InpaintModelConfig(), lora=LoraConfig(), vocabulary=studio_vocabulary()
        )
    config = DDPOConfig(
        epochs=args.epochs + 1,
        requests_per_epoch=2,
        samples_per_request=args.batch // 2,
        sampler=SamplerConfig(num_steps=args.steps, guidance_scale=5.0, batch_size=args.batch),
        optim=OptimConfig(samples_per_step=args.batch, rows_per_forward=rows_per_forward),
        overlap_scoring=args.overlap,
        eval_every=0,
    )
    trainer = DDPOTrainer(policy, reward_fn, build_requests(4, policy.resolution), config, seed=0)
    records = []
    for _ in range(config.epochs):
        cpu_start = time.process_time()
        record = trainer.run_epoch()
        record["time/epoch_cpu_s"] = time.process_time() - cpu_start
        records.append(record)
        trainer.epoch += 1
    timed = records[1:]
    parts = (*PARTS, "time/epoch_cpu_s")
    return {
        "model": "studio_tiny (shipped)" if STUDIO_TINY.is_dir() else "default architecture, random init",
        "rows_per_forward": rows_per_forward,
        "median_s": {part: statistics.median(r[part] for r in timed) for part in parts},
        "runs_s": {part: [r[part] for r in timed] for part in parts},
        "kl_last": timed[-1]["policy/kl"],
    }


def machine() -> dict[str, Any]:
    """The CPU, its core count and torch's version, for a result file."""
    # heavy (torch): imported when the benchmark runs, so importing the module stays light
    import torch

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__}


def write_result(path: str, payload: dict[str, Any]) -> None:
    """Write a benchmark's JSON result file (parents created) and say where."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {out}")


def scorer_cost(reward_fn: Any, repeats: int) -> float:
    """Median seconds to score 8 images with ``reward_fn``."""
    # heavy (torch): imported when the benchmark runs, so importing the module stays light
    import torch

    requests = build_requests(8, 64)
    images = torch.stack([r.product_rgb for r in requests])
    reward_fn(images, requests)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        reward_fn(images, requests)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs after one warm-up (default 5)")
    parser.add_argument("--batch", type=int, default=8, help="samples per epoch (default 8)")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    parser.add_argument(
        "--rows", type=int, nargs="+", default=[8, 40, 160], help="rows_per_forward values to time (default 8 40 160)"
    )
    parser.add_argument("--no-overlap", dest="overlap", action="store_false", help="score after sampling, not during")
    parser.add_argument("--reward", metavar="MODEL_DIR", help="a reward model folder (default: a pixel statistic)")
    parser.add_argument("--out", default="runs/bench/ddpo_cpu.json", help="JSON output path")
    args = parser.parse_args(argv)

    # heavy (torch, diffusers, transformers): imported when the benchmark runs, so importing the module stays light
    import torch

    torch.set_num_threads(args.threads)
    reward_fn, reward_name = pixel_reward, "pixel statistic (no model)"
    if args.reward:
        from experiments.policy_runs.train import load_reward_model  # heavy: only with --reward

        reward_fn, reward_name = load_reward_model(Path(args.reward)), f"RewardScorer({args.reward})"
    load_before = os.getloadavg()
    results = [measure(args, rows, reward_fn) for rows in args.rows]
    load_after = os.getloadavg()
    scoring = scorer_cost(reward_fn, 20) if args.reward else None

    print(
        f"\nDDPO epoch on CPU: tiny model (64 px), batch {args.batch}, {args.steps} steps, CFG 5, training on every "
        f"step + KL reference; {args.threads} thread(s); reward: {reward_name}"
    )
    print(f"model: {results[0]['model']}")
    print(f"load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f} on {os.cpu_count()} cores")
    header = (
        f"{'rows/forward':>12} {'sample+score':>13} {'reference':>10} {'update':>8} {'epoch':>8} {'CPU':>8}  target"
    )
    print(header)
    for result in results:
        med = result["median_s"]
        verdict = "ok" if med["time/epoch_s"] <= TARGET_S else "OVER"
        print(
            f"{result['rows_per_forward']:>12} {med['time/sample_score_s']:>12.3f}s {med['time/reference_s']:>9.3f}s "
            f"{med['time/update_s']:>7.3f}s {med['time/epoch_s']:>7.3f}s {med['time/epoch_cpu_s']:>7.3f}s  "
            f"{verdict} (<= {TARGET_S} s wall)"
        )
    if scoring is not None:
        print(f"reward model: {scoring * 1e3:.1f} ms to score 8 images (median of 20)")
    payload = {
        "benchmark": "ddpo_cpu",
        "threads": args.threads,
        "batch": args.batch,
        "steps": args.steps,
        "guidance_scale": 5.0,
        "overlap_scoring": args.overlap,
        "reward": reward_name,
        "reward_score_8_s": scoring,
        "target_s": TARGET_S,
        "load_average_before_after": [load_before, load_after],
        **machine(),
        "results": results,
    }
    write_result(args.out, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
