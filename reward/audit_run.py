"""The policy run an audit reads: proxy and gold gains and the KL per evaluation, from its metrics.jsonl."""

from __future__ import annotations

import json
import math
from pathlib import Path

from offline_data.errors import InputUnreadableError


def read_overoptimisation(run_dir: Path) -> dict:
    """Proxy and gold gains and KL per evaluation, and the training reward and KL per epoch, of a policy run.

    Reads ``<run_dir>/metrics.jsonl`` (``backdrop policy train``): evaluation records carry ``eval/kl_nats``,
    ``eval/proxy_gain_sd``, the pessimistic proxy's ``eval/pessimistic_gain_sd`` (runs since it was reported)
    and, with gold, ``gold/gain_sd``, ``gold/gain_se`` and ``gold/base_within_sd``.

    Raises:
        InputUnreadableError: no metrics.jsonl, a line that is not JSON, or no evaluation record.
    """
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise InputUnreadableError(f"{path}: not found; --run takes a 'backdrop policy train' run directory")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise InputUnreadableError(f"{path}: line {number} is not JSON: {exc}") from None
    evaluations = [r for r in records if "eval/kl_nats" in r and "eval/proxy_gain_sd" in r]
    if not evaluations:
        raise InputUnreadableError(f"{path}: no evaluation record (eval/kl_nats, eval/proxy_gain_sd)")
    points = []
    for record in evaluations:
        point = {
            "epoch": int(record["step"]),
            "kl_nats": record["eval/kl_nats"],
            "proxy_gain_sd": record["eval/proxy_gain_sd"],
        }
        if record.get("eval/pessimistic_gain_sd") is not None:
            point["pessimistic_gain_sd"] = record["eval/pessimistic_gain_sd"]
        if record.get("gold/gain_sd") is not None:
            sd = record.get("gold/base_within_sd") or math.nan
            point |= {
                "gold_gain_sd": record["gold/gain_sd"],
                "gold_gain_se_sd": record.get("gold/gain_se", math.nan) / sd,
            }
        points.append(point)
    training = [r for r in records if "reward/mean" in r]
    return {
        "run": str(run_dir),
        "evaluations": points,
        "training": {
            "epoch": [int(r["step"]) for r in training],
            "reward_mean": [r["reward/mean"] for r in training],
            "kl": [r.get("policy/kl", math.nan) for r in training],
        },
    }
