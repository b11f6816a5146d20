"""Benchmark: the CPU DDPO epoch with the gradient taken during sampling against today's re-forward, side by side.

The epoch is ``experiments.bench.ddpo_cpu``'s (tiny studio model, 64 px, ``--batch`` samples, ``--steps`` DDIM steps,
CFG 5, every step trained, KL reference; the re-forward at ``--rows`` rows per UNet call) with
``trainer.optim.gradient`` = "re_forward" and "during_sampling", each with kl_coef 0.01 (the recipe: the KL gradient
costs a second backward per step in "during_sampling") and kl_coef 0 (no KL gradient; the KL is still measured).
Every configuration runs in its own process (so that its peak resident memory is its own), one after the other,
``--rounds`` times in alternation so that a change of machine load hits every configuration; reported: median
wall and CPU seconds per epoch over the timed epochs of all rounds (one warm-up epoch per process), samples/s, and
the peak RSS of the process with its RSS before the first epoch (the model and the interpreter).

    python -m experiments.bench.sampled_gradient                         # 2 threads, batch 8, 20 steps
    python -m experiments.bench.sampled_gradient --threads 1 --epochs 3 --rounds 1
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import time
from typing import Any

from experiments.bench.ddpo_cpu import build_requests, machine, pixel_reward, write_result
from policy.config import InpaintModelConfig, LoraConfig
from policy.trainer_config import DDPOConfig, KLConfig, OptimConfig
from rollout.config import SamplerConfig

MODES = ("re_forward", "during_sampling")
KL_COEFS = (0.01, 0.0)


def _rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_configuration(args: dict[str, Any], mode: str, kl_coef: float) -> dict[str, Any]:
    """Run one warm-up and ``args['epochs']`` timed epochs of one configuration in this process."""
    # heavy (torch, diffusers, transformers): imported when the benchmark runs, so importing the module stays light
    import torch

    from policy.model import STUDIO_TINY, InpaintPolicy
    from policy.trainer import DDPOTrainer

    torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    if STUDIO_TINY.is_dir():
        policy = InpaintPolicy.studio_base(lora=LoraConfig())
    else:
        policy = InpaintPolicy.from_config(InpaintModelConfig(), lora=LoraConfig())
    batch = args["batch"]
    config = DDPOConfig(
        epochs=args["epochs"] + 1,
        requests_per_epoch=2,
        samples_per_request=batch // 2,
        sampler=SamplerConfig(num_steps=args["steps"], guidance_scale=5.0, batch_size=batch),
        optim=OptimConfig(samples_per_step=batch, rows_per_forward=args["rows"], gradient=mode),
        kl=KLConfig(coef=kl_coef),
        overlap_scoring=False,
        eval_every=0,
    )
    trainer = DDPOTrainer(policy, pixel_reward, build_requests(4, policy.resolution), config, seed=0)
    rss_before = _rss_mib()
    records = []
    for _ in range(config.epochs):
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        record = trainer.run_epoch()
        records.append(
            {"wall_s": time.perf_counter() - wall_start, "cpu_s": time.process_time() - cpu_start, **record}
        )
        trainer.epoch += 1
    return {
        "mode": mode,
        "kl_coef": kl_coef,
        "wall_s": [r["wall_s"] for r in records[1:]],
        "cpu_s": [r["cpu_s"] for r in records[1:]],
        "sample_score_s": [r["time/sample_score_s"] for r in records[1:]],
        "update_s": [r["time/reference_s"] + r["time/update_s"] for r in records[1:]],
        "rss_before_mib": rss_before,
        "peak_rss_mib": _rss_mib(),
        "policy_kl_last": records[-1]["policy/kl"],
    }


def _child(args: dict[str, Any], mode: str, kl_coef: float, queue: Any) -> None:
    queue.put(time_configuration(args, mode, kl_coef))


def run_in_process(args: dict[str, Any], mode: str, kl_coef: float) -> dict[str, Any]:
    """:func:`time_configuration` in a fresh spawned process (its own peak RSS)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(args, mode, kl_coef, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def summarise(runs: list[dict[str, Any]], batch: int) -> list[dict[str, Any]]:
    """Pool the rounds of each configuration: medians over all timed epochs, the largest peak RSS."""
    rows = []
    for kl_coef in KL_COEFS:
        for mode in MODES:
            mine = [r for r in runs if r["mode"] == mode and r["kl_coef"] == kl_coef]
            wall = statistics.median(t for r in mine for t in r["wall_s"])
            cpu = statistics.median(t for r in mine for t in r["cpu_s"])
            rows.append(
                {
                    "mode": mode,
                    "kl_coef": kl_coef,
                    "epochs_timed": sum(len(r["wall_s"]) for r in mine),
                    "median_wall_s": wall,
                    "median_cpu_s": cpu,
                    "median_sample_score_s": statistics.median(t for r in mine for t in r["sample_score_s"]),
                    "median_reference_update_s": statistics.median(t for r in mine for t in r["update_s"]),
                    "samples_per_s": batch / wall,
                    "samples_per_cpu_s": batch / cpu,
                    "rss_before_mib": max(r["rss_before_mib"] for r in mine),
                    "peak_rss_mib": max(r["peak_rss_mib"] for r in mine),
                }
            )
    for row in rows:
        base = next(r for r in rows if r["mode"] == "re_forward" and r["kl_coef"] == row["kl_coef"])
        row["speedup_vs_re_forward"] = base["median_wall_s"] / row["median_wall_s"]
        row["cpu_speedup_vs_re_forward"] = base["median_cpu_s"] / row["median_cpu_s"]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per process after one warm-up (default 5)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds over the configurations (default 2)")
    parser.add_argument("--batch", type=int, default=8, help="samples per epoch, all in one sampler chunk (default 8)")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    parser.add_argument("--rows", type=int, default=160, help="re-forward rows per UNet call (default 160)")
    parser.add_argument("--out", default="runs/bench/sampled_gradient.json", help="JSON output path")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.rounds < 1 or args.batch < 2 or args.batch % 2:
        parser.error("--epochs and --rounds must be >= 1 and --batch an even number >= 2")
    settings = {"threads": args.threads, "epochs": args.epochs, "batch": args.batch, "steps": args.steps}
    settings["rows"] = args.rows

    load_before = os.getloadavg()
    runs = [
        run_in_process(settings, mode, kl_coef) for _ in range(args.rounds) for kl_coef in KL_COEFS for mode in MODES
    ]
    load_after = os.getloadavg()
    rows = summarise(runs, args.batch)

    print(
        f"\nDDPO epoch on CPU, gradient re-forward vs during sampling: tiny model (64 px), batch {args.batch}, "
        f"{args.steps} steps, CFG 5, every step trained; {args.threads} thread(s); re-forward at {args.rows} rows per "
        f"call; medians of {args.epochs} x {args.rounds} epochs"
    )
    print(f"load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f} on {os.cpu_count()} cores")
    print(
        f"{'gradient':>16} {'kl_coef':>7} {'epoch':>8} {'CPU':>8} {'sample':>8} {'ref+upd':>8} {'samples/s':>9} "
        f"{'/CPU-s':>7} {'speedup':>7} {'CPU':>6} {'peak RSS':>9} {'(start)':>8}"
    )
    for row in rows:
        print(
            f"{row['mode']:>16} {row['kl_coef']:>7} {row['median_wall_s']:>7.3f}s {row['median_cpu_s']:>7.3f}s "
            f"{row['median_sample_score_s']:>7.3f}s {row['median_reference_update_s']:>7.3f}s "
            f"{row['samples_per_s']:>9.2f} {row['samples_per_cpu_s']:>7.2f} {row['speedup_vs_re_forward']:>6.2f}x "
            f"{row['cpu_speedup_vs_re_forward']:>5.2f}x {row['peak_rss_mib']:>6.0f}MiB "
            f"{row['rss_before_mib']:>5.0f}MiB"
        )
    payload = {
        "benchmark": "sampled_gradient",
        **settings,
        "rounds": args.rounds,
        "guidance_scale": 5.0,
        "reward": "pixel statistic (no model)",
        "load_average_before_after": [load_before, load_after],
        **machine(),
        "results": rows,
        "runs": runs,
    }
    write_result(args.out, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
