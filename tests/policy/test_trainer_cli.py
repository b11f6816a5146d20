"""``backdrop policy train | offline | compare``: configs load, bad invocations are messages with exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.cli import main
from experiments.config import load_config
from experiments.policy_runs.offline import PolicyOfflineCommandConfig
from experiments.policy_runs.train import PolicyTrainCommandConfig, truncate_metrics

CONFIGS = Path(__file__).resolve().parents[2] / "experiments" / "configs"


def test_shipped_configs_load_and_agree_on_the_evaluation() -> None:
    ddpo = load_config(PolicyTrainCommandConfig, CONFIGS / "studio_ddpo.toml")
    assert ddpo.trainer.samples_per_epoch % ddpo.trainer.optim.samples_per_step == 0
    assert str(ddpo.policy.model.pretrained) == "studio_tiny"
    for name in ("studio_dpo.toml", "studio_rwr.toml"):
        offline = load_config(PolicyOfflineCommandConfig, CONFIGS / name)
        # Offline runs are compared with DDPO runs on the same held-out requests with the same sampler.
        assert offline.sampler == ddpo.trainer.sampler, name
        assert offline.eval == ddpo.eval and offline.requests == ddpo.requests, name
    assert load_config(PolicyOfflineCommandConfig, CONFIGS / "studio_rwr.toml").offline.method == "rwr"


def test_train_without_a_reward_model_says_how_to_make_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["policy", "train", "--set", f"run.output_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "no reward model: pass --reward MODEL_DIR" in err and "backdrop reward train" in err
    assert not (tmp_path / "policy_train").exists()  # refused before a run directory was made


def test_train_with_a_missing_reward_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["policy", "train", "--reward", str(tmp_path / "nope"), "--set", f"run.output_dir={tmp_path}"])
    assert code == 2
    assert f"reward model folder {tmp_path / 'nope'} not found" in capsys.readouterr().err
    assert not (tmp_path / "policy_train").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["policy", "train", "--resume", "{tmp}"], "not a policy train run (no config.toml)"),
        (["policy", "train", "--resume", "{tmp}", "--set", "trainer.epochs=3"], "drop --config and --set"),
        (["policy", "train", "--set", "trainer.optim.samples_per_step=7"], "must divide the samples per epoch"),
        (["policy", "train", "--set", "trainer.kl.coef=-1"], "coef must be >= 0"),
        (["policy", "offline", "--method", "rwr", "--set", "run.output_dir={tmp}"], "no logs: pass --data DIR"),
        (["policy", "compare", "--ddpo", "{tmp}/missing", "--out", "{tmp}/cmp"], "missing"),
    ],
)
def test_bad_invocations_are_messages(argv: list[str], message: str, tmp_path: Path, capsys) -> None:
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and "Traceback" not in err


def test_resume_drops_metrics_logged_after_the_checkpoint(tmp_path: Path) -> None:
    lines = [f'{{"step": {s}, "reward/mean": {s / 10}}}' for s in (0, 1, 2, 3, 4)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert truncate_metrics(tmp_path, 2) == 2
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == lines[:3]
