"""The comparison without gold: rows ranked by the reward model's held-out estimate (the module docstring of
``experiments.compare.methods`` says how), best-of-n ranked by a held-out ensemble member, and every run evaluated
again on another request table (``--requests``).
"""

from __future__ import annotations

import dataclasses as dc
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from experiments.compare.rows import (
    Z_95,
    ComparisonError,
    ComparisonSetup,
    MethodRow,
    ddpo_name,
    matched_records,
    normal_interval,
    t_interval,
)
from experiments.policy_runs.request_manifest import MANIFEST_DIR, read_manifest
from offline_data.errors import AssetError
from policy.evaluation import PolicyEvaluator, best_of_n_kl_bound, within_request_sd

logger = logging.getLogger("backdrop")


def pessimistic_gain(record: Mapping[str, Any], pessimism: float, where: Any) -> float:
    """The record's raw pessimistic gain at ``pessimism`` = k: ``eval/pessimistic_gain`` when it was evaluated with
    that k, else converted (both gains are paired means, so the gain of the ensemble std is
    (proxy gain - pessimistic gain) / k_logged, and the gain at k is proxy gain - k times it).

    Raises:
        ComparisonError: the record has no pessimistic gain, or was evaluated with k = 0 (nothing to convert).
    """
    if "eval/pessimistic_gain" not in record:
        raise ComparisonError(f"{where}: step {record.get('step')} logged no eval/pessimistic_gain; train it again")
    logged = float(record.get("eval/pessimism", pessimism))
    if logged == pessimism:
        return float(record["eval/pessimistic_gain"])
    if logged <= 0:
        raise ComparisonError(
            f"{where}: evaluated with pessimism 0, the comparison uses {pessimism:g}; set the same [eval] pessimism"
        )
    spread_gain = (record["eval/proxy_gain"] - record["eval/pessimistic_gain"]) / logged
    return float(record["eval/proxy_gain"] - pessimism * spread_gain)


def ddpo_proxy_row(
    finals: Sequence[Mapping[str, Any]], scale: float, pessimism: float, *, evaluated: str = "final epoch of each seed"
) -> MethodRow:
    """Without gold: the mean over seeds of each DDPO run's final proxy and pessimistic gains (in ``scale``, the
    base's within-request proxy SD), with a t-interval of the raw proxy gain over seeds."""
    gains = [f["eval/proxy_gain"] for f in finals]
    mean, low, high = t_interval(gains)
    pessimistic = [pessimistic_gain(f, pessimism, f["run"]) for f in finals]
    return MethodRow(
        method=ddpo_name(len(finals)),
        kl_nats=sum(f["eval/kl_nats"] for f in finals) / len(finals),
        proxy_gain=mean,
        proxy_ci=(low, high),
        proxy_gain_sd=mean / scale,
        pessimistic_gain_sd=sum(pessimistic) / len(pessimistic) / scale,
        note=f"{evaluated}; t-interval over seeds; per seed proxy gain " + ", ".join(f"{g:+.3f}" for g in gains),
    )


def offline_proxy_rows(
    name: str, where: Any, records: Sequence[dict[str, Any]], target_kl: float, scale: float, pessimism: float
) -> list[MethodRow]:
    """Without gold: an offline run's evaluations (logged, or evaluated again) at matched KL and final."""
    if not records:
        raise ComparisonError(f"{where}: no evaluation with the proxy gain in metrics.jsonl (eval_every = 0?)")
    rows = []
    for label, record, final_kl in matched_records(records, target_kl):
        gain, half = record["eval/proxy_gain"], Z_95 * record["eval/proxy_gain_se"]
        rows.append(
            MethodRow(
                method=f"{name} ({label}, step {int(record['step'])})",
                kl_nats=record["eval/kl_nats"],
                proxy_gain=gain,
                proxy_ci=(gain - half, gain + half),
                proxy_gain_sd=gain / scale,
                pessimistic_gain_sd=pessimistic_gain(record, pessimism, where) / scale,
                note=f"{where}; normal interval over requests{final_kl}",
            )
        )
    return rows


def held_out_member_gain(picks: Any, pessimism: float) -> float | None:
    """Cross-fitted value of best-of-n, raw proxy units: for each ensemble member j, per request the candidate the
    mean of the OTHER members scores highest, valued by member j - k std (k = ``pessimism``) minus the mean of
    that value over the request's n candidates; the mean over requests, averaged over j.

    Member j's own errors did not pick the candidate it scores, so the winner's curse of reranking and scoring with
    the same model is gone (what the members share is not). When every member would pick the same candidate this is
    the pessimistic gain of that pick.

    Args:
        picks: ``policy.evaluation.BestOfN`` with ``members [M, R, n]`` and ``uncertainty [R, n]``.

    Returns:
        The gain, or None without per-member scores or with fewer than two members.
    """
    if picks.members is None or picks.members.shape[0] < 2 or picks.uncertainty is None:
        return None
    members = picks.members.double()
    spread = picks.uncertainty.double()
    count = members.shape[0]
    total = members.sum(dim=0)
    gains = []
    for j in range(count):
        pick = ((total - members[j]) / (count - 1)).argmax(dim=1)  # ties: the first candidate, as the reranker
        value = members[j] - pessimism * spread
        gains.append(float((value.gather(1, pick[:, None])[:, 0] - value.mean(dim=1)).mean()))
    return sum(gains) / count


