"""The stages of ``backdrop demo``, each through the functions its own CLI command calls.

=========== =========================================== ==================================================
stage       calls (the command it stands for)            writes
=========== =========================================== ==================================================
simulate    ``simulation.simulate`` (backdrop simulate)  world/ (logs, images, truth/, contact sheet)
validate    ``validation.validate_logs`` (data validate) world/validated/
split       ``splits.split_logs`` (data split)           splits/{train,validation,test}/
reward      ``reward_fit.fit_from_logs`` +               reward/ (a ``backdrop reward train`` run; model/)
            ``save_reward_model`` (reward train)
audit       ``reward.audit.audit_reward_model`` +        audit/audit.html, audit.json, plots/
            ``reward.report.write_audit`` (reward audit)
ddpo        ``policy_train.train_policy`` (policy train) policy/ (a ``backdrop policy train`` run)
compare     ``compare.methods.compare_methods``          compare/compare.md, compare.json
            (policy compare)
export      ``export.export_candidate`` (export)         bundle/ (manifest.json, MODEL_CARD.md, adapter/)
=========== =========================================== ==================================================

Every stage returns a JSON-able dict of what the report and the headline need; :mod:`experiments.demo.run` runs them
in order, and :mod:`experiments.demo.report` turns their dicts into report.html.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch

from experiments.compare.methods import compare_methods
from experiments.config import dump_toml
from experiments.demo.config import DemoConfig
from experiments.export.bundle import export_candidate
from experiments.export.gates import GateRefusedError
from experiments.export.reload import ReproducibilityError
from experiments.policy_runs.train import (
    PolicyTrainCommandConfig,
    PolicyTrainRunConfig,
    RewardSourceConfig,
    WorldSourceConfig,
    build_policy,
    describe_evaluation,
    load_reward_model,
    load_world,
    train_policy,
)
from experiments.reward_fit import command_config_class, fit_from_logs, record_asset_root, save_reward_model
from experiments.runtime import setup_runtime
from experiments.studio.requests import StudioGold, studio_requests
from experiments.studio.truth import StudioTruth, prompt_family
from experiments.tracking import start_run
from offline_data.errors import InputUnreadableError
from offline_data.io import find_table
from offline_data.simulator.simulation import simulate
from offline_data.splits import SplitConfig, split_logs
from offline_data.validation import ValidationConfig, validate_logs
from policy.contact_sheet import draw_contact_sheet
from reward.audit import audit_reward_model, audit_summary
from reward.config import RewardDataConfig
from reward.report import write_audit
from reward.scorer import RewardScorer
from rollout.preservation import verify_preservation
from rollout.sampler import sample_trajectories

logger = logging.getLogger("backdrop")

TABLES = ("assets", "impressions", "dwell", "preferences")


@dataclasses.dataclass(frozen=True)
class DemoPaths:
    """Where each stage writes, inside the demo's run directory."""

    root: Path

    @property
    def world(self) -> Path:
        """``backdrop simulate`` output (with the evaluation-only truth/ sidecar)."""
        return self.root / "world"

    @property
    def world_config(self) -> Path:
        """The simulated world's resolved TOML; DDPO reads requests and gold from it."""
        return self.world / "config.toml"

    @property
    def validated(self) -> Path:
        return self.world / "validated"

    @property
    def splits(self) -> Path:
        return self.root / "splits"

    @property
    def reward(self) -> Path:
        """The ``backdrop reward train`` run."""
        return self.root / "reward"

    @property
    def reward_model(self) -> Path:
        return self.reward / "model"

    @property
    def audit(self) -> Path:
        return self.root / "audit"

    @property
    def policy(self) -> Path:
        """The ``backdrop policy train`` run."""
        return self.root / "policy"

    @property
    def compare(self) -> Path:
        return self.root / "compare"

    @property
    def bundle(self) -> Path:
        return self.root / "bundle"

    @property
    def contact_sheet(self) -> Path:
        return self.root / "before_after.png"


# ----------------------------------------------------------------------------------------------------------
# Data


def simulate_stage(config: DemoConfig, paths: DemoPaths, *, progress: bool) -> dict[str, Any]:
    """Simulate the demo world into ``world/`` and write its resolved config next to it."""
    summary = simulate(config.world, paths.world, progress=progress)
    paths.world_config.write_text(dump_toml(config.world), encoding="utf-8")
    print(summary.format_table())
    return {
        "products": summary.products,
        "variants": summary.variants,
        "rows": dict(summary.rows),
        "ceilings": dict(summary.ceilings),
    }


def validate_stage(paths: DemoPaths) -> dict[str, Any]:
    """Validate the four tables at the boundary; rejected rows go to rejects files (none expected here)."""
    sources = {}
    for table in TABLES:
        source = find_table(paths.world, table)
        if source is None:
            raise InputUnreadableError(f"{paths.world}: the simulation wrote no {table} table")
        sources[table] = source
    summary = validate_logs(sources, paths.validated, ValidationConfig())
    print(summary.render_table())
    return {"read": summary.read, "rejected": summary.rejected, "accepted": summary.read - summary.rejected}


