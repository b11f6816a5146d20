"""Benchmark the OPE estimators against exact truth, and time the bootstrap.

Part 1 (accuracy): for each setting of the synthetic slate world (experiments/ope/synthetic.py), draw many
independent logs, evaluate the candidate on each, and report per estimator the bias in standard errors of the
mean, the RMSE, and the coverage and mean width of the nominal-90 % percentile and BCa intervals.
Part 2 (speed): median wall time of one full :func:`experiments.ope.evaluate.evaluate` (all estimators, request /
impression / per-slot levels, lifts) on large logs, one BLAS thread.

    .venv/bin/python -m experiments.bench.ope_coverage                # ~2 minutes on one core
    .venv/bin/python -m experiments.bench.ope_coverage --reps 200     # quicker, noisier

Prints two tables and writes JSON (default runs/bench/ope_coverage.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from experiments.ope import synthetic as syn
from experiments.ope.evaluate import OPEConfig, evaluate

ESTIMATORS = ("dm", "ips", "snips", "dr")

SETTINGS = (
    # name, requests per log, candidate temperature (lower = further from the logger), weighting, model error s.d.
    ("pbm n=400 mild", 400, 0.5, "independent", 0.05),
    ("pbm n=400 sharp", 400, 0.2, "independent", 0.05),
    ("pbm n=1600 sharp", 1600, 0.2, "independent", 0.05),
    ("pbm n=1600 slate", 1600, 0.5, "slate", 0.05),
)


def accuracy(reps: int, n_bootstrap: int) -> list[dict]:
    rows = []
    for name, n_requests, temperature, weighting, model_sd in SETTINGS:
        bandit = syn.make_slate_bandit(seed=21, slot_count_probs=np.array([0.2, 0.3, 0.5]))
        rng = np.random.default_rng(8)
        pi0 = syn.softmax_policy(rng.normal(size=bandit.shape), 1.0)
        pie = syn.softmax_policy(bandit.attractiveness, temperature)
        error = rng.normal(0.0, model_sd, size=bandit.shape)
        truth = syn.true_value(bandit, pie)
        base = OPEConfig(confidence=0.9, n_bootstrap=n_bootstrap, weighting=weighting, min_ess=0, min_ess_fraction=0)
        configs = {m: dataclasses.replace(base, ci_method=m) for m in ("percentile", "bca")}
        values = {e: [] for e in ESTIMATORS}
        covered = {(m, e): 0 for m in configs for e in ESTIMATORS}
        width = {(m, e): 0.0 for m in configs for e in ESTIMATORS}
        ess = []
        for rep in tqdm(range(reps), desc=name, leave=False):
            draw = syn.draw_log(bandit, pi0, n_requests, rng)
            log = syn.impression_log(draw, pi0)
            cand = syn.candidate(bandit, draw, log, pie, error=error)
            for method, config in configs.items():
                report = evaluate(log, cand, config, seed=rep)
                for e in ESTIMATORS:
                    res = report.result(e)
                    covered[(method, e)] += res.ci_low <= truth <= res.ci_high
                    width[(method, e)] += (res.ci_high - res.ci_low) / reps
                    if method == "percentile":
                        values[e].append(res.value)
            ess.append(report.diagnostics["weights"]["candidate"]["weights/ess_fraction"])
        for e in ESTIMATORS:
            v = np.asarray(values[e])
            rows.append(
                {
                    "setting": name,
                    "estimator": e,
                    "truth": truth,
                    "ess_fraction": float(np.mean(ess)),
                    "bias_se": float((v.mean() - truth) / (v.std(ddof=1) / np.sqrt(reps))),
                    "rmse": float(np.sqrt(np.mean((v - truth) ** 2))),
                    "coverage_percentile": covered[("percentile", e)] / reps,
                    "coverage_bca": covered[("bca", e)] / reps,
                    "width_percentile": width[("percentile", e)],
                    "width_bca": width[("bca", e)],
                    "reps": reps,
                }
            )
    return rows


def speed(repeats: int) -> list[dict]:
    rows = []
    bandit = syn.make_slate_bandit(seed=1)
    rng = np.random.default_rng(0)
    pi0 = syn.softmax_policy(rng.normal(size=bandit.shape), 1.0)
    pie = syn.softmax_policy(bandit.attractiveness, 0.3)
    for n_requests, n_bootstrap in ((10_000, 2000), (100_000, 2000), (100_000, 500)):
        draw = syn.draw_log(bandit, pi0, n_requests, rng)
        log = syn.impression_log(draw, pi0)
        cand = syn.candidate(bandit, draw, log, pie)
        evaluate(log, cand, OPEConfig(n_bootstrap=100))  # warm-up: first-call allocations are not the steady state
        for method in ("percentile", "bca"):
            config = OPEConfig(n_bootstrap=n_bootstrap, ci_method=method)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                evaluate(log, cand, config)
                times.append(time.perf_counter() - start)
            rows.append(
                {
                    "requests": n_requests,
                    "impressions": log.n_impressions,
                    "n_bootstrap": n_bootstrap,
                    "ci_method": method,
                    "median_s": float(np.median(times)),
                    "repeats": repeats,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=500, help="independent logs per setting (default 500)")
    parser.add_argument("--n-bootstrap", type=int, default=400, help="resamples per interval (default 400)")
    parser.add_argument("--speed-repeats", type=int, default=3, help="timed runs per speed case (default 3)")
    parser.add_argument("--out", default="runs/bench/ope_coverage.json", help="JSON output path")
    args = parser.parse_args()
    # One BLAS thread: timings comparable across machines and not competing with other jobs.
    threadpool_limits(1)

    acc = accuracy(args.reps, args.n_bootstrap)
    print(f"\nAccuracy vs exact truth ({args.reps} logs per setting, nominal 90 % intervals)")
    header = f"{'setting':<18}{'est':<7}{'ESS%':>6}{'bias/SE':>9}{'RMSE':>9}{'cov pct':>9}{'cov BCa':>9}{'width':>9}"
    print(header)
    for r in acc:
        print(
            f"{r['setting']:<18}{r['estimator']:<7}{100 * r['ess_fraction']:>6.1f}{r['bias_se']:>9.2f}"
            f"{r['rmse']:>9.4f}{r['coverage_percentile']:>9.3f}{r['coverage_bca']:>9.3f}{r['width_percentile']:>9.4f}"
        )
    spd = speed(args.speed_repeats)
    print("\nevaluate() wall time (all estimators and levels, one BLAS thread; median)")
    print(f"{'requests':>9}{'impressions':>12}{'resamples':>10}{'method':>12}{'seconds':>9}")
    for r in spd:
        print(
            f"{r['requests']:>9,}{r['impressions']:>12,}{r['n_bootstrap']:>10}{r['ci_method']:>12}{r['median_s']:>9.2f}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"accuracy": acc, "speed": spd, "args": vars(args)}, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
