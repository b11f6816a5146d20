"""How much does the export's OPE gate know? Monte Carlo noise of its log-ratio, and whether its lift ranks candidates.

``backdrop export`` gates a candidate on an off-policy lift (``experiments/export/logged_ope.py``): the logged
variants are re-weighted by ρ^(1/τ), ρ = exp(ELBO_candidate − ELBO_base) estimated with ``elbo_draws`` forward
chains per image. This study, on policy runs whose held-out gold gain is known (their final evaluation's
``gold/gain``):

1. noise: each forward-noising draw's log-ratio of every logged image is kept ([N, D]); independent groups of n
   draws give the repeat correlation of the n-draw estimate, overall and within product (the cell normalisation
   only sees within-product differences), the per-image Monte Carlo sd (single-draw sd / √n) and the between-image
   sd. Draw d of this study is draw d of the export (same seed), so the first n columns are the export's value.
2. fidelity: for every candidate (and the base model, a fresh zero adapter: its lift must be ~0), every draws
   setting and every τ, the DM/IPS/SNIPS/DR lift with its interval
   (``experiments.export.logged_ope.estimate_candidate``, the gate's own code), the weights' ESS fraction, and an
   oracle lift: the same weights applied to the simulator's true click probabilities (truth sidecar), i.e. the
   re-weighted policy's exact value on the logged support, free of click noise. Spearman's ρ of each lift with the
   gold gains over the candidates says whether the gate ranks them. Besides the given τ's: τ_noise = the median
   per-image MC sd at the smallest draws (the log-weight noise is then ~1 nat) and τ_ess = the τ at which the first
   candidate's weights have the target ESS fraction.

    .venv/bin/python -m experiments.bench.export_ope_fidelity --runs runs/final2/ddpo_seed0/* \\
        runs/final2/ddpo_seed1/* runs/final2/ddpo_seed2/* runs/final2/policy_offline_dpo/* \\
        runs/final2/policy_offline_rwr/*                    # ~11 minutes on one thread

Prints the tables and writes JSON (default runs/bench/export_ope_fidelity.json); per-draw log-ratios are cached as
safetensors (``--cache``) so a rerun with other τ's costs seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from experiments.config import ConfigError, load_config
from experiments.export.logged_ope import LoggedImpressions, candidate_propensities
from experiments.tracking import read_metrics

logger = logging.getLogger(__name__)

ESTIMATORS = ("dm", "ips", "snips", "dr")


# ----------------------------------------------------------------------------------------------------------
# The math (pure functions, tests/experiments/test_export_ope_fidelity.py)


def centre_within(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``values`` minus the mean of their group: [N] float64 (groups: [N] labels)."""
    values = np.asarray(values, dtype=np.float64)
    _, index = np.unique(groups, return_inverse=True)
    index = index.ravel()
    means = np.bincount(index, weights=values) / np.bincount(index)
    return values - means[index]


