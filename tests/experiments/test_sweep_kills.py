"""A sweep SIGKILLed at seeded random points and resumed each time finishes with the uninterrupted sweep's trials."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import optuna

from experiments.sweep.study import STUDY_NAME, create_sweep, open_storage, run_sweep
from tests.experiments.test_sweep import base_config, make_space, quadratic  # noqa: F401 (the fixture)
from tests.subprocess_kills import ROOT, child_env, kill_repeatedly

TRIALS = 12
SCRIPT = """
import sys
from pathlib import Path

sys.path.insert(0, str(Path(sys.argv[1])))
from experiments.sweep.study import create_sweep, open_sweep, run_sweep
from experiments.sweep.targets import register_target
from tests.experiments.test_sweep import base_config, make_space
import test_sweep_target

register_target("quadratic", "test_sweep_target:QUADRATIC")
root = Path(sys.argv[2])
existing = sorted(p.parent for p in (root / "runs").rglob("sweep.json")) if (root / "runs").is_dir() else []
if existing:
    sweep = open_sweep(existing[0])
else:
    sweep = create_sweep(make_space(trials=TRIALS, sampler="tpe"), base_config(test_sweep_target, root))
print("ready", flush=True)
run_sweep(sweep, progress=False)
""".replace("TRIALS", str(TRIALS))


def finished(study: optuna.Study) -> list[tuple[dict, float]]:
    return [(t.params, t.value) for t in study.trials if t.state.name == "COMPLETE"]


def test_a_sweep_killed_at_random_points_resumes_to_the_uninterrupted_trials(
    quadratic: ModuleType,  # noqa: F811
    tmp_path: Path,
) -> None:
    straight_sweep = create_sweep(make_space(trials=TRIALS, sampler="tpe"), base_config(quadratic, tmp_path / "a"))
    started = time.perf_counter()
    assert run_sweep(straight_sweep, progress=False) == TRIALS
    duration = time.perf_counter() - started
    straight = finished(optuna.load_study(study_name=STUDY_NAME, storage=open_storage(straight_sweep.paths)))

    command = [sys.executable, "-c", SCRIPT, str(Path(__file__).parent), str(tmp_path / "b")]
    # three kills at seeded random points, then a resume to the end
    kills = kill_repeatedly(lambda: command, times=3, window=duration, seed=3, ready_line=True)
    result = subprocess.run(command, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert kills >= 1

    (directory,) = [p for p in (tmp_path / "b" / "runs").rglob("sweep.json")]
    resumed_sweep = open_storage(type(straight_sweep.paths)(directory.parent))
    assert finished(optuna.load_study(study_name=STUDY_NAME, storage=resumed_sweep)) == straight
