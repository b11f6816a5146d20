"""``backdrop ope``: estimate a candidate's engagement from logged impressions before spending A/B traffic.

Reads the impressions log and a candidate's per-impression scores (experiments/ope/inputs.py), runs the
configured estimators with bootstrap intervals and overlap checks (experiments/ope/evaluate.py), prints a table and the
A/B sample size for the estimated lift, and writes ``ope.json`` into a fresh run directory (and ``--out``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from experiments.commands.arguments import add_config_arguments, load_root_config
from experiments.tracking import start_run

DESCRIPTION = (
    "Off-policy evaluation: estimate a candidate policy's engagement (clicks per request and per impression) "
    "from logs of the current serving policy, with DM, IPS, self-normalised IPS and doubly robust estimators, "
    "request-level bootstrap intervals and weight diagnostics; refuses when the logs' overlap with the "
    "candidate is too poor. Also prints the A/B sample size needed to confirm the estimated lift."
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("ope", help="estimate a candidate's engagement off-policy", description=DESCRIPTION)
    parser.add_argument(
        "--logs",
        required=True,
        metavar="DIR",
        help="folder holding the impressions table (impressions.parquet|.csv|.jsonl or impressions/ part files), "
        "or the table itself; validated strictly against the impressions schema (propensity needed for "
        "IPS/SNIPS/DR)",
    )
    parser.add_argument(
        "--candidate-scores",
        required=True,
        metavar="FILE",
        help="parquet/csv/jsonl with one row per impression: event_id, candidate_propensity and optionally "
        "dm_prediction, dm_logged, unsupported_mass",
    )
    parser.add_argument(
        "--baseline-scores",
        metavar="FILE",
        help="scores of a second candidate (same columns) to compare against instead of the logging policy",
    )
    parser.add_argument(
        "--name", default="candidate", help="label of the candidate in the report (default: candidate)"
    )
    parser.add_argument("--out", metavar="FILE", help="also write the JSON report to FILE")
    parser.add_argument("--per-slot", action="store_true", help="also print the per-slot estimates")
    add_config_arguments(parser, config_class="experiments.ope.evaluate:OPECommandConfig", example="run.seed=1")
    parser.set_defaults(handler=run_ope)


def run_ope(args: argparse.Namespace) -> int:
    # heavy (pyarrow): imported when the command runs, so `backdrop --help` stays fast
    from experiments.ope.evaluate import MissingPropensityError, OPECommandConfig, evaluate, to_json_safe
    from experiments.ope.inputs import load_candidate_scores, load_impressions
    from experiments.ope.summary import format_report, plan_ab_test

    config = load_root_config(OPECommandConfig, args)
    with start_run(config.run, config, command="ope") as run:
        # The validated impressions, their rejects and summary.json stay in the run directory as provenance.
        inputs = load_impressions(args.logs, run.dir / "validated")
        candidate = load_candidate_scores(inputs, args.candidate_scores, name=args.name)
        baseline = None
        if args.baseline_scores:
            baseline = load_candidate_scores(inputs, args.baseline_scores, name="baseline")
        try:
            report = evaluate(inputs.log, candidate, config.ope, baseline=baseline, seed=config.run.seed)
        except MissingPropensityError as exc:
            hint = "rerun with --set 'ope.estimators=[\"dm\"]' --set ope.primary=dm for the direct method alone"
            raise MissingPropensityError(f"{exc}\n{hint}") from None
        plan = plan_ab_test(report, inputs.log, estimator=config.ope.primary, design=config.abtest)
        payload = to_json_safe(
            {
                "inputs": {
                    "impressions": str(inputs.path),
                    "candidate_scores": str(args.candidate_scores),
                    "baseline_scores": str(args.baseline_scores) if args.baseline_scores else None,
                },
                "report": report.to_dict(),
                "ab_test": plan,
            }
        )
        path = run.write_json("ope.json", payload)
        metrics = {
            f"ope/{r.estimator.replace(':', '_')}/{r.level}": r.value
            for r in report.results
            if r.level in ("request", "impression")
        }
        run.log_metrics(metrics, step=0)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(format_report(report, plan, per_slot=args.per_slot))
    print(f"\nwrote {path}" + (f" and {args.out}" if args.out else ""))
    return 0
