"""The fine-tuning recipes the truth table compares, and how it trains them (``experiments.bench.truth``).

Each recipe is the README's DDPO recipe (``experiments/configs/studio_ddpo.toml``) plus ``--set`` overrides, so
each is one ``backdrop policy train`` away. The benchmark trains a (recipe, seed) into
``<runs-dir>/<recipe>/seed<S>/policy_train/<timestamp>`` as a child process (one thread each, ``--jobs`` at a
time); a finished run is reused and an interrupted one resumed, so the benchmark can be rerun after a kill.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "studio_ddpo.toml"
"""Every recipe starts from the README's DDPO recipe and changes only what its overrides say."""


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One way of fine-tuning the policy from the reward model: ``studio_ddpo.toml`` plus ``--set`` overrides."""

    name: str
    label: str
    overrides: tuple[str, ...]
    note: str
    approximate: bool = False
    """Changes the objective's estimate (e.g. fewer trained steps): a separate named row, never the headline."""


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("ddpo", "DDPO (README recipe)", (), "16 requests x 4 samples, advantages z-scored per request, kl .01"),
        Recipe(
            "grpo16",
            "DDPO, groups of 16",
            ("trainer.requests_per_epoch=4", "trainer.samples_per_request=16"),
            "group-relative advantages over 16 samples per request (Flow-GRPO/DanceGRPO group size), same 64/epoch",
        ),
        Recipe(
            "grpo16_shared",
            "DDPO, groups of 16 sharing x_T",
            ("trainer.requests_per_epoch=4", "trainer.samples_per_request=16", "trainer.shared_start_noise=true"),
            "as grpo16, each request's 16 samples start from one x_T (DanceGRPO): x_T's share of the reward "
            "variance leaves the advantages",
        ),
        Recipe(
            "grpo16_shared_kl05",
            "DDPO, groups of 16 sharing x_T, kl 0.05",
            (
                "trainer.requests_per_epoch=4",
                "trainer.samples_per_request=16",
                "trainer.shared_start_noise=true",
                "trainer.kl.coef=0.05",
            ),
            "as grpo16_shared with 5x the KL penalty, aiming at <= 20 nats",
        ),
        Recipe(
            "raft16",
            "best-of-16 distillation (on-policy RAFT)",
            (
                "trainer.requests_per_epoch=8",
                "trainer.samples_per_request=16",
                "trainer.optim.samples_per_step=128",
                "trainer.advantages.kind=best_of_n",
                "trainer.advantages.top_k=1",
            ),
            "8 requests x 16 samples; maximum likelihood of each request's best (only its rows are trained), kl 0.01",
        ),
        Recipe(
            "raft16_top2",
            "best-of-16 distillation, top 2",
            (
                "trainer.requests_per_epoch=8",
                "trainer.samples_per_request=16",
                "trainer.optim.samples_per_step=128",
                "trainer.advantages.kind=best_of_n",
                "trainer.advantages.top_k=2",
            ),
            "as raft16 with the two best of each 16 trained on",
        ),
        Recipe(
            "ddpo_lcb",
            "DDPO on the ensemble's lower bound",
            ("trainer.reward.pessimism=1.0",),
            "reward = ensemble mean - 1 x ensemble std (Coste et al. 2024)",
        ),
        Recipe(
            "ddpo_half_steps",
            "DDPO, half the steps trained (approximate)",
            ("trainer.optim.timestep_fraction=0.5",),
            "5 of 10 denoising steps trained per sample: more epochs per CPU-minute, a noisier gradient",
            approximate=True,
        ),
    )
}

OVEROPTIMISE = Recipe(
    "overoptimise",
    "control: DDPO without a KL leash at lr 1e-2",
    ("trainer.kl.coef=0", "trainer.optim.learning_rate=1e-2", "trainer.optim.max_grad_norm=0"),
    "trained without a leash until gold falls; the gate must refuse it (--gate only). With the studio reward model"
    " its proxy fell too (-2.6 SD): it tests the refusal of a broken candidate, not of a proxy-hacking one",
)


def seed_folder(root: Path, recipe: str, seed: int) -> Path:
    return root / recipe / f"seed{seed}"


def run_of(folder: Path) -> tuple[Path | None, str]:
    """The recipe/seed folder's run and its state: "done", "diverged", "partial" or "missing"."""
    runs = sorted((folder / "policy_train").glob("*/config.toml"))
    if not runs:
        return None, "missing"
    run = runs[-1].parent
    if (run / "diverged.json").is_file():
        return run, "diverged"
    if (run / "final_eval.json").is_file() and (run / "adapter").is_dir():
        return run, "done"
    return run, "partial"


def budget_of(recipe: Recipe, args: argparse.Namespace) -> float:
    return args.overoptimise_budget if recipe is OVEROPTIMISE else args.budget


def train_command(recipe: Recipe, seed: int, folder: Path, args: argparse.Namespace) -> list[str]:
    run, state = run_of(folder)
    base = [sys.executable, "-m", "experiments", "policy", "train", "--no-progress"]
    if state == "partial":
        return [*base, "--resume", str(run)]
    sets = [
        f"run.seed={seed}",
        f"run.output_dir={folder}",
        f"run.threads={args.threads}",
        "run.tensorboard=false",
        f"trainer.cpu_budget_minutes={budget_of(recipe, args)}",
        f"trainer.eval_every={args.eval_every}",
        f"trainer.checkpoint_every={args.eval_every}",
        *recipe.overrides,
    ]
    return [*base, "--config", str(CONFIG), "--reward", str(args.reward), *(a for s in sets for a in ("--set", s))]


def train_all(jobs: Sequence[tuple[Recipe, int]], args: argparse.Namespace) -> None:
    """Run every missing or partial (recipe, seed), ``--jobs`` at a time; stop with the first failure's log."""
    todo = []
    for recipe, seed in jobs:
        folder = seed_folder(args.runs_dir, recipe.name, seed)
        state = run_of(folder)[1]
        if state in ("done", "diverged"):
            print(f"  {recipe.name} seed {seed}: {state}, reused")
        else:
            todo.append((recipe, seed, folder))
    running: list[tuple[subprocess.Popen, str, Path]] = []
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    while todo or running:
        while todo and len(running) < args.jobs:
            recipe, seed, folder = todo.pop(0)
            folder.mkdir(parents=True, exist_ok=True)
            command = train_command(recipe, seed, folder, args)
            log = folder / "train.log"
            print(f"  {recipe.name} seed {seed}: training ({budget_of(recipe, args):g} CPU-min) -> {log}", flush=True)
            with log.open("a", encoding="utf-8") as handle:
                handle.write(" ".join(command) + "\n")
                handle.flush()
                process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
            running.append((process, f"{recipe.name} seed {seed}", log))
        time.sleep(2.0)
        for entry in list(running):
            process, name, log = entry
            if process.poll() is None:
                continue
            running.remove(entry)
            if process.returncode != 0:
                tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
                for other, _, _ in running:
                    other.terminate()
                raise SystemExit(f"{name} failed (exit {process.returncode}; {log}): " + " | ".join(tail))
            print(f"  {name}: done", flush=True)
