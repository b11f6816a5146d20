"""The truth-table benchmark's bookkeeping (``experiments/bench/truth.py``, ``recipes.py``): picks, intervals, runs."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from experiments.bench import recipes, truth


def test_best_of_n_averages_the_picks_of_disjoint_groups() -> None:
    # one member, one request, 4 samples: groups {0, 1} and {2, 3}; the reward picks 1 and 2
    rewards = np.array([[[0.1, 0.9, 0.8, 0.2]]])
    gold = np.array([[10.0, 20.0, 30.0, 40.0]])
    assert truth.best_of_gold(rewards, gold, 2).tolist() == [25.0]
    assert truth.best_of_gold(rewards, gold, 4).tolist() == [20.0]
    assert truth.best_of_gold(rewards, gold, 1).tolist() == [25.0]  # the mean of every sample
    # the ensemble mean picks: member 2 outvotes member 1 on the second group
    two = np.array([[[0.0, 1.0, 0.0, 1.0]], [[0.0, 0.5, 3.0, 0.0]]])
    assert truth.best_of_gold(two, gold, 2).tolist() == [(20.0 + 30.0) / 2]
    with pytest.raises(ValueError, match="best-of-3 needs a multiple of 3 samples per request, got 4"):
        truth.best_of_gold(rewards, gold, 3)


def test_intervals_over_seeds_use_student_t() -> None:
    low, high = truth.interval_over_seeds([1.0, 2.0, 3.0])
    assert (low + high) / 2 == pytest.approx(2.0)
    assert (high - low) / 2 == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-6)  # t(0.975, 2) x sd / sqrt(n)
    assert truth.interval_over_seeds([1.0]) is None


def _args(tmp_path: Path, **changes) -> argparse.Namespace:
    args = truth.parse(["--reward", str(tmp_path / "model"), "--runs-dir", str(tmp_path / "runs"), "--budget", "2"])
    return argparse.Namespace(**{**vars(args), **changes})


def test_a_new_run_gets_the_recipe_and_a_partial_one_is_resumed(tmp_path: Path) -> None:
    args = _args(tmp_path)
    recipe = recipes.RECIPES["grpo16_shared"]
    folder = recipes.seed_folder(args.runs_dir, recipe.name, 1)
    command = recipes.train_command(recipe, 1, folder, args)
    sets = [command[i + 1] for i, word in enumerate(command) if word == "--set"]
    assert "run.seed=1" in sets and "trainer.cpu_budget_minutes=2.0" in sets and f"run.output_dir={folder}" in sets
    assert sets[-3:] == list(recipe.overrides)
    assert recipes.run_of(folder) == (None, "missing")
    run = folder / "policy_train" / "20261206-000000"
    run.mkdir(parents=True)
    (run / "config.toml").write_text("", encoding="utf-8")
    assert recipes.run_of(folder) == (run, "partial")
    assert recipes.train_command(recipe, 1, folder, args)[-2:] == ["--resume", str(run)]
    (run / "diverged.json").write_text("{}", encoding="utf-8")
    assert recipes.run_of(folder) == (run, "diverged")
    control = recipes.train_command(recipes.OVEROPTIMISE, 0, tmp_path / "c", args)
    assert "trainer.cpu_budget_minutes=8.0" in control and "trainer.kl.coef=0" in control


def test_the_readme_table_is_rewritten_between_its_markers_only(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{truth.README_BEGIN}\nold table\n{truth.README_END}\n\nafter\n", encoding="utf-8")
    truth.rewrite_readme(readme, "| new |", "python -m experiments.bench.truth --seeds 0")
    text = readme.read_text(encoding="utf-8")
    assert "old table" not in text and "| new |" in text and text.startswith("# title") and text.endswith("after\n")
    assert "`python -m experiments.bench.truth --seeds 0`" in text
    (tmp_path / "plain.md").write_text("no markers\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="no truth-table markers"):
        truth.rewrite_readme(tmp_path / "plain.md", "| new |", "cmd")


def test_summary_states_each_target_and_by_how_much_it_was_missed(tmp_path: Path) -> None:
    args = _args(tmp_path)
    rows = [
        {"seed": s, "gold_gain_sd": g, "kl_nats": k, "best_of": {"4": g + 0.8}, "headline_difference_sd": d,
         "epochs": 100, "samples": 6400, "cpu_minutes": 15.0}
        for s, g, k, d in ((0, 0.5, 30.0, -0.2), (1, 0.6, 40.0, -0.1), (2, 0.4, 20.0, -0.3))
    ]  # fmt: skip
    summary = truth.summarise(recipes.RECIPES["ddpo"], rows, args)
    assert summary["gold_gain_sd"]["mean"] == pytest.approx(0.5) and summary["kl_nats"]["mean"] == pytest.approx(30.0)
    beat, reach = summary["targets"].values()
    assert not beat["met"] and beat["lower_bound"] < -0.2
    assert not reach["met"] and reach["gold_short_by_sd"] == pytest.approx(0.5)
    assert reach["kl_over_by_nats"] == pytest.approx(10.0)
    table = truth.markdown({
        "settings": {"budget": 15.0, "serve": 4, "against": 16},
        "comparison": {"recipes": {"ddpo": summary},
                       "base": {"1": {}, "16": {"gold_gain_sd": 1.4, "ci_over_requests": [1.2, 1.6],
                                              "kl_bound_nats": 1.83}}},
    })  # fmt: skip
    assert "| DDPO (README recipe) | 3 | 100 (6,400) | 30.0 | +0.50 [" in table
    assert "| base, best-of-16 reranking | - | no training | <= 1.83 | +1.40 [+1.20, +1.60] (over requests)" in table
