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

Without gold (catalogue runs, trained with ``--requests``; or any comparison ``--requests FILE``) the same rows are
ranked by the reward model's held-out estimate: per method the proxy gain (raw with its 95 % interval, and in
within-request SDs of the base's proxy) and the pessimistic gain (ensemble mean - k std, k the first DDPO run's
evaluation pessimism; runs evaluated with another k are converted), which ranks. Best-of-n picked by the reward model
it is then scored with is optimistic by construction (the max of n noisy estimates), so its rank uses a held-out
ensemble member instead: for each member j the candidate the mean of the other members picks, scored by member j
minus k std, averaged over j (:func:`held_out_member_gain`). DDPO, DPO and RWR are scored on fresh samples, but DDPO
and RWR optimised this reward model, so their estimates share its errors; only gold (or an online test) settles it.

``--requests FILE`` evaluates every run on that request table's eval rows instead of the first run's manifest: the
table is validated (``experiments.policy_runs.requests.catalogue_requests``) and written into the comparison's
``requests/`` manifest; each DDPO run's final adapter and each offline run's adapter snapshots are evaluated again
(``policy.evaluation.PolicyEvaluator``, the first run's sampler and [eval] settings); the output says which runs
were trained on other requests.
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

from experiments.compare.proxy import (
    ddpo_proxy_row,
    evaluate_again,
    offline_proxy_rows,
    proxy_reranking_rows,
    trained_on,
)
from experiments.compare.rows import (
    RANKED_BY_GOLD,
    RANKED_BY_PROXY,
    Z_95,
    ComparisonError,
    ComparisonSetup,
    MethodRow,
    ddpo_name,
    evaluations,
    final_records,
    matched_records,
    normal_interval,
    t_interval,
)
from experiments.compare.runs import RunDirectoryError, load_run
from experiments.config import load_config
from experiments.policy_runs.request_manifest import MANIFEST_DIR
from experiments.policy_runs.requests import catalogue_requests, manifest_eval
from experiments.policy_runs.train import PolicyTrainCommandConfig, build_policy, load_reward_model, load_world
from experiments.runtime import setup_runtime
from experiments.studio.requests import StudioGold
from experiments.tracking import new_run_dir
from offline_data.errors import AssetError
from policy.evaluation import best_of_n, best_of_n_kl_bound, within_request_sd

logger = logging.getLogger("backdrop")

MATCHED_KEYS = ("trainer.sampler", "eval", "requests", "world", "catalogue")
"""Config sections that must agree between runs for their evaluations to compare (offline runs name the sampler
[sampler] instead of [trainer.sampler])."""
REQUEST_KEYS = ("requests", "world", "catalogue")
"""Of those, the ones ``--requests`` makes irrelevant (every run is evaluated again on the given table)."""
BASE_KEYS = ("policy.model",)
"""Config sections that must agree for the runs to share a base model (the reference of every KL)."""


def _settings(run: Any, sections: Sequence[str]) -> dict[str, Any]:
    """The run's config keys under ``sections`` (an offline run's [sampler] read as [trainer.sampler])."""
    found = {}
    for key, value in run.config.items():
        if key.startswith("sampler."):
            key = "trainer." + key
        if any(key.startswith(section + ".") for section in sections):
            found[key] = value
    return found


def _differing(runs: Sequence[Any], sections: Sequence[str]) -> tuple[Any, list[str]] | None:
    """The first run whose settings under ``sections`` differ from the first run's, with the differing keys."""
    reference = _settings(runs[0], sections)
    for run in runs[1:]:
        other = _settings(run, sections)
        differing = sorted(k for k in set(reference) | set(other) if reference.get(k) != other.get(k))
        if differing:
            return run, differing
    return None


def check_same_evaluation(runs: Sequence[Any], *, requests_given: bool = False) -> None:
    """Refuse runs whose held-out evaluation differs (requests, world, seeds, sampler), or whose base model differs;
    with ``requests_given`` (every run evaluated again on one table) only the sampler and [eval] must agree, and the
    adapters too ([policy.lora]: they are loaded into one model)."""
    sections = [s for s in MATCHED_KEYS if not requests_given or s not in REQUEST_KEYS]
    found = _differing(runs, sections)
    if found:
        run, differing = found
        same = "[eval] and sampler" if requests_given else "[requests], [world], [eval] and sampler"
        raise ComparisonError(
            f"{run.path} was evaluated differently from {runs[0].path}: {', '.join(differing[:6])} differ; "
            f"compare runs with the same {same} settings"
        )
    found = _differing(runs, [*BASE_KEYS, *(["policy.lora"] if requests_given else [])])
    if found:
        run, differing = found
        raise ComparisonError(
            f"{run.path} does not fit {runs[0].path}'s base model: {', '.join(differing[:6])} differ; every run "
            "must fine-tune the same base model (its resolution and weights are the reference of every KL)"
            + (" with the same adapter shape" if requests_given else "")
        )


def ddpo_row(runs: Sequence[Any], scale: float) -> tuple[MethodRow, list[dict[str, Any]]]:
    """Mean over seeds of each DDPO run's final evaluation."""
    finals = final_records(runs)
    gains = [f["gold/gain"] for f in finals]
    mean, low, high = t_interval(gains)
    row = MethodRow(
        method=ddpo_name(len(runs)),
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
    rows = []
    for label, record, final_kl in matched_records(records, target_kl):
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
                note=f"{run.path}; normal interval over requests{final_kl}",
            )
        )
    return rows


