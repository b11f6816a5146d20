"""End to end on a small studio world: reward model -> `backdrop policy train` (killed, resumed) -> `policy offline`
(dpo, rwr) -> `policy compare`, all through the CLI, with the shipped studio base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from experiments.cli import main
from experiments.config import dump_toml
from policy import trainer as trainer_module

SMALL = [
    "--set", "run.threads=1", "--set", "run.tensorboard=false",
    "--set", "requests.split_fractions=[0.6, 0.2, 0.2]", "--set", "requests.eval_products=2",
    "--set", "eval.seeds_per_request=2",
]  # fmt: skip
SAMPLER = ["num_steps=4", "guidance_scale=3.0", "batch_size=8"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from reward.pipeline import fit_reward_model
    from tests.reward.conftest import build_splits, fast_config, small_world

    root = tmp_path_factory.mktemp("e2e")
    config = small_world()
    splits = build_splits(root, config)
    scorer, _ = fit_reward_model(
        fast_config(), splits / "train", splits / "validation", seed=0, device=torch.device("cpu"), progress=False
    )
    scorer.save(root / "reward")
    (root / "world.toml").write_text(dump_toml(config))
    return {"root": root, "splits": splits, "reward": root / "reward", "world": root / "world.toml"}


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def only_run(parent: Path) -> Path:
    (run,) = [p for p in parent.iterdir() if p.is_dir()]
    return run


@pytest.mark.slow
def test_train_kill_resume_offline_and_compare(world: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    root = world["root"]
    train = [
        "policy", "train", "--reward", str(world["reward"]), "--no-progress", *SMALL,
        "--set", f"world.config={world['world']}", "--set", "trainer.epochs=3", "--set", "trainer.eval_every=2",
        "--set", "trainer.checkpoint_every=1", "--set", "trainer.requests_per_epoch=2",
        "--set", "trainer.samples_per_request=2", "--set", "trainer.optim.samples_per_step=4",
        *[a for s in SAMPLER for a in ("--set", f"trainer.sampler.{s}")],
    ]  # fmt: skip
    assert main([*train, "--set", f"run.output_dir={root / 'straight'}"]) == 0
    straight = only_run(root / "straight" / "policy_train")

    real_log = trainer_module.DDPOTrainer._log

    def killed_in_epoch_two(self, record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt  # the CLI exits 130; checkpoint 1 is the last one written
        real_log(self, record)

    monkeypatch.setattr(trainer_module.DDPOTrainer, "_log", killed_in_epoch_two)
    assert main([*train, "--set", f"run.output_dir={root / 'killed'}"]) == 130
    monkeypatch.setattr(trainer_module.DDPOTrainer, "_log", real_log)
    killed = only_run(root / "killed" / "policy_train")
    assert main(["policy", "train", "--resume", str(killed), "--reward", str(world["reward"]), "--no-progress"]) == 0

    def comparable(run: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "time" and not k.startswith("time/")} for r in metrics(run)]

    assert comparable(killed) == comparable(straight)
    final = json.loads((straight / "final_eval.json").read_text())
    assert final["epoch"] == 3 and final["eval/preservation_max_abs_diff"] == 0.0 and final["eval/kl_nats"] > 0
    assert (straight / "overoptimisation.png").is_file() and (straight / "adapter").is_dir()

    offline = [
        "--data", str(world["splits"] / "train"), "--reward", str(world["reward"]), *SMALL,
        "--set", f"world.config={world['world']}", "--set", "offline.steps=4", "--set", "offline.batch_size=4",
        "--set", "offline.eval_every=2", *[a for s in SAMPLER for a in ("--set", f"sampler.{s}")],
    ]  # fmt: skip
    for method in ("dpo", "rwr"):
        out = root / method
        assert main(["policy", "offline", "--method", method, *offline, "--set", f"run.output_dir={out}"]) == 0
        run = only_run(out / f"policy_offline_{method}")
        records = metrics(run)
        assert [r["step"] for r in records if "gold/gain" in r] == [0, 2, 4]
        assert records[0][f"{method}/data/" + ("used" if method == "dpo" else "images")] > 0

    compare_out = root / "compare"
    code = main([
        "policy", "compare", "--ddpo", str(straight), "--dpo", str(only_run(root / "dpo" / "policy_offline_dpo")),
        "--rwr", str(only_run(root / "rwr" / "policy_offline_rwr")), "--best-of", "3", "--out", str(compare_out),
    ])  # fmt: skip
    assert code == 0
    table = (compare_out / "compare.md").read_text()
    for method in ("base (adapter off)", "best-of-3 (base)", "DDPO (1 seed)", "DPO (matched KL", "RWR (matched KL",
                   "best-of-3 on DDPO"):  # fmt: skip
        assert f"| {method}" in table, table
    payload = json.loads((compare_out / "compare.json").read_text())
    assert payload["rows"][1]["kl_nats"] == pytest.approx(1.0986 - 2 / 3, abs=1e-3)  # log 3 - 2/3
