"""Validation of the export's lift gate against the studio world's hidden gold (a benchmark, not a test).

For every candidate, the gate's direct lift (``experiments/export/direct.py``: fresh samples of the candidate and
of the base on the run's held-out requests, same seeds, scored by the reward ensemble, the export's default
``[export.lift]`` and ``[export.gates] min_direct_lift_sd``) beside its gold gain (``StudioGold`` of the same
samples, in within-request SDs of the base's gold, ``gold/gain_sd``). Candidates:

- each run's final adapter and, with ``--checkpoints``, every checkpoint along its training;
- the base itself (lift exactly 0: must not pass);
- ``--best-of N``: the base with best-of-N reranking by the same ensemble (selected on the scores the gate reads,
  so its lift is optimistic by construction: a known weakness of any reward-model judge);
- ``--extrapolate S ...``: each final adapter with its LoRA B matrices scaled by S (S > 1 pushes further along the
  training direction, a cheap way to get candidates past the proxy's optimum);
- ``--overoptimised RUN ...``: runs trained against the proxy until gold fell (control 2: must be refused).

Control 1: the first run's final adapter sampled with other seeds, judged against itself: "no difference" (the
interval covers 0 and the gate does not pass).

Summary: Spearman(lift, gold gain) over the candidates, false passes (passed while gold gain <= 0), the regret of
shipping the gate's top candidate (the passing one with the highest lower bound; the base when none passes) against
the best gold gain available, and both controls. The calibration margin needs the audit; ``--click-ece`` supplies
it, otherwise the interval carries request sampling and ensemble spread only.

    python -m experiments.bench.gate_truth --runs runs/policy_train/A runs/policy_train/B --checkpoints \\
        --best-of 4 16 --extrapolate 2 4 --overoptimised runs/policy_train/overopt \\
        --out experiments/bench/results/gate_truth.json
    python -m experiments.bench.gate_truth --tiny --runs RUN --out /tmp/gate_truth.json   # a dry run, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

CONTROL_SEED_SHIFT = 1_000_003
"""Control 1 samples with seeds shifted by this (no overlap with the evaluation's first_seed + i)."""


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One candidate the gate judges: an adapter (optionally scaled), the base, or the base's best-of-N."""

    name: str
    kind: str
    """"final", "checkpoint", "base", "best_of_n", "extrapolated" or "overoptimised"."""
    run: Path | None
    adapter: Path | None
    scale: float = 1.0
    best_of: int = 0


def list_candidates(args: argparse.Namespace) -> list[Candidate]:
    """Every candidate the flags name (module docstring), the base first."""
    out = [Candidate("base", "base", None, None)]
    out += [Candidate(f"base best-of-{n}", "best_of_n", None, None, best_of=n) for n in args.best_of]
    for kind, runs in (("final", args.runs), ("overoptimised", args.overoptimised)):
        for run in runs:
            final = run / "adapter"
            if (final / "pytorch_lora_weights.safetensors").is_file():
                out.append(Candidate(f"{run.name} final", kind, run, final))
            if kind == "final":
                out += [Candidate(f"{run.name} x{s:g}", "extrapolated", run, final, scale=s) for s in args.extrapolate]
            if args.checkpoints and kind == "final":
                for folder in sorted((run / "checkpoints").glob("*/adapter")):
                    out.append(Candidate(f"{run.name} {folder.parent.name}", "checkpoint", run, folder))
    return out


class Judge:
    """Samples candidates on the first run's held-out requests and scores them with the reward ensemble and gold."""

    def __init__(self, first_run: Path, requests: int, seeds: int, first_seed: int, threads: int) -> None:
        from experiments.config import load_config
        from experiments.export.bundle import read_run
        from experiments.policy_runs.requests import manifest_eval
        from experiments.policy_runs.train import StudioRewardFn, load_world
        from experiments.studio.prompts import studio_vocabulary
        from experiments.studio.requests import StudioGold
        from policy.model import InpaintPolicy
        from reward.scorer import RewardScorer
        from rollout.request import expand_requests

        torch.set_num_threads(threads)
        run = read_run(first_run)
        self.run_config = run.config
        if run.config.catalogue.requests is not None:
            raise SystemExit(f"{first_run}: a catalogue run has no gold; validate on studio-world runs")
        self.load_config, self.reward_dir = load_config, run.reward_dir
        world = load_world(run.config.world)
        self.gold = StudioGold(world)
        scorer = RewardScorer.load(run.reward_dir)
        self.reward = StudioRewardFn(scorer, {p.product_id: p.kind for p in world.products})
        self.policy = InpaintPolicy.from_config(run.config.policy.model, vocabulary=studio_vocabulary())
        self.policy.load_adapter(run.adapter)
        self.sampler = dataclasses.replace(run.config.trainer.sampler, enforce_preservation=False)
        self.requests = manifest_eval(first_run, self.policy.resolution)[:requests]
        self.seeds_per_request = seeds
        self.expanded, self.seeds = expand_requests(self.requests, seeds, first_seed)
        self.loaded: Path | None = Path(first_run)

    def score(self, images: torch.Tensor, expanded: list, per_request: int) -> tuple[np.ndarray, np.ndarray]:
        """Member rewards [M, R, k] and gold [R, k] of request-major images."""
        from experiments.export.lift import member_rewards

        rewards = member_rewards(self.reward, images, expanded, per_request, self.sampler.batch_size)
        gold = self.gold(images, expanded).numpy().reshape(-1, per_request)
        return rewards, gold

    def sample(self, candidate: Candidate, seed_shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """[M, R, K] member rewards and [R, K] gold of the candidate's samples."""
        from rollout.request import expand_requests
        from rollout.sampler import sample_trajectories

        seeds = [s + seed_shift for s in self.seeds]
        if candidate.adapter is None:
            with self.policy.reference(), torch.no_grad():
                if not candidate.best_of:
                    images = sample_trajectories(self.policy, self.expanded, seeds, self.sampler).images
                    return self.score(images, self.expanded, self.seeds_per_request)
                n, k = candidate.best_of, self.seeds_per_request
                expanded, pool = expand_requests(self.requests, n * k, self.seeds[0] + 7_919 * n)
                images = sample_trajectories(self.policy, expanded, pool, self.sampler).images
            rewards, gold = self.score(images, expanded, n * k)
            rewards = rewards.reshape(rewards.shape[0], -1, k, n)
            chosen = rewards.mean(axis=0).argmax(axis=2)  # [R, K] the ensemble mean's pick among n
            picked = np.take_along_axis(rewards, np.broadcast_to(chosen[None, ..., None], (*rewards.shape[:3], 1)), 3)
            return picked[..., 0], np.take_along_axis(gold.reshape(-1, k, n), chosen[..., None], 2)[..., 0]
        self._load(candidate)
        with torch.no_grad():
            images = sample_trajectories(self.policy, self.expanded, seeds, self.sampler).images
        return self.score(images, self.expanded, self.seeds_per_request)

    def _load(self, candidate: Candidate) -> None:
        from policy.model import InpaintPolicy

        if candidate.run is not None and self.loaded != candidate.run:
            config = self.load_config(type(self.run_config), candidate.run / "config.toml")
            if config.policy.model != self.run_config.policy.model:
                raise SystemExit(f"{candidate.run}: another base model than the first run's; validate one base")
            from experiments.studio.prompts import studio_vocabulary

            self.policy = InpaintPolicy.from_config(config.policy.model, vocabulary=studio_vocabulary())
            self.loaded = candidate.run
        self.policy.load_adapter(candidate.adapter)
        if candidate.scale != 1.0:
            with torch.no_grad():
                for name, parameter in self.policy.unet.named_parameters():
                    if "lora_B" in name:
                        parameter.mul_(candidate.scale)


def judge_row(candidate: Candidate, rewards, gold, base_rewards, base_gold, settings: dict) -> dict[str, Any]:
    """The gate's verdict and the gold gain of one candidate."""
    from experiments.export.direct import direct_lift
    from experiments.export.gates import lift_gate
    from policy.evaluation import paired_gain, within_request_sd

    lift = direct_lift(rewards, base_rewards, **settings["lift"])
    gate = lift_gate(lift, settings["threshold"], min_member_share=settings["min_member_share"])
    base_gold_t = torch.from_numpy(base_gold)
    gain = paired_gain(torch.from_numpy(gold), base_gold_t, within_request_sd(base_gold_t))
    return {
        "name": candidate.name,
        "kind": candidate.kind,
        "run": str(candidate.run) if candidate.run else None,
        "adapter": str(candidate.adapter) if candidate.adapter else None,
        "lift_sd": lift.lift_sd,
        "lower_sd": lift.lower_sd,
        "upper_sd": lift.upper_sd,
        "reward_model_share": lift.reward_model_share,
        "member_lifts_sd": list(lift.member_lifts_sd),
        "passed": gate.passed,
        "gold_gain_sd": gain["gain_sd"],
        "gold_gain_se_sd": gain["gain_se"] / within_request_sd(base_gold_t),
    }


def summarise(rows: list[dict], controls: dict) -> dict[str, Any]:
    """Spearman, false passes, regret of the gate's top pick, and the controls' verdicts."""
    from scipy.stats import spearmanr

    lifts = np.array([r["lift_sd"] for r in rows])
    gold = np.array([r["gold_gain_sd"] for r in rows])
    spearman = float(spearmanr(lifts, gold).statistic) if len(rows) >= 3 else math.nan
    passing = [r for r in rows if r["passed"]]
    pick = max(passing, key=lambda r: r["lower_sd"]) if passing else next(r for r in rows if r["kind"] == "base")
    best = max(r["gold_gain_sd"] for r in rows)
    return {
        "candidates": len(rows),
        "spearman": spearman if math.isfinite(spearman) else None,
        "false_passes": sum(1 for r in passing if r["gold_gain_sd"] <= 0),
        "false_pass_names": [r["name"] for r in passing if r["gold_gain_sd"] <= 0],
        "passed": len(passing),
        "pick": pick["name"],
        "regret_sd": best - pick["gold_gain_sd"],
        "controls": {name: control["right"] for name, control in controls.items()},
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from experiments.export.config import ExportConfig

    defaults = ExportConfig()
    settings = {
        "threshold": defaults.gates.min_direct_lift_sd,
        "min_member_share": defaults.lift.min_member_share,
        "lift": {
            "confidence": defaults.lift.confidence,
            "n_bootstrap": args.bootstrap,
            "resample_members": defaults.lift.resample_members,
            "calibration_margin_reward": args.click_ece_reward,
            "seed": defaults.lift.seed,
        },
    }
    judge = Judge(args.runs[0], args.requests, args.seeds, args.first_seed, args.threads)
    base = Candidate("base", "base", None, None)
    base_rewards, base_gold = judge.sample(base)
    rows = []
    for candidate in list_candidates(args):
        started = time.perf_counter()
        rewards, gold = (base_rewards, base_gold) if candidate.kind == "base" else judge.sample(candidate)
        rows.append(judge_row(candidate, rewards, gold, base_rewards, base_gold, settings))
        rows[-1]["seconds"] = time.perf_counter() - started
        print(f"{candidate.name:<28} lift {rows[-1]['lift_sd']:+.3f} [{rows[-1]['lower_sd']:+.3f}, "
              f"{rows[-1]['upper_sd']:+.3f}] {'PASS' if rows[-1]['passed'] else 'refuse'}  gold "
              f"{rows[-1]['gold_gain_sd']:+.3f} SD", file=sys.stderr)  # fmt: skip
    controls: dict[str, dict] = {}
    first = next((c for c in list_candidates(args) if c.kind == "final"), None)
    if first is not None:
        original = judge.sample(first)
        shifted = judge.sample(first, CONTROL_SEED_SHIFT)
        row = judge_row(first, *shifted, *original, settings)
        row["right"] = (not row["passed"]) and row["lower_sd"] <= 0 <= row["upper_sd"]
        controls["same_weights_other_seed"] = row
    over = [r for r in rows if r["kind"] == "overoptimised"]
    if over:
        controls["overoptimised"] = {
            "candidates": [r["name"] for r in over],
            "gold_fell": [r["gold_gain_sd"] < 0 for r in over],
            "right": all(not r["passed"] for r in over),
        }
    return {
        "command": "python -m experiments.bench.gate_truth " + " ".join(args.argv),
        "tiny": args.tiny,
        "settings": settings,
        "requests": len(judge.requests),
        "seeds_per_request": args.seeds,
        "candidates": rows,
        "controls": controls,
        "summary": summarise(rows, controls),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="'backdrop policy train' runs")
    parser.add_argument("--overoptimised", type=Path, nargs="*", default=[], help="runs whose gold fell (control)")
    parser.add_argument("--checkpoints", action="store_true", help="every checkpoint of each run is a candidate")
    parser.add_argument("--best-of", type=int, nargs="*", default=[], help="best-of-N of the base as candidates")
    parser.add_argument("--extrapolate", type=float, nargs="*", default=[], help="LoRA B scales of final adapters")
    parser.add_argument("--requests", type=int, default=32, help="held-out requests (default: export's 32)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per request (default: export's 2)")
    parser.add_argument("--first-seed", type=int, default=2_000_000_011, help="the export's evaluation seed")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates (default 2000)")
    parser.add_argument("--click-ece-reward", type=float, default=None, help="calibration margin, reward units")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="a dry run: 3 requests, 200 replicates")
    parser.add_argument("--out", type=Path, default=Path("experiments/bench/results/gate_truth.json"))
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.tiny:
        args.requests, args.bootstrap = min(args.requests, 3), 200
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    summary = result["summary"]
    print(f"{summary['candidates']} candidates: Spearman {summary['spearman']}, {summary['false_passes']} false "
          f"pass(es), regret {summary['regret_sd']:.3f} SD (pick: {summary['pick']}), controls "
          f"{summary['controls']}; written to {args.out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