def load_setup(first_run: Any, requests_file: str | Path | None, manifest_dir: Path | None) -> ComparisonSetup:
    """The first DDPO run's settings, models and held-out requests (its manifest's eval rows, or the eval rows of
    ``requests_file``, validated and written to ``manifest_dir`` as the comparison's request manifest)."""
    config = load_config(PolicyTrainCommandConfig, first_run.path / "config.toml")
    environment = json.loads((first_run.path / "environment.json").read_text(encoding="utf-8"))
    runtime = setup_runtime(config.run)
    catalogue = requests_file is not None or config.catalogue.requests is not None
    world = None if catalogue else load_world(config.world)  # gold of the held-out studio products
    reward_fn = load_reward_model(
        Path(environment["reward_model"]), head_weights=config.reward.head_weights, world=world
    )
    policy = build_policy(config.policy, runtime)
    if requests_file is not None:
        table_config = dataclasses.replace(config.catalogue, requests=Path(requests_file))
        requests = catalogue_requests(table_config, manifest_dir, policy.resolution)[1]
        if not requests:
            raise ComparisonError(f"{requests_file}: no eval request to compare on; give some rows split = eval")
        source = f"--requests {requests_file} (its eval rows; every run evaluated again)"
    else:
        try:
            requests = manifest_eval(first_run.path, policy.resolution)
        except AssetError as exc:
            raise ComparisonError(str(exc)) from None
        source = f"{first_run.path}'s request manifest (" + (
            f"catalogue {config.catalogue.requests})" if catalogue else "studio world)"
        )
    lam = config.trainer.reward.pessimism
    pessimism = config.eval.pessimism if config.eval.pessimism is not None else (lam if lam > 0 else 1.0)
    gold_fn = None if world is None else StudioGold(world)
    return ComparisonSetup(config=config, policy=policy, reward_fn=reward_fn, gold_fn=gold_fn, requests=requests,
                           source=source, pessimism=pessimism)  # fmt: skip


