"""Every command's run folder and flags: command.json and error.json, --version, --no-progress, help examples.

Run folders (``experiments.run_record``): the resolved flags in command.json, a failed command's error.json, and
``policy train --resume`` reading ``--reward`` back from the run. CLI consistency: every long command takes
``--no-progress``; every ``--set`` example in ``--help`` is a key of that command's own config.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
from pathlib import Path

import pytest

from experiments.cli import build_parser, main
from experiments.config import load_config
from experiments.policy_runs.train import PolicyTrainCommandConfig

LONG_COMMANDS = {
    "simulate", "data validate", "reward train", "rollout sample", "policy train", "policy offline",
    "policy pretrain", "export", "sweep", "demo",
}  # fmt: skip


def leaf_parsers() -> dict[str, argparse.ArgumentParser]:
    """``"policy train"`` -> its parser, for every runnable command."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers and parser.get_default("handler") is not None:
            found[prefix.strip()] = parser
        for action in subparsers:
            for name, child in action.choices.items():
                walk(child, f"{prefix} {name}")

    walk(build_parser(), "")
    return found


def resolve(reference: str) -> type:
    module, _, attribute = reference.partition(":")
    target = getattr(importlib.import_module(module), attribute)
    return target if isinstance(target, type) else target()  # a function returning the class


def test_every_set_example_is_a_key_of_its_commands_config() -> None:
    checked = []
    for name, parser in leaf_parsers().items():
        example = parser.get_default("set_example")
        if example is None:
            continue
        assert f"--set {example}" in " ".join(parser.format_help().split()), name
        load_config(resolve(parser.get_default("config_class")), None, [example])  # raises ConfigError if not
        checked.append(name)
    assert {"policy train", "simulate", "reward train", "reward audit", "policy offline", "sweep"} <= set(checked)


def test_long_commands_take_no_progress() -> None:
    parsers = leaf_parsers()
    missing = [name for name in sorted(LONG_COMMANDS) if "--no-progress" not in parsers[name]._option_string_actions]
    assert missing == []


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("backdrop ")


def test_a_run_folder_records_flags_and_its_error(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "impressions.csv").write_text("event_id,image_id\ne1,i1\n")  # missing required columns
    out = tmp_path / "validated"
    assert main(["data", "validate", str(logs), "--out", str(out), "--max-problems", "3"]) == 2
    assert {"config.toml", "environment.json", "command.json", "log.txt", "metrics.jsonl", "error.json"} <= {
        p.name for p in out.iterdir()
    }
    record = json.loads((out / "command.json").read_text())
    assert record["command"] == "data validate" and record["flags"]["max_problems"] == 3
    assert record["flags"]["out"] == str(out) and record["flags"]["overwrite"] is False
    error = json.loads((out / "error.json").read_text())
    assert error["exit_code"] == 2 and error["error"] == "InputUnreadableError"
    assert "missing required columns" in error["message"]
    assert (out / "metrics.jsonl").read_text() == ""  # nothing was read: the failure came first
    # The folder now holds a run: a second run into it is refused, --overwrite empties it first.
    assert main(["data", "validate", str(logs), "--out", str(out)]) == 73
    assert main(["data", "validate", str(logs), "--out", str(out), "--overwrite"]) == 2
    assert json.loads((out / "command.json").read_text())["flags"]["overwrite"] is True


def test_policy_resume_reads_reward_from_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from experiments.config import dump_toml

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(dump_toml(PolicyTrainCommandConfig()))
    recorded = tmp_path / "reward_model_of_the_run"
    (run / "command.json").write_text(json.dumps({"command": "policy train", "flags": {"reward": str(recorded)}}))
    assert main(["policy", "train", "--resume", str(run), "--no-progress"]) == 2
    # The run's own --reward was looked up (it no longer exists), not "pass --reward"; the failure is recorded.
    assert f"reward model folder {recorded} not found" in capsys.readouterr().err
    assert json.loads((run / "error.json").read_text())["exit_code"] == 2
    assert json.loads((run / "command.json").read_text())["flags"]["reward"] == str(recorded)  # kept
    assert main(["policy", "train", "--resume", str(run), "--no-progress"]) == 2  # again: the earlier error moves
    assert json.loads((run / "error.before-resume.json").read_text())["exit_code"] == 2


def test_a_failed_training_run_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import experiments.policy_runs.train

    # The reward model is not what this test is about: a stand-in that scores every image 0.
    monkeypatch.setattr(experiments.policy_runs.train, "load_reward_model", lambda *a, **k: lambda images, requests: 0)
    (tmp_path / "reward").mkdir()
    argv = [
        "policy",
        "train",
        "--reward",
        str(tmp_path / "reward"),
        "--no-progress",
        "--set",
        f"run.output_dir={tmp_path}",
    ]
    assert main([*argv, "--set", 'policy.lora.target_modules=["nope"]']) == 2
    (run,) = (tmp_path / "policy_train").iterdir()
    error = json.loads((run / "error.json").read_text())
    assert (error["command"], error["exit_code"], error["error"]) == ("policy train", 2, "LoraTargetError")
    assert error["message"].startswith("policy.lora.target_modules=['nope']: no such module in the UNet")
    assert json.loads((run / "command.json").read_text())["flags"]["reward"] == str(tmp_path / "reward")


def test_simulate_and_validate_write_run_folders(tmp_path: Path) -> None:
    small = ["--set", "world.products=6", "--set", "world.variants_per_product=2", "--set", "logging.requests=40"]
    assert (
        main(["simulate", "--out", str(tmp_path / "world"), *small, "--set", "annotators.pairs=10", "--no-progress"])
        == 0
    )
    assert main(["data", "validate", str(tmp_path / "world"), "--out", str(tmp_path / "v"), "--no-progress"]) == 0
    for folder, command in ((tmp_path / "world", "simulate"), (tmp_path / "v", "data validate")):
        assert json.loads((folder / "command.json").read_text())["command"] == command
        assert json.loads((folder / "environment.json").read_text())["command"] == command
        assert (folder / "log.txt").is_file() and (folder / "config.toml").is_file()
        assert not (folder / "error.json").exists()
    (counts,) = [json.loads(line) for line in (tmp_path / "v" / "metrics.jsonl").read_text().splitlines()]
    assert counts["impressions/read"] == counts["impressions/accepted"] + counts["impressions/rejected"] > 0


def test_no_progress_silences_the_libraries_bars(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers.utils.logging as hf_logging

    from experiments.cli import silence_library_progress

    monkeypatch.setenv("TQDM_DISABLE", "0")  # restored after the test, like the bars below
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")
    hf_logging.enable_progress_bar()
    try:
        silence_library_progress()
        assert not hf_logging.is_progress_bar_enabled()
        assert os.environ["TQDM_DISABLE"] == "1"  # libraries imported later read it (tqdm's envwrap)
    finally:
        hf_logging.enable_progress_bar()


def test_commands_writing_an_out_folder_take_overwrite() -> None:
    # export and demo refuse a used folder without an --overwrite (a bundle or a demo is never replaced in
    # place); ope's --out is a file beside its run folder.
    exempt = {"export", "demo", "ope"}
    parsers = leaf_parsers()
    with_out = {name for name, parser in parsers.items() if "--out" in parser._option_string_actions}
    assert {"data validate", "data split", "simulate", "rollout sample", "reward eval", "reward audit"} <= with_out
    missing = sorted(n for n in with_out - exempt if "--overwrite" not in parsers[n]._option_string_actions)
    assert missing == []
