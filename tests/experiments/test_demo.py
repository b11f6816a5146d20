"""backdrop demo: the --quick loop end to end through the CLI, the headline arithmetic, config and output errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from experiments.cli import main
from experiments.config import ConfigError, load_config
from experiments.demo.config import DemoConfig
from experiments.demo.report import changed_product_pixels, ddpo_gain, export_line, headline_lines
from experiments.demo.run import STAGES, DemoOutputError, demo_directory
from experiments.demo.stages import DemoPaths

CONFIGS = Path(__file__).resolve().parents[2] / "experiments" / "configs"


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path]:
    """One ``backdrop demo --quick`` run (one torch thread, as every test), shared by the end-to-end checks."""
    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("demo") / "quick"
    try:
        status = main(["demo", "--quick", "--no-progress", "--out", str(out), "--set", "run.threads=1"])
    finally:
        torch.set_num_threads(threads)
    return status, out


def test_quick_demo_exits_cleanly_and_writes_every_stage(quick: tuple[int, Path]) -> None:
    status, out = quick
    assert status == 0
    results = json.loads((out / "demo.json").read_text())
    assert [t["stage"] for t in results["timings"]] == [name for name, _ in STAGES]
    assert all(t["wall_s"] > 0 and t["cpu_s"] >= 0 for t in results["timings"])
    paths = DemoPaths(out)
    for path in (paths.world / "truth", paths.splits / "test", paths.reward_model / "reward.json",
                 paths.audit / "audit.html", paths.policy / "adapter", paths.compare / "compare.json",
                 paths.contact_sheet):  # fmt: skip
        assert path.exists(), path
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {f"demo/wall_s/{name}" for name, _ in STAGES} <= {k for m in metrics for k in m}


def test_quick_demo_exports_a_bundle_that_reloads(quick: tuple[int, Path]) -> None:
    _, out = quick
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert {g["name"] for g in manifest["gates"]} == {"preservation", "kl", "lift", "logged_noninferiority", "audit"}
    assert manifest["metrics"]["preservation_changed_pixels"] == 0
    assert manifest["reload"] and all(r["identical"] for r in manifest["reload"].values())
    results = json.loads((out / "demo.json").read_text())
    failed = [g["name"] for g in manifest["gates"] if not g["passed"]]
    assert results["export"]["status"] == ("overridden" if failed else "exported")
    if failed:  # the configured reason and the gates it overrode are in the manifest, and the demo names them
        assert manifest["override"] == {"reason": results["export"]["override"], "failed_gates": failed}
        assert results["export"]["failed"] == failed
    assert (out / "bundle" / "MODEL_CARD.md").is_file()


def test_report_holds_the_headline_numbers_and_links(quick: tuple[int, Path]) -> None:
    _, out = quick
    results = json.loads((out / "demo.json").read_text())
    report = (out / "report.html").read_text()
    final = results["ddpo"]["final"]
    gain, low, high = ddpo_gain(final)
    assert f"{gain:+.2f} within-request SD, 95% CI [{low:+.2f}, {high:+.2f}]" in report
    assert f"KL per sample (nats) to the base: {final['eval/kl_nats']:.1f}" in report
    assert f"best-of-{results['best_of']} (base)" in report
    assert "product preservation: 0 product pixels changed" in report
    assert changed_product_pixels(results) == 0
    assert f"pairwise accuracy {results['audit']['headline']['pairwise_accuracy']:.3f}" in report
    for link in ('href="audit/audit.html"', 'href="bundle/MODEL_CARD.md"', 'href="bundle/manifest.json"'):
        assert link in report
    assert report.count("data:image/png;base64,") >= 3  # before/after, curves, over-optimisation


def test_the_last_printed_lines_are_the_report_and_the_headline(quick: tuple[int, Path], capsys) -> None:
    # the module fixture ran before capsys started; reprint from the saved results the way run_demo ends
    _, out = quick
    results = json.loads((out / "demo.json").read_text())
    lines = headline_lines(results, DemoPaths(out))
    assert lines[0].startswith("gold lift of DDPO over the base: ")
    assert lines[-1].startswith("time: ")
    assert any(line.startswith("product preservation: 0 ") for line in lines)


def test_ddpo_gain_is_the_paired_gain_over_the_base_sd_with_a_normal_interval() -> None:
    final = {"gold/gain": 0.1, "gold/gain_se": 0.05, "gold/base_within_sd": 0.5}
    gain, low, high = ddpo_gain(final)
    assert gain == pytest.approx(0.2)
    assert low == pytest.approx(0.2 - 1.959964 * 0.1)
    assert high == pytest.approx(0.2 + 1.959964 * 0.1)


def test_changed_product_pixels_adds_every_checked_source() -> None:
    results = {
        "ddpo": {"training_changed_product_pixels": 3},
        "export": {"status": "refused"},  # nothing sampled by a refused export's bundle
        "report": {"changed_product_pixels": 2},
    }
    assert changed_product_pixels(results) == 5
    results["export"]["changed_product_pixels"] = 7
    assert changed_product_pixels(results) == 12


@pytest.mark.parametrize(
    ("export", "expected"),
    [
        ({"status": "exported", "bundle": "b"}, "export: every gate passed; bundle b/manifest.json"),
        (
            {"status": "overridden", "failed": ["ope", "audit"], "override": "why", "bundle": "b"},
            "export: GATES FAILED (ope, audit); EXPORTED WITH OVERRIDE: 'why'; bundle b/manifest.json",
        ),
        ({"status": "refused"}, "export: REFUSED by the gates, nothing exported"),
        ({"status": "reload_failed", "message": "b/adapter: differs\nmore"}, "export: RELOAD CHECK FAILED"),
    ],
)
def test_export_line_says_what_happened(export: dict, expected: str) -> None:
    assert export_line(export).startswith(expected)


def test_shipped_demo_configs_load_and_share_the_held_out_split() -> None:
    demo = load_config(DemoConfig, CONFIGS / "demo.toml")
    quick = load_config(DemoConfig, CONFIGS / "demo_quick.toml")
    assert demo.run.threads == 2 and demo.trainer.cpu_budget_minutes is not None
    assert demo.demo.export_override and quick.demo.export_override
    assert quick.world.world.products < demo.world.world.products
    assert math.isclose(sum(demo.requests.split_fractions), 1.0)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("demo.best_of=1", "best_of must be >= 2, got 1"),
        ("demo.export_override=' '", "export_override must be unset or a reason"),
        ("demo.contact_sheet_requests=0", "contact_sheet_requests must be >= 1, got 0"),
        ("requests.split_fractions=[0.5, 0.5, 0.5]", "split_fractions"),
        ("demo.best_off=4", "unknown key"),
    ],
)
def test_bad_demo_config_values_are_named(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(DemoConfig, CONFIGS / "demo_quick.toml", [override])


def test_out_folder_must_be_new_or_empty(tmp_path: Path, capsys) -> None:
    config = load_config(DemoConfig, CONFIGS / "demo_quick.toml")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x.txt").write_text("x")
    with pytest.raises(DemoOutputError, match="already exists and is not an empty folder"):
        demo_directory(config, tmp_path / "used")
    assert main(["demo", "--quick", "--out", str(tmp_path / "used")]) == DemoOutputError.exit_code
    assert "give a new --out" in capsys.readouterr().err
    empty = demo_directory(config, tmp_path / "new")
    assert empty.is_dir() and not any(empty.iterdir())