def reranking_rows(
    setup: ComparisonSetup, n: int, *, stack_adapter: Path | None
) -> tuple[list[MethodRow], float, dict]:
    """Best-of-n of the base (and of the DDPO policy) on the held-out requests of ``setup``.

    Returns:
        rows, the within-request SD of the base's gold (of its proxy without gold: the scale of every gain), and
        details for the JSON.
    """

    policy, requests, config = setup.policy, setup.requests, setup.config
    common = {
        "n": n, "reward_fn": setup.reward_fn, "gold_fn": setup.gold_fn, "sampler": config.trainer.sampler,
        "first_seed": config.eval.first_seed + 7_919,  # candidates independent of the evaluation's samples
    }  # fmt: skip
    with policy.as_base():
        base = best_of_n(policy, requests, **common)
    stacked = None
    if stack_adapter is not None:
        policy.load_adapter(stack_adapter)
        with torch.no_grad():
            stacked = best_of_n(policy, requests, **common)
    bound = best_of_n_kl_bound(n)
    stack_name, stack_note = f"best-of-{n} on DDPO (first run)", f"{stack_adapter}; KL = DDPO's + at most {bound:.2f}"
    if setup.gold_fn is None:
        return proxy_reranking_rows(base, stacked, n, setup.pessimism, (stack_name, stack_note))
    base_mean = base.gold.mean(dim=1)
    scale = within_request_sd(base.gold)
    proxy_scale = within_request_sd(base.proxy)

    def row(method: str, chosen_gold: Any, chosen_proxy: Any, kl: float, note: str) -> MethodRow:
        per_request = (chosen_gold - base_mean).double()
        gain, interval = normal_interval(per_request)
        return MethodRow(
            method=method,
            kl_nats=kl,
            gold_gain=gain,
            gold_ci=interval,
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
            bound,
            "KL: upper bound log n - (n-1)/n; normal interval over requests",
        ),
    ]
    details: dict[str, Any] = {"base_mean_gold": float(base_mean.mean()), "within_request_sd": scale}
    if stacked is not None:
        rows.append(
            row(stack_name, stacked.chosen_gold, stacked.proxy.gather(1, stacked.chosen[:, None])[:, 0],
                float("nan"), stack_note),
        )  # fmt: skip
        details["stacked_policy_mean_gold"] = float(stacked.gold.mean())
    details["requests"] = len(requests)
    return rows, scale, details


def ranking(rows: Sequence[MethodRow], gold: bool) -> list[dict[str, Any]]:
    """The rows from best to worst by :meth:`MethodRow.rank_value` (rows without a value are left out)."""
    valued = [(r, r.rank_value(gold)) for r in rows]
    ordered = sorted((p for p in valued if p[1] is not None and not math.isnan(p[1])), key=lambda p: -p[1])
    return [{"method": r.method, "value": value} for r, value in ordered]


def _kl_cell(kl: float) -> str:
    return "0" if kl == 0 else ("—" if math.isnan(kl) else f"{kl:.2f}")


def _ci_cell(ci: tuple[float, float] | None) -> str:
    return "—" if ci is None or math.isnan(ci[0]) else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def _sd_cell(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f}"


