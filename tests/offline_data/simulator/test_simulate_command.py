"""``backdrop simulate``: default config file equals the defaults, runs, refuses reuse (exit 73), names bad keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.cli import main
from experiments.config import load_config
from offline_data.simulator import SimulatorConfig

REPO = Path(__file__).resolve().parents[3]
SMALL = [
    "--set", "world.products=6", "--set", "world.variants_per_product=2", "--set", "logging.requests=100",
    "--set", "annotators.pairs=40", "--no-progress",
]  # fmt: skip


def test_default_config_file_is_the_built_in_default() -> None:
    assert load_config(SimulatorConfig, REPO / "experiments/configs/studio_world.toml") == SimulatorConfig()


def test_simulate_writes_a_world_and_prints_its_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "world"
    assert main(["simulate", "--out", str(out), *SMALL, "--set", "seed=5"]) == 0
    printed = capsys.readouterr().out
    assert "CTR per slot" in printed and "click AUC ceiling" in printed and str(out / "contact_sheet.png") in printed
    for name in ("assets.parquet", "impressions.parquet", "dwell.parquet", "preferences.parquet", "summary.json"):
        assert (out / name).is_file()
    resolved = load_config(SimulatorConfig, out / "config.toml")
    assert resolved.seed == 5 and resolved.world.products == 6 and resolved.logging.requests == 100

    assert main(["simulate", "--out", str(out), *SMALL]) == 73
    assert "output folder is not empty" in capsys.readouterr().err
    assert main(["simulate", "--out", str(out), *SMALL, "--overwrite"]) == 0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("world.prodcts=3", "unknown key 'world.prodcts' (did you mean 'products'?)"),
        ("users.examination=[0.9, 0.5, 0.3, 0.2]", "examination[0]"),
        ("logging.slots=3", "give one examination probability per slot"),
        ("logging.placement=random", "expects one of 'shuffle', 'ranked'"),
        ("users.segment_shares={warm=0.5, hipster=0.5}", "segment_shares keys must be among"),
    ],
)
def test_bad_settings_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, message: str
) -> None:
    assert main(["simulate", "--out", str(tmp_path / "x"), "--set", override]) == 2
    assert message in capsys.readouterr().err