def repeat_noise(per_draw: np.ndarray, draws: int, groups: np.ndarray) -> dict[str, float]:
    """Monte Carlo noise of the mean of ``draws`` draws, from independent draws of every image.

    Args:
        per_draw: [N, D] float log-ratio of each image (row) and independent draw (column), D >= 2 · draws.
        draws: n, the draws averaged by the estimate studied.
        groups: [N] product of each image (the cell normalisation cancels a product's common shift).

    Returns:
        ``repeat_corr`` (Pearson correlation between two disjoint n-draw means, averaged over the D // n - 1
        consecutive pairs of groups), ``repeat_corr_within`` (the same after centring within product),
        ``mc_sd_median`` / ``mc_sd_mean_square_root`` (per-image single-draw sd / √n: median, and √ of the mean
        variance), ``between_sd`` and ``within_sd`` (sd over images of the first n-draw mean, raw and centred within
        product), and ``reliability`` / ``reliability_within``: 1 − MC variance / observed variance, the share of
        the spread that is signal (within product the noise variance shrinks by the mean (1 − 1/m) over products of
        m images).
    """
    per_draw = np.asarray(per_draw, dtype=np.float64)
    if per_draw.ndim != 2 or draws < 1 or per_draw.shape[1] < 2 * draws:
        raise ValueError(f"per_draw must be [N, D] with D >= 2 * draws = {2 * draws}, got {list(per_draw.shape)}")
    if len(groups) != per_draw.shape[0]:
        raise ValueError(f"groups must have {per_draw.shape[0]} labels, got {len(groups)}")
    blocks = per_draw.shape[1] // draws
    means = per_draw[:, : blocks * draws].reshape(per_draw.shape[0], blocks, draws).mean(axis=2)
    centred = np.stack([centre_within(means[:, b], groups) for b in range(blocks)], axis=1)
    raw_corr = [np.corrcoef(means[:, b], means[:, b + 1])[0, 1] for b in range(blocks - 1)]
    within_corr = [np.corrcoef(centred[:, b], centred[:, b + 1])[0, 1] for b in range(blocks - 1)]
    mc_var = per_draw.var(axis=1, ddof=1) / draws
    _, index, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    shrink = float(np.mean(1.0 - 1.0 / sizes[index.ravel()]))
    between = float(means[:, 0].var())
    within = float(centred[:, 0].var())
    return {
        "draws": draws,
        "repeat_corr": float(np.mean(raw_corr)),
        "repeat_corr_within": float(np.mean(within_corr)),
        "mc_sd_median": float(np.median(np.sqrt(mc_var))),
        "mc_sd_mean_square_root": float(np.sqrt(mc_var.mean())),
        "between_sd": float(np.sqrt(between)),
        "within_sd": float(np.sqrt(within)),
        "reliability": float(1.0 - mc_var.mean() / between) if between > 0 else float("nan"),
        "reliability_within": float(1.0 - shrink * mc_var.mean() / within) if within > 0 else float("nan"),
    }


def temperature_for_ess(
    impressions: LoggedImpressions,
    log_ratio: np.ndarray,
    target: float,
    *,
    low: float = 1e-2,
    high: float = 1e6,
    iterations: int = 60,
) -> float:
    """The τ at which the candidate's weights have Kish ESS fraction ``target``: bisection on log τ.

    The weights are exp(log ρ / τ) normalised per (product, slot) cell; τ → ∞ makes them all 1 (ESS fraction 1) and
    τ → 0 puts each cell's mass on its largest ratio. Within one cell the fraction provably rises with τ
    (d log ESS / dβ = 2 (E_β[x] − E_2β[x]) ≤ 0 for w ∝ exp(β x), β = 1/τ); across cells bisection assumes it does.

    Raises:
        ValueError: ``target`` outside (0, 1), or not reached inside [low, high].
    """
    if not 0.0 < target < 1.0:
        raise ValueError(f"target ESS fraction must be in (0, 1), got {target}")
    ones = {"all": np.ones(len(log_ratio))}
    segments = LoggedImpressions(
        image_row=impressions.image_row,
        product=impressions.product,
        segment=np.full(impressions.image_row.shape, "all", dtype=object),
        slot=impressions.slot,
        propensity=impressions.propensity,
    )

    def fraction(tau: float) -> float:
        slots = int(segments.slot.max()) + 1
        _, diagnostics = candidate_propensities(segments, log_ratio, ones, np.ones(slots), temperature=tau)
        return diagnostics["weight_ess_fraction"]

    lo, hi = np.log(low), np.log(high)
    if not fraction(float(np.exp(lo))) <= target <= fraction(float(np.exp(hi))):
        raise ValueError(f"ESS fraction {target} is not reached for τ in [{low}, {high}]")
    for _ in range(iterations):
        middle = 0.5 * (lo + hi)
        if fraction(float(np.exp(middle))) < target:
            lo = middle
        else:
            hi = middle
    return float(np.exp(0.5 * (lo + hi)))