def format_markdown(rows: Sequence[MethodRow], context: Mapping[str, Any], *, gold: bool = True) -> str:
    """The comparison as a markdown table with its context lines: gold columns when the runs have gold, else the
    reward model's estimates (no gold column is claimed)."""
    if gold:
        header = ["method", "KL (nats)", "gold gain (raw)", "95% CI", "gold gain (SD)", "proxy gain (SD)", "improved"]
        title = "# Methods compared on held-out studio products"
    else:
        header = ["method", "KL (nats)", "proxy gain (raw)", "95% CI", "proxy gain (SD)", "pessimistic gain (SD)",
                  "held-out member (SD)", "rank"]  # fmt: skip
        title = "# Methods compared on held-out requests (no gold: the reward model's estimates)"
        places = {entry["method"]: k + 1 for k, entry in enumerate(ranking(rows, gold))}
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        if gold:
            cells = [
                r.method, _kl_cell(r.kl_nats), f"{r.gold_gain:+.3f}", _ci_cell(r.gold_ci), f"{r.gold_gain_sd:+.2f}",
                _sd_cell(r.proxy_gain_sd), "—" if r.improved is None else f"{100 * r.improved:.0f}%",
            ]  # fmt: skip
        else:
            cells = [
                r.method, _kl_cell(r.kl_nats), f"{r.proxy_gain:+.3f}", _ci_cell(r.proxy_ci), _sd_cell(r.proxy_gain_sd),
                _sd_cell(r.pessimistic_gain_sd), _sd_cell(r.held_out_gain_sd), str(places.get(r.method, "—")),
            ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- **{r.method}**: {r.note}" for r in rows]
    intro = [f"- {k}: {v}" for k, v in context.items()]
    return "\n".join([title, "", *intro, "", *lines, "", *notes, ""])


def compare_methods(
    ddpo: Sequence[str | Path],
    *,
    dpo: Sequence[str | Path] = (),
    rwr: Sequence[str | Path] = (),
    best_of: int = 16,
    stack: bool = True,
    out_dir: str | Path | None = None,
    requests: str | Path | None = None,
) -> dict[str, Any]:
    """Build the comparison (module docstring) and write ``compare.md`` / ``compare.json`` into ``out_dir``
    (default: a fresh ``runs/policy_compare/<timestamp>``, made once the table is computed, or first with
    ``requests``: its ``requests/`` manifest is written before anything is evaluated)."""
    if not ddpo:
        raise ComparisonError("give at least one DDPO run (--ddpo RUN ...)")
    try:
        ddpo_runs = [load_run(p) for p in ddpo]
        offline = [("DPO", load_run(p)) for p in dpo] + [("RWR", load_run(p)) for p in rwr]
    except RunDirectoryError as exc:
        raise ComparisonError(str(exc)) from None
    check_same_evaluation([*ddpo_runs, *(run for _, run in offline)], requests_given=requests is not None)
    stack_adapter = ddpo_runs[0].path / "adapter" if stack else None
    if stack_adapter is not None and not stack_adapter.is_dir():
        raise ComparisonError(f"{stack_adapter}: the DDPO run has no final adapter to rerank with")
    out = None
    if out_dir is not None or requests is not None:
        out = _output_folder(out_dir)
    manifest_dir = None if out is None else out / MANIFEST_DIR
    setup = load_setup(ddpo_runs[0], requests, manifest_dir)
    gold = setup.gold_fn is not None
    rows, scale, details = reranking_rows(setup, best_of, stack_adapter=stack_adapter)
    context: dict[str, Any] = {
        "command": " ".join(["backdrop", *sys.argv[1:]])
        if sys.argv and "backdrop" in sys.argv[0]
        else "see compare.json",
        "held-out requests": details["requests"],
    }
    if gold:
        ddpo_line, finals = ddpo_row(ddpo_runs, scale)
        rows.insert(2, ddpo_line)
        for name, run in offline:
            rows[3:3] = offline_rows(name, run, ddpo_line.kl_nats, scale)
        context["gains"] = (
            "over the base model's mean gold per request; SD = within-request SD of the base's gold "
            f"({scale:.3f} raw units)"
        )
    else:
        again = evaluate_again(setup, ddpo_runs, offline) if requests is not None else None
        if again is None:
            finals = final_records(ddpo_runs, gold=False)
        else:
            finals = [{"run": str(run.path), **again[run.path][-1]} for run in ddpo_runs]
        evaluated = "final epoch of each seed" if again is None else "final adapter of each seed, evaluated again"
        ddpo_line = ddpo_proxy_row(finals, scale, setup.pessimism, evaluated=evaluated)
        rows.insert(2, ddpo_line)
        for name, run in offline:
            records = evaluations(run, gold=False) if again is None else again[run.path]
            rows[3:3] = offline_proxy_rows(name, run.path, records, ddpo_line.kl_nats, scale, setup.pessimism)
        context["gains"] = (
            "over the base model's mean proxy (reward model) per request; SD = within-request SD of the base's proxy "
            f"({scale:.3f} raw units); pessimistic = ensemble mean - {setup.pessimism:g} std"
        )
    context["matched KL"] = (
        f"offline runs at the evaluation closest to DDPO's mean final KL ({ddpo_line.kl_nats:.2f} nats)"
    )
    context["requests"] = setup.source
    context["ranked by"] = (
        "gold gain (SD), held-out gold"
        if gold
        else f"{RANKED_BY_PROXY}: pessimistic gain (SD); best-of-n rows by their held-out member gain (best-of-n "
        "picked by the reward model it is scored with is optimistic by construction)"
    )
    if requests is not None:
        for path, line in trained_on([*ddpo_runs, *(run for _, run in offline)], manifest_dir).items():
            context[f"run {path}"] = line
    if out is None:
        out = _output_folder(None)
    markdown = format_markdown(rows, context, gold=gold)
    (out / "compare.md").write_text(markdown, encoding="utf-8")
    payload = {
        "rows": [dataclasses.asdict(r) for r in rows],
        "ranked_by": RANKED_BY_GOLD if gold else RANKED_BY_PROXY,
        "ranking": ranking(rows, gold),
        "ddpo_runs": finals,
        "context": context,
        "details": details,
        "argv": sys.argv,
        "out_dir": str(out),
    }
    (out / "compare.json").write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    return payload


def _output_folder(out_dir: str | Path | None) -> Path:
    if out_dir is None:
        return new_run_dir("runs", "policy_compare")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out
