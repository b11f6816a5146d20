"""``backdrop policy compare``: DDPO against best-of-n reranking and the offline methods, at matched KL.

Inputs are finished run directories: several ``backdrop policy train`` runs (seeds) and optionally
``backdrop policy offline`` runs (dpo, rwr). Every method is scored on the SAME held-out studio requests with the
SAME sampler (the DDPO runs' configuration; the command refuses runs evaluated differently):

- base: the base model (adapter disabled); its n samples per request give the base's mean gold per request and
  the within-request standard deviation that all gains are divided by (the SD of gold between samples of the
  base model for one request, pooled over requests);
- best-of-n: per request, the base sample the reward model scores highest; KL to the base is at most
  log n - (n - 1) / n nats (Beirami et al. 2024);
- DDPO: each seed's final evaluation (paired with base samples of the same noise); mean over seeds with a
  t-interval over seeds;
- DPO / RWR: the evaluation (one per ``eval_every`` steps) whose KL is closest to the DDPO runs' mean final KL
  ("matched KL"), and their final one;
- best-of-n on top of the first DDPO seed's policy (do the two stack?).

KL is the KL of whole sampling chains in nats per sample (``policy.evaluation``). Gold gains are reported raw and in
within-request SDs. Writes ``compare.md`` and ``compare.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from scipy import stats

from experiments.compare.runs import RunDirectoryError, load_run
from experiments.config import load_config
from experiments.policy_runs.requests import manifest_eval
from experiments.policy_runs.train import PolicyTrainCommandConfig, build_policy, load_reward_model, load_world
from experiments.runtime import setup_runtime
from experiments.studio.requests import StudioGold
from experiments.tracking import new_run_dir
from offline_data.errors import AssetError, BackdropError
from policy.evaluation import best_of_n, best_of_n_kl_bound, within_request_sd

logger = logging.getLogger("backdrop")

Z_95 = 1.959964
MATCHED_KEYS = ("trainer.sampler", "eval", "requests", "world", "catalogue")
"""Config sections that must agree between runs for their evaluations to compare (offline runs name the sampler
[sampler] instead of [trainer.sampler])."""


class ComparisonError(BackdropError):
    """The runs cannot be compared (missing evaluations, different evaluation settings)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class MethodRow:
    """One line of the comparison table."""

    method: str
    kl_nats: float
    """KL to the base, nats per sample (an upper bound for best-of-n)."""
    gold_gain: float
    """Mean gold gain over the base, raw gold units."""
    gold_ci: tuple[float, float]
    """95 % interval of the raw gain (over seeds for DDPO, over requests otherwise)."""
    gold_gain_sd: float
    """The gain in within-request SDs of the base."""
    proxy_gain_sd: float | None
    """Proxy (reward model) gain in within-request SDs of the base's proxy, where measured."""
    improved: float | None
    """Share of requests whose gold rose."""
    note: str
    """Which runs / step, how the interval was made."""


def t_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high) of a 95 % Student-t interval of the mean of ``values`` (n >= 2)."""
    count = len(values)
    mean = sum(values) / count
    if count < 2:
        return mean, float("nan"), float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (count - 1))
    half = float(stats.t.ppf(0.975, count - 1)) * sd / math.sqrt(count)
    return mean, mean - half, mean + half


def evaluations(run: Any, key: str = "eval/kl_nats") -> list[dict[str, Any]]:
    """The evaluation records of a run (those with gold and KL)."""
    return [r for r in run.metrics if key in r and "gold/gain" in r]


def check_same_evaluation(runs: Sequence[Any]) -> None:
    """Refuse runs whose held-out evaluation differs (requests, world, seeds, sampler)."""

    def settings(run: Any) -> dict[str, Any]:
        config = run.config
        found = {}
        for key, value in config.items():
            for section in MATCHED_KEYS:
                if key.startswith(section + "."):
                    found[key] = value
            if key.startswith("sampler."):
                found["trainer." + key] = value
        return found

    reference = settings(runs[0])
    for run in runs[1:]:
        other = settings(run)
        differing = sorted(k for k in set(reference) | set(other) if reference.get(k) != other.get(k))
        if differing:
            raise ComparisonError(
                f"{run.path} was evaluated differently from {runs[0].path}: {', '.join(differing[:6])} differ; "
                "compare runs with the same [requests], [world], [eval] and sampler settings"
            )


def ddpo_row(runs: Sequence[Any], scale: float) -> tuple[MethodRow, list[dict[str, Any]]]:
    """Mean over seeds of each DDPO run's final evaluation."""
    finals = []
    for run in runs:
        records = evaluations(run)
        if not records:
            raise ComparisonError(f"{run.path}: no evaluation with gold in metrics.jsonl (eval_every = 0?)")
        finals.append({"run": str(run.path), "step": records[-1]["step"], **records[-1]})
    gains = [f["gold/gain"] for f in finals]
    mean, low, high = t_interval(gains)
    row = MethodRow(
        method=f"DDPO ({len(runs)} seed{'s' if len(runs) > 1 else ''})",
        kl_nats=sum(f["eval/kl_nats"] for f in finals) / len(finals),
        gold_gain=mean,
        gold_ci=(low, high),
        gold_gain_sd=mean / scale,
        proxy_gain_sd=sum(f["eval/proxy_gain_sd"] for f in finals) / len(finals),
        improved=sum(f["gold/improved_requests"] for f in finals) / len(finals),
        note="final epoch of each seed; t-interval over seeds; per seed gain " + ", ".join(f"{g:+.3f}" for g in gains),
    )
    return row, finals