def oracle_lift(weights: np.ndarray, click_probability: np.ndarray, requests: np.ndarray) -> float:
    """Exact clicks-per-request lift of the re-weighted policy on the logged support: Σ_i (w_i − 1) p_i / #requests.

    Args:
        weights: [n] the candidate's importance weights π_e / π_0 of the logged impressions.
        click_probability: [n] the simulator's true click probability of each impression (truth sidecar).
        requests: [n] request id of each impression (the lift is per request, like the gate's).
    """
    weights = np.asarray(weights, dtype=np.float64)
    click_probability = np.asarray(click_probability, dtype=np.float64)
    if weights.shape != click_probability.shape or weights.shape != np.shape(requests):
        raise ValueError(
            f"weights, click_probability and requests must be [n] alike, got {list(weights.shape)}, "
            f"{list(click_probability.shape)}, {list(np.shape(requests))}"
        )
    return float(((weights - 1.0) * click_probability).sum() / np.unique(requests).size)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either side is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be [n] alike, got {list(x.shape)}, {list(y.shape)}")
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    order = values.argsort(kind="stable")
    ranks = np.empty(values.size)
    ranks[order] = np.arange(values.size, dtype=np.float64)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


# ----------------------------------------------------------------------------------------------------------
# Candidates and their log-ratios


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A policy whose held-out gold gain is known."""

    label: str
    run_dir: Path | None
    """None for the base model (a fresh zero adapter)."""
    gold_gain: float
    """Final evaluation's ``gold/gain`` (raw gold units over the base), 0 for the base."""
    kl_nats: float


def read_candidate(run_dir: Path) -> tuple[Candidate, Any, Any, Path]:
    """(candidate, policy config, sampler, reward dir) of a ``policy train`` or ``policy offline`` run."""
    # heavy (torch, diffusers, transformers): imported when the benchmark runs, so importing the module stays light
    from experiments.policy_runs.offline import PolicyOfflineCommandConfig
    from experiments.policy_runs.train import PolicyTrainCommandConfig

    run_dir = Path(run_dir)
    try:
        config = load_config(PolicyTrainCommandConfig, run_dir / "config.toml")
        sampler = config.trainer.sampler
    except ConfigError:
        config = load_config(PolicyOfflineCommandConfig, run_dir / "config.toml")
        sampler = config.sampler
    environment = json.loads((run_dir / "environment.json").read_text(encoding="utf-8"))
    reward_dir = Path(environment.get("reward_model") or config.reward.model_dir)
    evaluations = [r for r in read_metrics(run_dir) if "gold/gain" in r]
    if not evaluations:
        raise ValueError(f"{run_dir}: no evaluation with gold/gain in metrics.jsonl")
    label = run_dir.parent.name if run_dir.name[:1].isdigit() else run_dir.name
    final = evaluations[-1]
    candidate = Candidate(label, run_dir, float(final["gold/gain"]), float(final.get("eval/kl_nats", float("nan"))))
    return candidate, config.policy, dataclasses.replace(sampler, enforce_preservation=False), reward_dir


def log_ratio_draws(
    candidate: Candidate, policy_config: Any, sampler: Any, logs: Any, draws: int, seed: int, cache: Path | None
) -> np.ndarray:
    """[N, draws] per-draw ELBO log-ratios of the logged images (cached as safetensors by label, draws, seed)."""
    # heavy (torch, diffusers, transformers): imported when the benchmark runs, so importing the module stays light
    import torch
    from safetensors.numpy import load_file, save_file

    from experiments.export.logged_ope import elbo_log_ratio_draws
    from experiments.studio.prompts import studio_vocabulary
    from policy.model import InpaintPolicy

    path = cache / f"{candidate.label}-draws{draws}-seed{seed}.safetensors" if cache else None
    if path is not None and path.is_file():
        stored = load_file(str(path))["log_ratio"]
        if stored.shape == (len(logs.image_ids), draws):
            logger.info("%s: log-ratios from %s", candidate.label, path)
            return stored
    if candidate.run_dir is None:
        policy = InpaintPolicy.from_config(
            policy_config.model, lora=policy_config.lora, vocabulary=studio_vocabulary(), dtype=torch.float32
        )
    else:
        policy = InpaintPolicy.from_config(policy_config.model, vocabulary=studio_vocabulary(), dtype=torch.float32)
        policy.load_adapter(candidate.run_dir / "adapter")
    started = time.perf_counter()
    per_draw = elbo_log_ratio_draws(
        policy, logs.pixels, logs.masks, logs.prompts, sampler, draws=draws, seed=seed, progress=True
    )
    logger.info("%s: %d draws of %d images in %.0f s", candidate.label, draws, per_draw.shape[0],
                time.perf_counter() - started)  # fmt: skip
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"log_ratio": per_draw}, str(path))
    return per_draw


