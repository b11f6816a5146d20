"""The README runs as written: its tour is parsed out of README.md and executed command by command, so the
README cannot drift from the code.

Small settings come from the user-visible smoke profile (``BACKDROP_CONFIG_OVERRIDES=experiments/configs/
smoke.toml``), set in the environment exactly as a user would set it; the commands themselves are not edited.
``<ts>`` is the one placeholder: it becomes the newest run folder of that name, as a reader would fill it in.
The reader's own files the tour names (``shoe.png``) are supplied. After the tour, the complete ``backdrop``
commands of "Bringing your own" run as written too, with the user's file they name supplied (``embeddings.parquet``:
a vector per image of the smoke world); the other snippets name what only a user has (an SD-inpainting checkpoint
folder), so their ``--set`` keys are checked against the command's config. Links of the README must name files of
the repository.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SMOKE = ROOT / "experiments" / "configs" / "smoke.toml"
TIMESTAMP = "<ts>"


def readme_section(title: str) -> str:
    """The text of the README section headed ``title`` (up to the next heading of the same or a higher level)."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^(#+) {re.escape(title)}\n", text, flags=re.MULTILINE)
    assert match, f"README.md has no section '{title}'"
    level = len(match.group(1))
    rest = text[match.end() :]
    end = re.search(rf"^#{{1,{level}}} ", rest, flags=re.MULTILINE)
    return rest[: end.start()] if end else rest


def tour_commands() -> list[list[str]]:
    """The ``backdrop`` lines of the tour's bash block, split as a shell would (comments dropped)."""
    section = readme_section("A tour in commands")
    block = re.search(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    assert block, "the tour has no bash block"
    commands = [shlex.split(line, comments=True) for line in block.group(1).splitlines()]
    commands = [c for c in commands if c]
    assert commands and all(c[0] == "backdrop" for c in commands), commands
    return commands


def bring_your_own_commands() -> list[list[str]]:
    """The inline ``backdrop ...`` snippets of "Bringing your own" that are whole commands (they have options)."""
    text = " ".join(readme_section("Bringing your own").split())
    snippets = [shlex.split(code) for code in re.findall(r"`([^`]+)`", text) if code.startswith("backdrop ")]
    return [s for s in snippets if any(token.startswith("--") for token in s)]


def write_embeddings(assets: Path, path: Path, dim: int = 8) -> None:
    """A user's precomputed embeddings: one random vector per image id of ``assets``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = pq.read_table(assets, columns=["image_id"]).column("image_id").to_pylist()
    vectors = np.random.default_rng(0).normal(size=(len(ids), dim)).astype(np.float32)
    pq.write_table(pa.table({"image_id": ids, "embedding": list(vectors)}), path)


def fill_timestamps(argv: list[str], cwd: Path) -> list[str]:
    """Each ``runs/<name>/<ts>`` becomes the newest run folder under ``runs/<name>``."""
    filled = []
    for token in argv:
        if TIMESTAMP in token:
            head, _, tail = token.partition(TIMESTAMP)
            runs = sorted(p.name for p in (cwd / head).iterdir() if p.is_dir())
            assert runs, f"'{token}': no run under {head} yet"
            token = head + runs[-1] + tail
        filled.append(token)
    return filled


def write_product_photo(path: Path) -> None:
    """A reader's product photo: an RGBA cut-out (alpha = the product)."""
    from PIL import Image

    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[14:50, 18:46, :3] = (170, 60, 40)
    rgba[14:50, 18:46, 3] = 255
    Image.fromarray(rgba).save(path)


def test_the_readme_links_only_files_of_the_repository() -> None:
    text = README.read_text(encoding="utf-8")
    targets = [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+://|#|mailto:", t)]
    missing = [t for t in targets if not (README.parent / t.split("#")[0]).resolve().is_relative_to(ROOT)
               or not (README.parent / t.split("#")[0]).exists()]  # fmt: skip
    assert not missing, f"README links outside the repository or to missing files: {missing}"


def test_tour_parses_into_commands_and_names_run_folders_the_runs_use() -> None:
    commands = tour_commands()
    folders = {t.split(TIMESTAMP)[0] for c in commands for t in c if TIMESTAMP in t}
    assert folders == {"runs/reward/", "runs/policy_train/", "runs/policy_offline_dpo/"}
    from experiments.config import load_config
    from experiments.policy_runs.offline import PolicyOfflineCommandConfig
    from experiments.policy_runs.train import PolicyTrainCommandConfig

    # The folder names the README uses are the run names the shipped configs give those runs.
    configs = {
        "runs/reward/": ROOT / "experiments/configs/reward.toml",
        "runs/policy_train/": ROOT / "experiments/configs/studio_ddpo.toml",
        "runs/policy_offline_dpo/": ROOT / "experiments/configs/studio_dpo.toml",
    }
    from experiments.reward_fit import command_config_class

    classes = {"runs/reward/": command_config_class(), "runs/policy_train/": PolicyTrainCommandConfig,
               "runs/policy_offline_dpo/": PolicyOfflineCommandConfig}  # fmt: skip
    for folder, path in configs.items():
        assert f"runs/{load_config(classes[folder], path).run.name}/" == folder


def test_bring_your_own_keys_exist() -> None:
    """The ``--set`` keys of the "Bringing your own" snippets are keys of the commands they are for."""
    from experiments.config import ConfigError, load_config
    from experiments.policy_runs.train import PolicyTrainCommandConfig
    from experiments.reward_fit import command_config_class

    text = " ".join(readme_section("Bringing your own").split())
    keys = re.findall(r"--set ([a-z_.]+)=", text) + re.findall(r"`(reward\.encoder\.kind)=", text)
    assert {"policy.model.pretrained", "reward.encoder.kind", "reward.encoder.embeddings"} <= set(keys)
    for key in keys:
        cls = PolicyTrainCommandConfig if key.startswith("policy.") else command_config_class()
        try:
            load_config(cls, overrides=[f"{key}=x"])
        except ConfigError as exc:
            assert "unknown key" not in str(exc), f"README names {key}, which {cls.__name__} does not have: {exc}"


# In the default suite (~20 s on one core under the smoke profile), so the README cannot drift from the code.
def test_the_tour_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from experiments.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BACKDROP_CONFIG_OVERRIDES", str(SMOKE))
    write_product_photo(tmp_path / "shoe.png")
    for written in tour_commands():
        argv = fill_timestamps(written, tmp_path)
        code = main(argv[1:])
        output = capsys.readouterr()
        assert code == 0, f"`{shlex.join(written)}` exited {code}:\n{output.err[-3000:]}"
    assert (tmp_path / "bundles/candidate/MODEL_CARD.md").is_file()
    rollouts = sorted((tmp_path / "runs" / "rollout").iterdir())
    assert (rollouts[-1] / "contact_sheet.png").is_file()

    # The same smoke world (same config, profile and seed) that `reward train` without --data simulates.
    write_embeddings(tmp_path / "runs/world/assets.parquet", tmp_path / "embeddings.parquet")
    snippets = bring_your_own_commands()
    assert [c[:3] for c in snippets] == [["backdrop", "reward", "train"]], snippets
    for written in snippets:
        code = main(written[1:])
        output = capsys.readouterr()
        assert code == 0, f"`{shlex.join(written)}` exited {code}:\n{output.err[-3000:]}"
        assert "precomputed" in (sorted((tmp_path / "runs" / "reward").iterdir())[-1] / "config.toml").read_text()