def split_stage(config: DemoConfig, paths: DemoPaths) -> dict[str, Any]:
    """Split the validated logs by product with the held-out split DDPO evaluates on (``[requests]``)."""
    split = SplitConfig(by="product", fractions=config.requests.split_fractions, seed=config.requests.split_seed)
    report = split_logs(paths.validated, paths.splits, split)
    record_asset_root(paths.validated, paths.splits)
    print(report.render())
    return {"products": dict(report.groups), "rows": report.rows, "dropped": report.dropped}


# ----------------------------------------------------------------------------------------------------------
# Reward model


def reward_command_config(config: DemoConfig, paths: DemoPaths) -> Any:
    """The ``backdrop reward train`` root config of the demo's reward stage."""
    root = command_config_class()
    run_type = {f.name: f.type for f in dataclasses.fields(root)}["run"]
    run = run_type(
        **{f.name: getattr(config.run, f.name) for f in dataclasses.fields(config.run)} | {"name": "reward"}
    )
    data = RewardDataConfig(
        world_config=str(paths.world_config),
        split_by="product",
        split_fractions=config.requests.split_fractions,
        split_seed=config.requests.split_seed,
    )
    return root(run=run, data=data, reward=config.reward)


def reward_stage(config: DemoConfig, paths: DemoPaths, *, progress: bool) -> dict[str, Any]:
    """Train the reward ensemble on the train split (early-stopped on validation), test it, save it."""
    reward_config = reward_command_config(config, paths)
    with start_run(reward_config.run, reward_config, command="reward train (demo)", directory=paths.reward) as run:
        fit = fit_from_logs(reward_config, paths.splits, run.dir, log_metrics=run.log_metrics, progress=progress)
        model_dir = save_reward_model(fit, reward_config, run)
    test = {k: float(v) for k, v in fit.test_metrics.items() if isinstance(v, float)}
    members = fit.metrics["members"]
    print(
        f"{len(members)} member(s), best epochs {[m['best_epoch'] for m in members]}; test: "
        + ", ".join(f"{k} {test[k]:.4f}" for k in ("click_auc", "click_ece", "pairwise_accuracy") if k in test)
    )
    return {"model": str(model_dir), "test": test, "seconds": float(fit.metrics["seconds"])}


def audit_stage(config: DemoConfig, paths: DemoPaths) -> dict[str, Any]:
    """Audit the reward model on the test split with the world's truth (ceilings, probes, tamper)."""
    scorer = RewardScorer.load(paths.reward_model)
    result = audit_reward_model(
        scorer,
        paths.splits / "test",
        truth=StudioTruth(paths.world),
        prompt_family=prompt_family,
        config=config.audit,
    )
    written = write_audit(result, paths.audit)
    print("\n".join(audit_summary(result.metrics)))
    metrics = result.metrics
    return {
        "html": str(written["html"]),
        "json": str(written["json"]),
        "headline": metrics["headline"],
        "flags": [f"{flag['id']}: {flag['message']}" for flag in result.flags],
    }


# ----------------------------------------------------------------------------------------------------------
# Policy


def policy_command_config(config: DemoConfig, paths: DemoPaths) -> Any:
    """The ``backdrop policy train`` root config of the demo's DDPO stage."""
    run = PolicyTrainRunConfig(
        **{f.name: getattr(config.run, f.name) for f in dataclasses.fields(config.run)} | {"name": "policy"}
    )
    return PolicyTrainCommandConfig(
        run=run,
        policy=config.policy,
        world=WorldSourceConfig(config=paths.world_config),
        requests=config.requests,
        reward=RewardSourceConfig(model_dir=paths.reward_model),
        trainer=config.trainer,
        eval=config.eval,
    )


def ddpo_stage(config: DemoConfig, paths: DemoPaths, *, progress: bool) -> dict[str, Any]:
    """DDPO with KL to the base from the shipped tiny base, against the demo's reward model."""
    policy_config = policy_command_config(config, paths)
    extra = {"reward_model": str(paths.reward_model)}
    with start_run(policy_config.run, policy_config, command="policy train (demo)", extra=extra,
                   directory=paths.policy) as run:  # fmt: skip
        history = train_policy(policy_config, reward_dir=paths.reward_model, run=run, progress=progress)
    evaluations = [h for h in history if "gold/gain_sd" in h]
    if not evaluations:
        raise ValueError("the DDPO stage evaluated nothing: [trainer] eval_every must be > 0 for the demo")
    final = evaluations[-1]
    print(describe_evaluation(final))
    trained = [h for h in history if "preservation/differing_pixels" in h]
    return {
        "run": str(paths.policy),
        "epochs": len(trained),
        "final": {k: float(v) for k, v in final.items()},
        "training_changed_product_pixels": int(sum(h["preservation/differing_pixels"] for h in trained)),
    }