def proxy_reranking_rows(
    base: Any, stacked: Any, n: int, pessimism: float, stack_label: tuple[str, str]
) -> tuple[list[MethodRow], float, dict]:
    """Without gold: the base and best-of-n rows scored by the reward model (module docstring), gains over the
    base's mean proxy per request in within-request SDs of the base's proxy (the returned scale)."""

    scale = within_request_sd(base.proxy)
    base_mean = base.proxy.mean(dim=1).double()
    base_lower = (base.proxy - pessimism * base.uncertainty).mean(dim=1).double()

    def row(method: str, picks: Any, kl: float, note: str) -> MethodRow:
        chosen = picks.chosen[:, None]
        per_request = picks.proxy.gather(1, chosen)[:, 0].double() - base_mean
        lower = (picks.proxy - pessimism * picks.uncertainty).gather(1, chosen)[:, 0].double() - base_lower
        gain, interval = normal_interval(per_request)
        held_out = held_out_member_gain(picks, pessimism)
        if held_out is not None and picks is not base:  # valued against the base's candidates, like every gain
            held_out += float((picks.members.double() - pessimism * picks.uncertainty.double()).mean()) - float(
                base_lower.mean()
            )
        how = (
            "ranked by a held-out ensemble member (picked by the others)"
            if held_out is not None
            else "NOT held out: the reward model reports no ensemble members, so its rank is optimistic"
        )
        return MethodRow(
            method=method,
            kl_nats=kl,
            proxy_gain=gain,
            proxy_ci=interval,
            proxy_gain_sd=gain / scale,
            pessimistic_gain_sd=float(lower.mean()) / scale,
            held_out_gain_sd=None if held_out is None else held_out / scale,
            note=f"{note}; picked and scored by the same reward model: optimistic by construction; {how}",
        )

    bound = best_of_n_kl_bound(n)
    rows = [
        MethodRow(
            method="base (adapter off)", kl_nats=0.0, proxy_gain=0.0, proxy_ci=(0.0, 0.0), proxy_gain_sd=0.0,
            pessimistic_gain_sd=0.0,
            note=f"mean proxy {float(base_mean.mean()):+.3f}; within-request SD {scale:.3f} ({n} samples x "
            f"{base.proxy.shape[0]} requests)",
        ),
        row(f"best-of-{n} (base)", base, bound, "KL: upper bound log n - (n-1)/n; normal interval over requests"),
    ]  # fmt: skip
    details: dict[str, Any] = {"base_mean_proxy": float(base_mean.mean()), "within_request_sd": scale}
    if stacked is not None:
        rows.append(row(stack_label[0], stacked, float("nan"), stack_label[1]))
        details["stacked_policy_mean_proxy"] = float(stacked.proxy.mean())
    details["requests"] = base.proxy.shape[0]
    return rows, scale, details


def evaluate_again(
    setup: ComparisonSetup, ddpo_runs: Sequence[Any], offline: Sequence[tuple[str, Any]]
) -> dict[Path, list[dict[str, Any]]]:
    """``--requests``: every run's adapters evaluated on ``setup.requests`` (one evaluator: the same seeds and the
    same base samples for all), as metric records with the step of the adapter: each DDPO run's final
    ``adapter/`` (its last logged step) and each offline run's snapshots ``adapters/step-NNNNNN``.

    Raises:
        ComparisonError: a run without the adapters to evaluate.
    """
    config = setup.config
    evaluator = PolicyEvaluator(
        setup.requests, reward_fn=setup.reward_fn, gold_fn=None, sampler=config.trainer.sampler,
        config=dc.replace(config.eval, pessimism=setup.pessimism),
    )  # fmt: skip

    def evaluate(adapter: Path, step: int) -> dict[str, Any]:
        setup.policy.load_adapter(adapter)
        with torch.no_grad():
            return {"step": step, "adapter": str(adapter), **evaluator.evaluate(setup.policy)}

    records: dict[Path, list[dict[str, Any]]] = {}
    for run in ddpo_runs:
        if not (run.path / "adapter").is_dir():
            raise ComparisonError(f"{run.path / 'adapter'}: the DDPO run has no final adapter to evaluate")
        records[run.path] = [evaluate(run.path / "adapter", max((r["step"] for r in run.metrics), default=0))]
    for _, run in offline:
        snapshots = sorted((run.path / "adapters").glob("step-*"))
        if not snapshots:
            raise ComparisonError(
                f"{run.path / 'adapters'}: the offline run saved no adapter snapshot (eval_every = 0?)"
            )
        records[run.path] = [evaluate(s, int(s.name.removeprefix("step-"))) for s in snapshots]
    return records


def trained_on(runs: Sequence[Any], manifest_dir: Path) -> dict[str, str]:
    """``--requests``: per run, where its training requests came from and how many of the compared requests its own
    request manifest holds (same photo, mask and prompt), so comparing on another catalogue is said, not hidden."""

    def keys(rows: Sequence[dict]) -> set[tuple]:
        return {(r["image_sha256"], r.get("mask_sha256"), r["prompt"]) for r in rows}

    compared = keys(read_manifest(manifest_dir).rows("eval"))
    lines = {}
    for run in runs:
        table = run.config.get("catalogue.requests")
        source = f"catalogue {table}" if table else "the studio world"
        try:
            own = keys(read_manifest(run.path / MANIFEST_DIR).rows())
        except AssetError:
            lines[str(run.path)] = f"trained on {source} (no readable request manifest)"
            continue
        shared = len(compared & own)
        other = " - other requests than the ones compared" if shared < len(compared) else ""
        lines[str(run.path)] = (
            f"trained on {source}; {shared} of the {len(compared)} compared requests are in its manifest{other}"
        )
    return lines
