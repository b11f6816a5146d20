"""The built-in sweep targets: ``policy train`` and ``reward train`` run in-process, and the shipped spaces fit.

The policy sweep uses the shipped tiny studio base with 2-step sampling, 2 requests x 2 samples per epoch and one
held-out product, against the small reward model of tests/policy/test_trainer_end_to_end.py.
"""

# ruff: noqa: F811  (test arguments named after the imported fixture)
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import optuna

from experiments.config import load_config
from experiments.sweep.space import PrunerConfig, check_space, load_space
from experiments.sweep.study import STUDY_NAME, create_sweep, open_storage, open_sweep, run_sweep
from experiments.sweep.targets import BUILTIN_TARGETS, available_targets, load_target
from experiments.sweep.trial import read_trial_record, trial_dir

# The end-to-end policy test's small world and reward model (module-scoped), and its torch-threads guard (trials
# call setup_runtime, which sets the thread count for the rest of the session).
from tests.policy.test_trainer_end_to_end import world  # noqa: F401 (fixture)

CONFIGS = Path(__file__).resolve().parents[2] / "experiments" / "configs"

TINY_POLICY = [
    "run.threads=1", "run.tensorboard=false", "requests.split_fractions=[0.6, 0.2, 0.2]", "requests.eval_products=1",
    "eval.seeds_per_request=2", "trainer.epochs=2", "trainer.eval_every=1", "trainer.cpu_budget_minutes=5.0",
    "trainer.requests_per_epoch=2", "trainer.samples_per_request=2", "trainer.optim.samples_per_step=4",
    "trainer.sampler.num_steps=2", "trainer.sampler.batch_size=4", "trainer.overlap_scoring=false",
]  # fmt: skip


def test_builtin_targets_are_registered_and_the_shipped_spaces_fit_the_shipped_configs() -> None:
    assert set(BUILTIN_TARGETS) == {"policy train", "reward train"}
    assert set(available_targets()) >= set(BUILTIN_TARGETS)
    for space_file, config_file in (
        ("policy_train_space.toml", "studio_ddpo.toml"),
        ("reward_train_space.toml", "reward.toml"),
    ):
        space = load_space(CONFIGS / space_file)
        target = load_target(space.target)
        assert target.name == space.target
        base = load_config(target.config_class, CONFIGS / config_file)
        check_space(space, base, source=space_file)  # every param is a real key and its bounds are accepted
    policy_space = load_space(CONFIGS / "policy_train_space.toml")
    # The objective and the budget are metrics the policy trainer's evaluation really logs.
    assert (policy_space.objective, policy_space.budget.metric) == ("gold/engagement", "eval/kl_nats")


def test_reward_target_config_takes_the_logs_folder(tmp_path: Path) -> None:
    target = load_target("reward train")
    config = load_config(target.config_class, CONFIGS / "reward.toml", [f"data.logs={tmp_path}"])
    assert config.data.logs == tmp_path and config.data.split_by == "product"
    assert config.reward.train.epochs == 30  # the rest is the command's config, unchanged


def policy_base_config(world: dict[str, Path], tmp_path: Path) -> object:
    target = load_target("policy train")
    overrides = [*TINY_POLICY, f"reward.model_dir={world['reward']}", f"world.config={world['world']}",
                 f"run.output_dir={tmp_path}"]  # fmt: skip
    return load_config(target.config_class, CONFIGS / "studio_ddpo.toml", overrides)


def test_policy_sweep_runs_two_trials_in_process_and_resumes_from_its_study(
    world: dict[str, Path], tmp_path: Path
) -> None:
    space = dataclasses.replace(
        load_space(CONFIGS / "policy_train_space.toml"), trials=2, pruner=PrunerConfig(type="none")
    )
    sweep = create_sweep(space, policy_base_config(world, tmp_path))
    assert run_sweep(sweep, trials=1, progress=False) == 1
    first = read_trial_record(trial_dir(sweep.paths.dir, 0))

    # A new session (as `backdrop sweep --resume DIR` opens it) continues the stored study: one more trial.
    resumed = open_sweep(sweep.paths.dir)
    assert run_sweep(resumed, progress=False) == 1
    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(sweep.paths))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert read_trial_record(trial_dir(sweep.paths.dir, 0)) == first  # the finished trial was not rerun

    for trial in study.trials:
        record = read_trial_record(trial_dir(sweep.paths.dir, trial.number))
        final = record["final_metrics"]
        assert final["eval/preservation_max_abs_diff"] == 0.0
        assert 0.0 <= final["gold/engagement"] <= 1.0 and final["eval/kl_nats"] > 0.0
        logged = [json.loads(line) for line in (trial_dir(sweep.paths.dir, trial.number) / "metrics.jsonl").open()]
        evaluations = [r for r in logged if "gold/engagement" in r]
        assert [r["step"] for r in evaluations] == [0, 1, 2]
        assert evaluations[0]["eval/kl_nats"] == 0.0  # the adapter starts at zero: the base itself
        # The objective is the best gold over the evaluations within the KL budget (epoch 0, at KL 0, always is).
        budget = space.budget.max
        within = [r["gold/engagement"] for r in evaluations if r["eval/kl_nats"] <= budget]
        assert record["feasible"] and trial.value == max(within)
        assert record["params"]["policy.lora.rank"] in (4, 8, 16)
        config = (trial_dir(sweep.paths.dir, trial.number) / "config.toml").read_text()
        assert f"coef = {record['params']['trainer.kl.coef']!r}" in config


def test_reward_target_trains_on_split_logs(world: dict[str, Path]) -> None:
    target = load_target("reward train")
    overrides = [f"data.logs={world['splits']}", "run.tensorboard=false", "run.threads=1", "reward.train.epochs=2",
                 "reward.train.patience=0", "reward.ensemble.members=1", "reward.train.batch_impressions=1024",
                 "reward.train.batch_pairs=256"]  # fmt: skip
    config = load_config(target.config_class, CONFIGS / "reward.toml", overrides)
    logged: list[tuple[int, dict]] = []
    final = target.run(config, lambda metrics, step: logged.append((step, dict(metrics))))
    assert [step for step, _ in logged] == [0, 1]
    assert all(math.isfinite(m["member0/val/loss"]) for _, m in logged)
    assert 0.5 < final["test/pairwise_accuracy"] <= 1.0 and 0.5 < final["test/click_auc"] <= 1.0