def compare_stage(config: DemoConfig, paths: DemoPaths) -> dict[str, Any]:
    """Best-of-n reranking of the base (and of the DDPO policy) vs DDPO on the same held-out requests."""
    payload = compare_methods(
        [paths.policy], best_of=config.demo.best_of, stack=config.demo.stack_best_of, out_dir=paths.compare
    )
    print((paths.compare / "compare.md").read_text(encoding="utf-8"))
    return {"rows": payload["rows"], "details": payload["details"], "markdown": str(paths.compare / "compare.md")}


# ----------------------------------------------------------------------------------------------------------
# Export


def export_stage(config: DemoConfig, paths: DemoPaths, *, progress: bool) -> dict[str, Any]:
    """Gate and export the DDPO candidate; a refusal or a failed reload is reported, never hidden.

    Returns:
        ``status``: "exported" (every gate passed), "overridden" (gates failed, ``[demo] export_override``
        applied), "refused" (gates failed, no override: nothing written) or "reload_failed" (the bundle was
        written but did not reproduce its reference images), with the gates and the bundle's paths.
    """
    export = config.export
    if export.audit_report is None and (paths.audit / "audit.json").is_file():
        export = dataclasses.replace(export, audit_report=paths.audit / "audit.json")  # audited once, above
    override = config.demo.export_override
    try:
        result = export_candidate(
            paths.policy, paths.bundle, export, override=override, reward_dir=paths.reward_model, progress=progress
        )
    except GateRefusedError as exc:
        print(str(exc))
        return {"status": "refused", "message": str(exc), "gates": [], "bundle": None}
    except ReproducibilityError as exc:
        print(f"EXPORT RELOAD CHECK FAILED: {exc}")
        return {
            "status": "reload_failed",
            "message": str(exc),
            "gates": _gates_from_manifest(paths.bundle / "manifest.json"),
            "bundle": str(paths.bundle),
            "override": override,
        }
    for gate in result.gates:
        print(f"gate {gate.name:13s} {'passed' if gate.passed else 'FAILED'}  {gate.message}")
    reload = result.manifest.get("reload", {})
    return {
        "status": "overridden" if result.failed else "exported",
        "message": "",
        "gates": [{"name": g.name, "passed": g.passed, "message": g.message} for g in result.gates],
        "failed": [g.name for g in result.failed],
        "override": override if result.failed else None,
        "bundle": str(result.bundle),
        "reload": {k: bool(v.get("identical")) for k, v in reload.items()},
        "changed_product_pixels": int(result.manifest["metrics"]["preservation_changed_pixels"] or 0),
    }


def _gates_from_manifest(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    gates = json.loads(path.read_text(encoding="utf-8")).get("gates", [])
    return [{"name": g["name"], "passed": g["passed"], "message": g["message"]} for g in gates]


# ----------------------------------------------------------------------------------------------------------
# Before / after


def before_after_stage(config: DemoConfig, paths: DemoPaths) -> dict[str, Any]:
    """product | base | DDPO for the first held-out requests (same seed per row), gold and proxy in captions.

    Also checks every shown image's product pixels against the request (``verify_preservation``).
    """

    policy_config = policy_command_config(config, paths)
    runtime = setup_runtime(policy_config.run)
    world = load_world(policy_config.world)
    requests = list(studio_requests(config.requests, world).evaluation[: config.demo.contact_sheet_requests])
    seeds = [config.eval.first_seed + i * config.eval.seeds_per_request for i in range(len(requests))]
    policy = build_policy(config.policy, runtime)
    policy.load_adapter(paths.policy / "adapter")
    sampler = config.trainer.sampler
    with torch.no_grad():
        after = sample_trajectories(policy, requests, seeds, sampler).images
        with policy.as_base():
            before = sample_trajectories(policy, requests, seeds, sampler).images
    gold, reward_fn = StudioGold(world), load_reward_model(paths.reward_model, world=world)
    scores = {
        name: (gold(images, requests).tolist(), reward_fn(images, requests).reward.tolist())
        for name, images in (("base", before), ("ddpo", after))
    }
    changed = 0
    rows = []
    for i, request in enumerate(requests):
        for images in (before, after):
            check = verify_preservation(request.product_rgb, images[i], request.product_mask)
            changed += int(check.differing_pixels)
        product = torch.where(
            request.product_mask[None], request.product_rgb, torch.full_like(request.product_rgb, 255)
        )
        rows.append(
            (
                f"{request.product_id} {request.segment}\n{request.prompt[:28]}",
                [(product.permute(1, 2, 0).numpy(), "product")]
                + [
                    (
                        images[i].permute(1, 2, 0).numpy(),
                        f"{name} g{scores[name][0][i]:+.2f} r{scores[name][1][i]:+.2f}",
                    )
                    for name, images in (("base", before), ("ddpo", after))
                ],
            )
        )
    draw_contact_sheet(rows, paths.contact_sheet, scale=2)
    gains = [a - b for a, b in zip(scores["ddpo"][0], scores["base"][0])]
    return {
        "image": str(paths.contact_sheet),
        "requests": len(requests),
        "gold_base": scores["base"][0],
        "gold_ddpo": scores["ddpo"][0],
        "improved": sum(g > 0 for g in gains),
        "changed_product_pixels": changed,
    }