# ----------------------------------------------------------------------------------------------------------
# The study


def truth_columns(truth_dir: Path, event_ids: np.ndarray) -> dict[str, np.ndarray]:
    """True click probability and gold of each logged impression, from the truth sidecar's impressions table."""
    # heavy (pyarrow): imported when the benchmark runs, so importing the module stays light
    import pyarrow.parquet as pq

    table = pq.read_table(
        truth_dir / "truth" / "impressions.parquet", columns=["event_id", "click_probability", "gold"]
    )
    where = {e: i for i, e in enumerate(table.column("event_id").to_pylist())}
    missing = [e for e in event_ids.tolist() if e not in where]
    if missing:
        raise ValueError(f"{truth_dir}: {len(missing)} logged event(s) not in the truth, e.g. {missing[0]}")
    rows = np.array([where[e] for e in event_ids.tolist()], dtype=np.int64)
    return {name: table.column(name).to_numpy()[rows].astype(np.float64) for name in ("click_probability", "gold")}


def image_gold(logs: Any, gold: np.ndarray) -> np.ndarray:
    """[U] mean true gold of each shown image over its impressions."""
    rows = logs.impressions.image_row
    return np.bincount(rows, weights=gold, minlength=len(logs.image_ids)) / np.bincount(
        rows, minlength=len(logs.image_ids)
    )


def evaluate_setting(
    logs: Any, log_ratio: np.ndarray, config: Any, truth: dict[str, np.ndarray] | None
) -> dict[str, Any]:
    """The gate's lifts (with intervals), weight diagnostics and the oracle lift of one candidate at one setting."""
    # heavy (torch, diffusers, transformers): imported when the benchmark runs, so importing the module stays light
    from experiments.export.logged_ope import estimate_candidate

    result = estimate_candidate(logs, log_ratio, config)
    row: dict[str, Any] = {
        "weight_ess_fraction": result.diagnostics["weight_ess_fraction"],
        "max_weight": result.diagnostics["max_weight"],
        "log_ratio_sd": result.diagnostics["log_ratio_sd"],
    }
    for estimator in ESTIMATORS:
        lift = result.report.result(f"lift:{estimator}", "request")
        row[estimator] = {"lift": lift.value, "ci": [lift.ci_low, lift.ci_high]}
    if truth is not None:
        # The dense [requests, slots] log back to the flat impressions: row[i, k] is the impression's index.
        log = logs.log
        present = log.present
        flat = log.row[present]
        weights = np.empty(flat.size)
        weights[flat] = result.candidate.propensity[present] / log.propensity[present]
        requests = np.empty(flat.size, dtype=object)
        requests[flat] = np.broadcast_to(log.request_ids[:, None], present.shape)[present]
        row["oracle"] = {"lift": oracle_lift(weights, truth["click_probability"], requests), "ci": None}
    return row


