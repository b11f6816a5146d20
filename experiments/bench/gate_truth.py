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

Each candidate is judged twice on the same samples: by the plain direct lift (``lift_sd``, ``passed``, ...) and by
the lift the export's gate decides on, corrected with the logs (``experiments/export/logged_correction.py``: click
residuals over k-means clusters of the logged variants' reward embeddings, a doubly robust term where samples
overlap logged images, abstention when they do not cover the candidate's samples). The logs are the ones the
export reads (``[export.ope] logs``, by default the reward model's test split; ``--logs`` names others). The
corrected columns (``corrected_lift_sd``, ``corrected_lower_sd``, ``corrected_upper_sd``, ``corrected_passed``)
hold what ``lift_gate`` decided on: the corrected lift where the correction was applied, the plain one where it
abstained or could not be computed; ``correction_status`` says which and why, ``correction_sd`` and
``correction_coverage`` give its value and coverage even when it abstained, ``logged_correction`` all its numbers.
Only the samples' embeddings are kept between candidates, never their images. ``--no-correction`` skips it.

Summary (``summary`` for the plain lift, ``summary_corrected`` for the corrected one, same fields): Spearman(lift,
gold gain) over the candidates, false passes (passed while gold gain <= 0), the regret of shipping the gate's top
candidate (the passing one with the highest lower bound; the base when none passes) against the best gold gain
available, and both controls. The calibration margin needs the audit; ``--click-ece-reward`` supplies it,
otherwise the interval carries request sampling and ensemble spread only.

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
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr
from threadpoolctl import threadpool_limits

from experiments.config import load_config
from experiments.export.bundle import read_run
from experiments.export.config import ExportConfig, LoggedCorrectionConfig
from experiments.export.direct import DirectLift, direct_lift
from experiments.export.gates import lift_gate
from experiments.export.lift import member_rewards
from experiments.export.logged_correction import (
    LoggedClicks,
    LoggedCorrection,
    correct_lift,
    embed_samples,
    not_applied,
    read_logged_clicks,
)
from experiments.export.manifest import reward_test_split
from experiments.policy_runs.requests import manifest_eval
from experiments.policy_runs.train import StudioRewardFn, load_world
from experiments.studio.prompts import studio_vocabulary
from experiments.studio.requests import StudioGold
from policy.evaluation import paired_gain, within_request_sd
from policy.model import InpaintPolicy
from reward.scorer import RewardScorer
from rollout.request import expand_requests
from rollout.sampler import sample_trajectories

CONTROL_SEED_SHIFT = 1_000_003
"""Control 1 samples with seeds shifted by this (no overlap with the evaluation's first_seed + i)."""

VARIANTS = {"plain": "", "corrected": "corrected_"}
"""The two lifts judged, and the prefix of each one's columns (the plain lift's keys are the unprefixed ones)."""

TINY_CORRECTION_BOOTSTRAP = 200
"""The correction's bootstrap replicates in a ``--tiny`` dry run (the direct lift's are 200 there too)."""


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


@dataclasses.dataclass(frozen=True, eq=False)
class Scored:
    """A candidate's evaluation samples as the gate and gold see them (the images themselves are not kept)."""

    rewards: np.ndarray
    """[M, R, K] float64 each reward member's combined reward (reward units)."""
    gold: np.ndarray
    """[R, K] the studio world's gold of the same samples."""
    embeddings: np.ndarray | None
    """[R K, D] float64 the reward model's embeddings, request-major (what the logs' correction places); None
    when the correction is skipped or cannot be computed."""


def run_labels(runs: list[Path]) -> dict[Path, str]:
    """A short unique name per run: its folder name (a timestamp) when those are unique, else its path below the
    runs' common folder without ``policy_train`` (runs started in the same second share a timestamp)."""
    if len({run.name for run in runs}) == len(runs):
        return {run: run.name for run in runs}
    common = Path(os.path.commonpath([run.resolve() for run in runs])) if len(runs) > 1 else runs[0].parent
    return {
        run: "/".join(p for p in run.resolve().relative_to(common).parts if p != "policy_train") or run.name
        for run in runs
    }


def list_candidates(args: argparse.Namespace) -> list[Candidate]:
    """Every candidate the flags name (module docstring), the base first."""
    out = [Candidate("base", "base", None, None)]
    out += [Candidate(f"base best-of-{n}", "best_of_n", None, None, best_of=n) for n in args.best_of]
    label = run_labels([*args.runs, *args.overoptimised]) if [*args.runs, *args.overoptimised] else {}
    for kind, runs in (("final", args.runs), ("overoptimised", args.overoptimised)):
        for run in runs:
            final = run / "adapter"
            if (final / "pytorch_lora_weights.safetensors").is_file():
                out.append(Candidate(f"{label[run]} final", kind, run, final))
            if kind == "final":
                name = label[run]
                out += [Candidate(f"{name} x{s:g}", "extrapolated", run, final, scale=s) for s in args.extrapolate]
            if args.checkpoints and kind == "final":
                for folder in sorted((run / "checkpoints").glob("*/adapter")):
                    out.append(Candidate(f"{label[run]} {folder.parent.name}", "checkpoint", run, folder))
    return out


class Judge:
    """Samples candidates on the first run's held-out requests and scores them with the reward ensemble and gold;
    with a correction config, also embeds them and corrects their lifts with the run's logs."""

    def __init__(
        self,
        first_run: Path,
        requests: int,
        seeds: int,
        first_seed: int,
        threads: int,
        correction: LoggedCorrectionConfig | None = None,
        logs: Path | None = None,
    ) -> None:
        """``correction`` None skips the logs' correction; ``logs`` None reads the export's default logs (the
        reward model's test split)."""
        torch.set_num_threads(threads)
        run = read_run(first_run)
        self.run_config = run.config
        if run.config.catalogue.requests is not None:
            raise SystemExit(f"{first_run}: a catalogue run has no gold; validate on studio-world runs")
        world = load_world(run.config.world)
        self.gold = StudioGold(world)
        self.scorer = RewardScorer.load(run.reward_dir)
        self.reward = StudioRewardFn(self.scorer, {p.product_id: p.kind for p in world.products})
        self.policy = InpaintPolicy.from_config(run.config.policy.model, vocabulary=studio_vocabulary())
        self.policy.load_adapter(run.adapter)
        self.sampler = dataclasses.replace(run.config.trainer.sampler, enforce_preservation=False)
        self.requests = manifest_eval(first_run, self.policy.resolution)[:requests]
        self.seeds_per_request = seeds
        self.expanded, self.seeds = expand_requests(self.requests, seeds, first_seed)
        self.loaded: Path | None = Path(first_run)
        self.correction = correction
        self.logs_dir = logs or reward_test_split(run.reward_dir)
        self.logged: LoggedClicks | LoggedCorrection | None = None
        """The logs read once for every candidate, or the not-applied correction saying why they cannot be used."""
        if correction is not None:
            self.logged = read_logged_clicks(self.scorer, self.logs_dir, correction)

    def score(self, images: torch.Tensor, expanded: list, per_request: int) -> Scored:
        """Member rewards [M, R, k], gold [R, k] and (for the correction) embeddings [R k, D] of request-major
        images."""
        rewards = member_rewards(self.reward, images, expanded, per_request, self.sampler.batch_size)
        gold = self.gold(images, expanded).numpy().reshape(-1, per_request)
        embeddings = None
        if isinstance(self.logged, LoggedClicks):
            embedded = embed_samples(self.scorer, images, torch.stack([r.product_mask for r in expanded]))
            if isinstance(embedded, str):  # one encoder for every candidate: no later sample embeds either
                self.logged = not_applied(embedded)
            else:
                embeddings = embedded
        return Scored(rewards, gold, embeddings)

    def sample(self, candidate: Candidate, seed_shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """[M, R, K] member rewards and [R, K] gold of the candidate's samples (``experiments/bench/truth.py``
        reads these)."""
        scored = self.evaluate(candidate, seed_shift)
        return scored.rewards, scored.gold

    def evaluate(self, candidate: Candidate, seed_shift: int = 0) -> Scored:
        """The candidate's evaluation samples, scored (best-of-N: the ensemble mean's pick among N per seed)."""
        seeds = [s + seed_shift for s in self.seeds]
        if candidate.adapter is None:
            with self.policy.as_base(), torch.no_grad():
                if not candidate.best_of:
                    images = sample_trajectories(self.policy, self.expanded, seeds, self.sampler).images
                    return self.score(images, self.expanded, self.seeds_per_request)
                n, k = candidate.best_of, self.seeds_per_request
                expanded, pool = expand_requests(self.requests, n * k, self.seeds[0] + 7_919 * n)
                images = sample_trajectories(self.policy, expanded, pool, self.sampler).images
            scored = self.score(images, expanded, n * k)
            del images
            rewards = scored.rewards.reshape(scored.rewards.shape[0], -1, k, n)
            chosen = rewards.mean(axis=0).argmax(axis=2)  # [R, K] the ensemble mean's pick among n
            picked = np.take_along_axis(rewards, np.broadcast_to(chosen[None, ..., None], (*rewards.shape[:3], 1)), 3)
            gold = np.take_along_axis(scored.gold.reshape(-1, k, n), chosen[..., None], 2)[..., 0]
            embeddings = None
            if scored.embeddings is not None:
                pool_embeddings = scored.embeddings.reshape(*chosen.shape, n, -1)  # [R, K, n, D]
                embeddings = np.take_along_axis(pool_embeddings, chosen[..., None, None], 2)[:, :, 0]
                embeddings = embeddings.reshape(-1, pool_embeddings.shape[-1])
            return Scored(picked[..., 0], gold, embeddings)
        self._load(candidate)
        with torch.no_grad():
            images = sample_trajectories(self.policy, self.expanded, seeds, self.sampler).images
        return self.score(images, self.expanded, self.seeds_per_request)

    def correct(self, scored: Scored, base: Scored, lift: DirectLift) -> LoggedCorrection | None:
        """The logs' correction of ``lift`` (``scored`` against ``base``); None when it is skipped
        (``--no-correction``), the not-applied correction when the logs or the encoder cannot be used."""
        if self.correction is None or isinstance(self.logged, LoggedCorrection):
            return self.logged
        return correct_lift(
            self.scorer, self.logged, scored.embeddings, base.embeddings, seeds_per_request=lift.seeds, lift=lift,
            config=self.correction,
        )  # fmt: skip

    def _load(self, candidate: Candidate) -> None:
        if candidate.run is not None and self.loaded != candidate.run:
            config = load_config(type(self.run_config), candidate.run / "config.toml")
            if config.policy.model != self.run_config.policy.model:
                raise SystemExit(f"{candidate.run}: another base model than the first run's; validate one base")
            self.policy = InpaintPolicy.from_config(config.policy.model, vocabulary=studio_vocabulary())
            self.loaded = candidate.run
        self.policy.load_adapter(candidate.adapter)
        if candidate.scale != 1.0:
            with torch.no_grad():
                for name, parameter in self.policy.unet.named_parameters():
                    if "lora_B" in name:
                        parameter.mul_(candidate.scale)


Corrector = Callable[[Scored, Scored, DirectLift], LoggedCorrection | None]
"""(candidate, base, the candidate's direct lift) -> the logs' correction of that lift, or None (skipped)."""


def judge_row(
    candidate: Candidate, scored: Scored, base: Scored, settings: dict, correct: Corrector | None = None
) -> dict[str, Any]:
    """The gate's verdict on the plain direct lift and, with ``correct``, on the logs-corrected lift, beside the
    gold gain of one candidate (module docstring: the columns)."""
    lift = direct_lift(scored.rewards, base.rewards, **settings["lift"])
    gate = lift_gate(lift, settings["threshold"], min_member_share=settings["min_member_share"])
    base_gold = torch.from_numpy(base.gold)
    gain = paired_gain(torch.from_numpy(scored.gold), base_gold, within_request_sd(base_gold))
    row = {
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
        "gold_gain_se_sd": gain["gain_se"] / within_request_sd(base_gold),
    }
    correction = correct(scored, base, lift) if correct is not None else None
    if correction is not None:
        row.update(corrected_columns(lift, correction, settings))
    return row


def corrected_columns(lift: DirectLift, correction: LoggedCorrection, settings: dict) -> dict[str, Any]:
    """What the export's lift gate decides on with the logs' ``correction`` (the corrected lift where applied, the
    plain one otherwise), its verdict, and the correction's status, value and coverage (recorded even when it
    abstained); ``logged_correction`` holds all its numbers but the per-cluster table."""
    gate = lift_gate(lift, settings["threshold"], min_member_share=settings["min_member_share"], correction=correction)
    decided = correction if correction.applied else lift
    details = {k: v for k, v in correction.to_dict().items() if k != "cluster_table"}
    return {
        "corrected_lift_sd": decided.lift_sd,
        "corrected_lower_sd": decided.lower_sd,
        "corrected_upper_sd": decided.upper_sd,
        "corrected_passed": gate.passed,
        "correction_status": correction.status,
        "correction_applied": correction.applied,
        "correction_sd": correction.correction_sd,
        "correction_coverage": correction.coverage,
        "logged_correction": details,
    }


def summarise(rows: list[dict], controls: dict, variant: str = "plain") -> dict[str, Any]:
    """Spearman, false passes, regret of the gate's top pick, and the controls' verdicts, for the plain direct
    lift's columns or (``variant="corrected"``) the logs-corrected ones (``VARIANTS``), with how often the
    correction was applied and abstained."""
    prefix = VARIANTS[variant]
    lifts = np.array([r[f"{prefix}lift_sd"] for r in rows])
    gold = np.array([r["gold_gain_sd"] for r in rows])
    spearman = float(spearmanr(lifts, gold).statistic) if len(rows) >= 3 else math.nan
    passing = [r for r in rows if r[f"{prefix}passed"]]
    pick = (
        max(passing, key=lambda r: r[f"{prefix}lower_sd"]) if passing else next(r for r in rows if r["kind"] == "base")
    )
    best = max(r["gold_gain_sd"] for r in rows)
    summary = {
        "candidates": len(rows),
        "spearman": spearman if math.isfinite(spearman) else None,
        "false_passes": sum(1 for r in passing if r["gold_gain_sd"] <= 0),
        "false_pass_names": [r["name"] for r in passing if r["gold_gain_sd"] <= 0],
        "passed": len(passing),
        "pick": pick["name"],
        "regret_sd": best - pick["gold_gain_sd"],
        "controls": {name: control[f"{prefix}right"] for name, control in controls.items()},
    }
    if variant == "corrected":
        summary["corrections_applied"] = sum(1 for r in rows if r["correction_applied"])
        summary["corrections_abstained"] = sum(1 for r in rows if r["correction_status"].startswith("abstained"))
    return summary


def describe(summary: dict) -> str:
    """One line of a summary."""
    applied = f", correction applied to {summary['corrections_applied']}" if "corrections_applied" in summary else ""
    return (
        f"{summary['candidates']} candidates: Spearman {summary['spearman']}, {summary['false_passes']} false "
        f"pass(es), regret {summary['regret_sd']:.3f} SD (pick: {summary['pick']}), controls {summary['controls']}"
        f"{applied}"
    )


def progress_line(row: dict) -> str:
    """A candidate's verdicts, for stderr."""
    line = (
        f"{row['name']:<28} lift {row['lift_sd']:+.3f} [{row['lower_sd']:+.3f}, {row['upper_sd']:+.3f}] "
        f"{'PASS' if row['passed'] else 'refuse'}"
    )
    if "corrected_lift_sd" in row:
        status = "applied" if row["correction_applied"] else row["correction_status"].split(":")[0]
        line += (
            f"  corrected {row['corrected_lift_sd']:+.3f} [{row['corrected_lower_sd']:+.3f}, "
            f"{row['corrected_upper_sd']:+.3f}] {'PASS' if row['corrected_passed'] else 'refuse'} ({status})"
        )
    return f"{line}  gold {row['gold_gain_sd']:+.3f} SD"


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Judge every candidate and both controls (module docstring); the result written to ``--out``."""
    defaults = ExportConfig()
    correction = None
    if not args.no_correction:
        correction = defaults.lift.logged_correction
        if args.tiny:
            correction = dataclasses.replace(correction, n_bootstrap=TINY_CORRECTION_BOOTSTRAP)
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
    judge = Judge(args.runs[0], args.requests, args.seeds, args.first_seed, args.threads, correction, args.logs)
    settings["logged_correction"] = None
    if correction is not None:
        settings["logged_correction"] = {**dataclasses.asdict(correction), "logs": str(judge.logs_dir)}
    variants = ["plain"] if correction is None else list(VARIANTS)
    correct = judge.correct if correction is not None else None
    candidates = list_candidates(args)
    first = next((c for c in candidates if c.kind == "final"), None)
    base = judge.evaluate(candidates[0])
    rows, first_scored = [], None
    for candidate in candidates:
        started = time.perf_counter()
        scored = base if candidate.kind == "base" else judge.evaluate(candidate)
        first_scored = scored if candidate == first else first_scored
        rows.append(judge_row(candidate, scored, base, settings, correct))
        rows[-1]["seconds"] = time.perf_counter() - started
        print(progress_line(rows[-1]), file=sys.stderr)
    controls: dict[str, dict] = {}
    if first is not None:
        row = judge_row(first, judge.evaluate(first, CONTROL_SEED_SHIFT), first_scored, settings, correct)
        for prefix in (VARIANTS[v] for v in variants):
            row[f"{prefix}right"] = (not row[f"{prefix}passed"]) and row[f"{prefix}lower_sd"] <= 0 <= row[
                f"{prefix}upper_sd"
            ]
        controls["same_weights_other_seed"] = row
    over = [r for r in rows if r["kind"] == "overoptimised"]
    if over:
        controls["overoptimised"] = {
            "candidates": [r["name"] for r in over],
            "gold_fell": [r["gold_gain_sd"] < 0 for r in over],
            **{f"{VARIANTS[v]}right": all(not r[f"{VARIANTS[v]}passed"] for r in over) for v in variants},
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
        "summary_corrected": summarise(rows, controls, "corrected") if correction is not None else None,
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
    parser.add_argument("--logs", type=Path, default=None, help="logs of the correction (default: the export's)")
    parser.add_argument("--no-correction", action="store_true", help="judge the plain direct lift only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="a dry run: 3 requests, 200 replicates")
    parser.add_argument("--out", type=Path, default=Path("experiments/bench/results/gate_truth.json"))
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.tiny:
        args.requests, args.bootstrap = min(args.requests, 3), 200
    with threadpool_limits(args.threads):  # k-means and BLAS of the correction: --threads, like torch's
        result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"plain direct lift: {describe(result['summary'])}")
    if result["summary_corrected"] is not None:
        print(f"logs-corrected lift: {describe(result['summary_corrected'])}")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