def offline_rows(name: str, run: Any, target_kl: float, scale: float) -> list[MethodRow]:
    """An offline run at the evaluation closest to ``target_kl`` and at its last evaluation."""
    records = evaluations(run)
    if not records:
        raise ComparisonError(f"{run.path}: no evaluation with gold in metrics.jsonl (eval_every = 0?)")
    matched = min(records, key=lambda r: abs(r["eval/kl_nats"] - target_kl))
    rows = []
    for label, record in (("matched KL", matched), ("final", records[-1])):
        if label == "final" and record is matched:
            continue
        half = Z_95 * record["gold/gain_se"]
        rows.append(
            MethodRow(
                method=f"{name} ({label}, step {int(record['step'])})",
                kl_nats=record["eval/kl_nats"],
                gold_gain=record["gold/gain"],
                gold_ci=(record["gold/gain"] - half, record["gold/gain"] + half),
                gold_gain_sd=record["gold/gain"] / scale,
                proxy_gain_sd=record["eval/proxy_gain_sd"],
                improved=record["gold/improved_requests"],
                note=f"{run.path}; normal interval over requests"
                + (
                    ""
                    if label == "final" or matched is records[-1]
                    else f"; final KL {records[-1]['eval/kl_nats']:.1f}"
                ),
            )
        )
    return rows


def reranking_rows(first_run: Any, n: int, *, stack_adapter: Path | None) -> tuple[list[MethodRow], float, dict]:
    """Best-of-n of the base (and of the DDPO policy) on the DDPO runs' held-out requests.

    Returns:
        rows, the within-request SD of the base's gold (the scale of every gain), and details for the JSON.
    """

    config = load_config(PolicyTrainCommandConfig, first_run.path / "config.toml")
    if config.catalogue.requests is not None:
        raise ComparisonError(
            f"{first_run.path}: a catalogue run (--requests {config.catalogue.requests}) has no gold, and this "
            "comparison ranks methods by held-out gold; compare catalogue runs' proxy gain and KL with "
            "'backdrop runs compare RUN... --metrics eval/proxy_gain_sd,eval/kl_nats'"
        )
    environment = json.loads((first_run.path / "environment.json").read_text(encoding="utf-8"))
    reward_dir = Path(environment["reward_model"])
    runtime = setup_runtime(config.run)
    world = load_world(config.world)  # gold of the held-out products; the requests come from the run's manifest
    reward_fn = load_reward_model(reward_dir, head_weights=config.reward.head_weights, world=world)
    policy = build_policy(config.policy, runtime)
    try:
        requests = manifest_eval(first_run.path, policy.resolution)
    except AssetError as exc:
        raise ComparisonError(str(exc)) from None
    common = {
        "n": n, "reward_fn": reward_fn, "gold_fn": StudioGold(world), "sampler": config.trainer.sampler,
        "first_seed": config.eval.first_seed + 7_919,  # candidates independent of the evaluation's samples
    }  # fmt: skip
    with policy.reference():
        base = best_of_n(policy, requests, **common)
    base_mean = base.gold.mean(dim=1)
    scale = within_request_sd(base.gold)
    proxy_scale = within_request_sd(base.proxy)

    def row(method: str, chosen_gold: Any, chosen_proxy: Any, kl: float, note: str) -> MethodRow:
        per_request = (chosen_gold - base_mean).double()
        gain = float(per_request.mean())
        half = Z_95 * float(per_request.std() / math.sqrt(per_request.numel()))
        return MethodRow(
            method=method,
            kl_nats=kl,
            gold_gain=gain,
            gold_ci=(gain - half, gain + half),
            gold_gain_sd=gain / scale,
            proxy_gain_sd=float((chosen_proxy - base.proxy.mean(dim=1)).mean()) / proxy_scale,
            improved=float((per_request > 0).double().mean()),
            note=note,
        )

    chosen_proxy = base.proxy.gather(1, base.chosen[:, None])[:, 0]
    rows = [
        MethodRow(
            method="base (adapter off)",
            kl_nats=0.0,
            gold_gain=0.0,
            gold_ci=(0.0, 0.0),
            gold_gain_sd=0.0,
            proxy_gain_sd=0.0,
            improved=None,
            note=f"mean gold {float(base_mean.mean()):+.3f}; within-request SD {scale:.3f} ({n} samples x "
            f"{len(requests)} requests)",
        ),
        row(
            f"best-of-{n} (base)",
            base.chosen_gold,
            chosen_proxy,
            best_of_n_kl_bound(n),
            "KL: upper bound log n - (n-1)/n; normal interval over requests",
        ),
    ]
    details: dict[str, Any] = {"base_mean_gold": float(base_mean.mean()), "within_request_sd": scale}
    if stack_adapter is not None:
        policy.load_adapter(stack_adapter)
        with torch.no_grad():
            stacked = best_of_n(policy, requests, **common)
        rows.append(
            row(f"best-of-{n} on DDPO (first run)", stacked.chosen_gold,
                stacked.proxy.gather(1, stacked.chosen[:, None])[:, 0], float("nan"),
                f"{stack_adapter}; KL = DDPO's + at most {best_of_n_kl_bound(n):.2f}"),
        )  # fmt: skip
        details["stacked_policy_mean_gold"] = float(stacked.gold.mean())
    details["requests"] = len(requests)
    return rows, scale, details