def run_study(args: argparse.Namespace) -> dict[str, Any]:
    # heavy (torch, diffusers, transformers): imported when the benchmark runs, so importing the module stays light
    import torch

    from experiments.export.config import CandidateOPEConfig
    from experiments.export.logged_ope import load_ope_logs
    from experiments.export.manifest import find_truth, reward_test_split
    from experiments.ope.evaluate import OPEConfig
    from reward.scorer import RewardScorer

    torch.set_num_threads(args.threads)
    read = [read_candidate(Path(r)) for r in args.runs]
    reward_dirs = {str(r[3]) for r in read}
    if len(reward_dirs) != 1:
        raise ValueError(f"the runs were trained against different reward models: {sorted(reward_dirs)}")
    reward_dir = read[0][3]
    logs_dir = Path(args.logs) if args.logs else reward_test_split(reward_dir)
    started = time.perf_counter()
    scorer = RewardScorer.load(reward_dir, device=torch.device("cpu"))
    logs = load_ope_logs(logs_dir, scorer)
    truth_dir = Path(args.truth) if args.truth else find_truth(logs_dir)
    truth = truth_columns(truth_dir, logs.event_ids) if truth_dir else None
    products = np.array(
        [logs.impressions.product[logs.impressions.image_row == u][0] for u in range(len(logs.image_ids))]
    )
    logger.info("logs %s: %d images, %d impressions (%.0f s)", logs_dir, len(logs.image_ids),
                logs.impressions.slot.size, time.perf_counter() - started)  # fmt: skip

    cache = Path(args.cache) if args.cache else None
    max_draws = max(args.draws)
    candidates, ratios = [], {}
    if args.base:
        base = Candidate("base (zero adapter)", None, 0.0, 0.0)
        candidates.append(base)
        ratios[base.label] = log_ratio_draws(base, read[0][1], read[0][2], logs, max_draws, args.seed, cache)
    for index, (candidate, policy_config, sampler, _) in enumerate(read):
        draws = max(max_draws, args.noise_draws) if index == 0 else max_draws
        candidates.append(candidate)
        ratios[candidate.label] = log_ratio_draws(candidate, policy_config, sampler, logs, draws, args.seed, cache)

    noise_label = read[0][0].label
    noise_draws = ratios[noise_label]
    noise = [repeat_noise(noise_draws, n, products) for n in (1, 2, 4, 8, 16, 32) if 2 * n <= noise_draws.shape[1]]
    smallest = min(args.draws)
    first_estimate = noise_draws[:, :smallest].mean(axis=1)
    temperatures = [(f"{t:g}", float(t)) for t in args.temperatures]
    if args.noise_temperature:
        mc_sd = float(np.median(noise_draws.std(axis=1, ddof=1))) / np.sqrt(smallest)
        temperatures.append(("tau_noise", float(f"{mc_sd:.2g}")))
    for target in args.ess_targets:
        tau = temperature_for_ess(logs.impressions, first_estimate, target)
        temperatures.append((f"tau_ess{target:g}", float(f"{tau:.2g}")))

    base_config = CandidateOPEConfig(seed=args.seed, ope=OPEConfig(n_bootstrap=args.n_bootstrap))
    gold_image = image_gold(logs, truth["gold"]) if truth is not None else None
    rows = []
    for candidate in candidates:
        per_draw = ratios[candidate.label]
        for draws in args.draws:
            log_ratio = per_draw[:, :draws].mean(axis=1)
            gold_corr = (
                float(np.corrcoef(centre_within(log_ratio, products), centre_within(gold_image, products))[0, 1])
                if gold_image is not None and log_ratio.std() > 0
                else float("nan")
            )
            for name, tau in temperatures:
                config = dataclasses.replace(base_config, elbo_draws=draws, ratio_temperature=tau)
                row = evaluate_setting(logs, log_ratio, config, truth)
                rows.append(
                    {"candidate": candidate.label, "gold_gain": candidate.gold_gain, "kl_nats": candidate.kl_nats,
                     "draws": draws, "temperature_name": name, "temperature": tau,
                     "ratio_gold_corr_within": gold_corr} | row
                )  # fmt: skip
    ranking = []
    for draws in args.draws:
        for name, tau in temperatures:
            mine = [r for r in rows if r["draws"] == draws and r["temperature_name"] == name]
            gold = np.array([r["gold_gain"] for r in mine])
            entry = {"draws": draws, "temperature_name": name, "temperature": tau}
            for estimator in (*ESTIMATORS, "oracle"):
                if estimator in mine[0]:
                    entry[estimator] = spearman(np.array([r[estimator]["lift"] for r in mine]), gold)
            ranking.append(entry)
    return {
        "logs": str(logs_dir),
        "truth": str(truth_dir) if truth_dir else None,
        "reward_model": str(reward_dir),
        "images": len(logs.image_ids),
        "impressions": int(logs.impressions.slot.size),
        "requests": int(logs.log.request_ids.size),
        "seed": args.seed,
        "threads": args.threads,
        "n_bootstrap": args.n_bootstrap,
        "noise_candidate": noise_label,
        "noise": noise,
        "temperatures": dict(temperatures),
        "rows": rows,
        "ranking": ranking,
        "seconds": time.perf_counter() - started,
    }


