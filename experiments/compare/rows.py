"""The comparison table's rows and the statistics they are built from (``experiments.compare.methods`` builds the
table; ``experiments.compare.proxy`` the rows of a comparison without gold).

Gains are per request over the base model's samples of the same noise; intervals are 95 %: a t-interval over seeds
for DDPO, a normal interval over requests elsewhere.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from scipy import stats

from offline_data.errors import BackdropError

Z_95 = 1.959964
RANKED_BY_GOLD = "gold"
RANKED_BY_PROXY = "reward model estimate, no gold"


class ComparisonError(BackdropError):
    """The runs cannot be compared (missing evaluations, different evaluation settings)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class MethodRow:
    """One line of the comparison table."""

    method: str
    kl_nats: float
    """KL to the base, nats per sample (an upper bound for best-of-n)."""
    gold_gain: float | None = None
    """Mean gold gain over the base, raw gold units (None without gold)."""
    gold_ci: tuple[float, float] | None = None
    """95 % interval of the raw gain (over seeds for DDPO, over requests otherwise)."""
    gold_gain_sd: float | None = None
    """The gain in within-request SDs of the base."""
    proxy_gain_sd: float | None
    """Proxy (reward model) gain in within-request SDs of the base's proxy, where measured."""
    improved: float | None = None
    """Share of requests whose gold rose (gold only)."""
    note: str
    """Which runs / step, how the interval was made."""
    proxy_gain: float | None = None
    """Mean proxy gain over the base, raw reward units (no-gold table)."""
    proxy_ci: tuple[float, float] | None = None
    """95 % interval of the raw proxy gain, made like ``gold_ci`` (no-gold table)."""
    pessimistic_gain_sd: float | None = None
    """Gain of the pessimistic proxy (mean - k std) in within-request SDs of the base's proxy (no-gold table)."""
    held_out_gain_sd: float | None = None
    """Best-of-n rows: the pessimistic gain scored by a held-out ensemble member (:func:`held_out_member_gain`),
    in the same SDs; None elsewhere, or without ensemble members."""

    def rank_value(self, gold: bool) -> float | None:
        """What ranks the row: its gold gain (SD); without gold its held-out-member gain when it has one, else its
        pessimistic gain (SD)."""
        if gold:
            return self.gold_gain_sd
        return self.held_out_gain_sd if self.held_out_gain_sd is not None else self.pessimistic_gain_sd


def t_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high) of a 95 % Student-t interval of the mean of ``values`` (n >= 2)."""
    count = len(values)
    mean = sum(values) / count
    if count < 2:
        return mean, float("nan"), float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (count - 1))
    half = float(stats.t.ppf(0.975, count - 1)) * sd / math.sqrt(count)
    return mean, mean - half, mean + half


def normal_interval(per_request: Any) -> tuple[float, tuple[float, float]]:
    """Mean of per-request gains ``[R]`` (float64 tensor) and its 95 % normal interval over requests."""
    gain = float(per_request.mean())
    half = Z_95 * float(per_request.std() / math.sqrt(per_request.numel()))
    return gain, (gain - half, gain + half)


def evaluations(run: Any, key: str = "eval/kl_nats", *, gold: bool = True) -> list[dict[str, Any]]:
    """The evaluation records of a run (those with KL and gold, or with KL and the proxy gain when ``gold`` is
    false)."""
    needed = "gold/gain" if gold else "eval/proxy_gain"
    return [r for r in run.metrics if key in r and needed in r]


def final_records(runs: Sequence[Any], *, gold: bool = True) -> list[dict[str, Any]]:
    """Each DDPO run's final evaluation record, with the run's path under ``run``."""
    finals = []
    for run in runs:
        records = evaluations(run, gold=gold)
        if not records:
            what = "with gold" if gold else "with the proxy gain"
            raise ComparisonError(f"{run.path}: no evaluation {what} in metrics.jsonl (eval_every = 0?)")
        finals.append({"run": str(run.path), "step": records[-1]["step"], **records[-1]})
    return finals


def ddpo_name(count: int) -> str:
    """The DDPO row's label: how many seeds it averages."""
    return f"DDPO ({count} seed{'s' if count > 1 else ''})"


def matched_records(records: Sequence[dict[str, Any]], target_kl: float) -> list[tuple[str, dict[str, Any], str]]:
    """(label, record, note) of the evaluation closest to ``target_kl`` and of the last one (when it differs)."""
    matched = min(records, key=lambda r: abs(r["eval/kl_nats"] - target_kl))
    picked = []
    for label, record in (("matched KL", matched), ("final", records[-1])):
        if label == "final" and record is matched:
            continue
        final_kl = (
            "" if label == "final" or matched is records[-1] else f"; final KL {records[-1]['eval/kl_nats']:.1f}"
        )
        picked.append((label, record, final_kl))
    return picked


@dataclasses.dataclass(frozen=True, eq=False)
class ComparisonSetup:
    """What every row is scored with: the first DDPO run's config, base model, reward model and held-out requests."""

    config: Any
    policy: Any
    reward_fn: Any
    gold_fn: Any
    """The studio world's gold, or None (catalogue runs, or ``--requests``)."""
    requests: list
    source: str
    """Where the requests come from (for the output)."""
    pessimism: float
    """k of the pessimistic proxy (the first run's evaluation k)."""