def format_markdown(rows: Sequence[MethodRow], context: Mapping[str, Any]) -> str:
    """The comparison as a markdown table with its context lines."""
    header = ["method", "KL (nats)", "gold gain (raw)", "95% CI", "gold gain (SD)", "proxy gain (SD)", "improved"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [
            r.method,
            "0" if r.kl_nats == 0 else ("—" if math.isnan(r.kl_nats) else f"{r.kl_nats:.2f}"),
            f"{r.gold_gain:+.3f}",
            "—" if math.isnan(r.gold_ci[0]) else f"[{r.gold_ci[0]:+.3f}, {r.gold_ci[1]:+.3f}]",
            f"{r.gold_gain_sd:+.2f}",
            "—" if r.proxy_gain_sd is None else f"{r.proxy_gain_sd:+.2f}",
            "—" if r.improved is None else f"{100 * r.improved:.0f}%",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- **{r.method}**: {r.note}" for r in rows]
    intro = [f"- {k}: {v}" for k, v in context.items()]
    return "\n".join(["# Methods compared on held-out studio products", "", *intro, "", *lines, "", *notes, ""])


def compare_methods(
    ddpo: Sequence[str | Path],
    *,
    dpo: Sequence[str | Path] = (),
    rwr: Sequence[str | Path] = (),
    best_of: int = 16,
    stack: bool = True,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Build the comparison (module docstring) and write ``compare.md`` / ``compare.json`` into ``out_dir``
    (default: a fresh ``runs/policy_compare/<timestamp>``, made once the table is computed)."""
    if not ddpo:
        raise ComparisonError("give at least one DDPO run (--ddpo RUN ...)")
    try:
        ddpo_runs = [load_run(p) for p in ddpo]
        offline = [("DPO", load_run(p)) for p in dpo] + [("RWR", load_run(p)) for p in rwr]
    except RunDirectoryError as exc:
        raise ComparisonError(str(exc)) from None
    check_same_evaluation([*ddpo_runs, *(run for _, run in offline)])
    stack_adapter = ddpo_runs[0].path / "adapter" if stack else None
    if stack_adapter is not None and not stack_adapter.is_dir():
        raise ComparisonError(f"{stack_adapter}: the DDPO run has no final adapter to rerank with")
    rows, scale, details = reranking_rows(ddpo_runs[0], best_of, stack_adapter=stack_adapter)
    ddpo_line, finals = ddpo_row(ddpo_runs, scale)
    rows.insert(2, ddpo_line)
    for name, run in offline:
        rows[3:3] = offline_rows(name, run, ddpo_line.kl_nats, scale)
    context = {
        "command": " ".join(["backdrop", *sys.argv[1:]])
        if sys.argv and "backdrop" in sys.argv[0]
        else "see compare.json",
        "held-out requests": details["requests"],
        "gains": "over the base model's mean gold per request; SD = within-request SD of the base's gold "
        f"({scale:.3f} raw units)",
        "matched KL": f"offline runs at the evaluation closest to DDPO's mean final KL ({ddpo_line.kl_nats:.2f} nats)",
    }
    if out_dir is None:
        out = new_run_dir("runs", "policy_compare")
    else:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
    markdown = format_markdown(rows, context)
    (out / "compare.md").write_text(markdown, encoding="utf-8")
    payload = {
        "rows": [dataclasses.asdict(r) for r in rows],
        "ddpo_runs": finals,
        "context": context,
        "details": details,
        "argv": sys.argv,
        "out_dir": str(out),
    }
    (out / "compare.json").write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    return payload