def format_tables(result: dict[str, Any]) -> str:
    lines = [f"MC noise of the log-ratio ({result['noise_candidate']}, {result['images']} logged images)", ""]
    lines.append("| draws | repeat corr | repeat corr within product | MC sd (median) | between-image sd "
                 "| within-product sd | reliability | reliability within |")  # fmt: skip
    lines.append("|---|---|---|---|---|---|---|---|")
    for n in result["noise"]:
        lines.append(
            f"| {n['draws']} | {n['repeat_corr']:.3f} | {n['repeat_corr_within']:.3f} | {n['mc_sd_median']:.1f} | "
            f"{n['between_sd']:.1f} | {n['within_sd']:.1f} | {n['reliability']:.3f} | {n['reliability_within']:.3f} |"
        )
    lines += ["", f"temperatures: {result['temperatures']}", ""]

    def cell(entry: dict) -> str:
        if entry["ci"] is None:
            return f"{entry['lift']:+.4f}"
        return f"{entry['lift']:+.4f} [{entry['ci'][0]:+.4f}, {entry['ci'][1]:+.4f}]"

    lines.append("| candidate | gold gain | draws | τ | ESS frac | DR lift | IPS lift | SNIPS lift | oracle lift | "
                 "corr(log ρ, gold) within product |")  # fmt: skip
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        oracle = cell(r["oracle"]) if "oracle" in r else "—"
        lines.append(
            f"| {r['candidate']} | {r['gold_gain']:+.3f} | {r['draws']} "
            f"| {r['temperature_name']} ({r['temperature']:g}) | {r['weight_ess_fraction']:.3f} "
            f"| {cell(r['dr'])} | {cell(r['ips'])} "
            f"| {cell(r['snips'])} | {oracle} "
            f"| {r['ratio_gold_corr_within']:+.3f} |"
        )
    lines += ["", "Spearman rank correlation of the lift with the gold gain over the candidates", ""]
    lines.append("| draws | τ | DM | IPS | SNIPS | DR | oracle |")
    lines.append("|---|---|---|---|---|---|---|")
    for r in result["ranking"]:
        values = " | ".join(f"{r.get(e, float('nan')):+.2f}" for e in (*ESTIMATORS, "oracle"))
        lines.append(f"| {r['draws']} | {r['temperature_name']} ({r['temperature']:g}) | {values} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--runs",
        nargs="+",
        required=True,
        help="policy train / policy offline run dirs (the first one is also the noise study's)",
    )
    parser.add_argument(
        "--no-base", dest="base", action="store_false", help="skip the base model (zero adapter) sanity candidate"
    )
    parser.add_argument(
        "--draws",
        type=int,
        nargs="+",
        default=[2, 8],
        help="elbo_draws settings evaluated (the export's default is 2)",
    )
    parser.add_argument(
        "--noise-draws",
        type=int,
        default=16,
        help="independent draws of the first run, for the noise study (>= 2x the draws studied)",
    )
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0], help="fixed τ values evaluated")
    parser.add_argument(
        "--ess-targets",
        type=float,
        nargs="*",
        default=[0.5],
        help="add the τ giving the first run's weights this ESS fraction (at the smallest draws)",
    )
    parser.add_argument(
        "--no-noise-temperature",
        dest="noise_temperature",
        action="store_false",
        help="do not add τ_noise (the median per-image MC sd at the smallest draws)",
    )
    parser.add_argument("--logs", default=None, help="validated logs (default: the reward model's test split)")
    parser.add_argument("--truth", default=None, help="simulation folder with truth/ (default: searched above logs)")
    parser.add_argument("--seed", type=int, default=0, help="forward-noising and bootstrap seed (the export's: 0)")
    parser.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap resamples per interval")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--cache",
        default="runs/bench/export_ope_fidelity_draws",
        help="folder caching per-draw log-ratios as safetensors ('' = no cache)",
    )
    parser.add_argument("--out", default="runs/bench/export_ope_fidelity.json", help="JSON output path")
    return parser.parse_args(argv)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.noise_draws < 2 * min(args.draws):
        raise SystemExit(f"--noise-draws must be >= 2 x the smallest --draws ({2 * min(args.draws)})")

    with threadpool_limits(args.threads):
        result = run_study(args)
    print(format_tables(result))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {out} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
