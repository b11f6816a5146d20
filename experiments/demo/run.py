"""``backdrop demo``: the whole loop on a demo-sized studio world, in one process, in a few minutes on a CPU.

simulate -> validate -> split -> reward -> audit -> ddpo -> compare -> export -> report, each stage through the
functions its own command calls (``experiments/demo/stages.py``). Each stage opens with a banner and closes with
its wall and CPU seconds; the timings go to ``metrics.jsonl`` (``demo/wall_s/<stage>``, ``demo/cpu_s/<stage>``)
and ``demo.json``. The last lines printed are the report's path and the headline numbers
(``experiments/demo/report.py``).

Exit status: 0, or 4 when a gate refused the export and ``[demo] export_override`` is unset, or 5 when the
exported bundle did not reproduce its reference images; the report is written in every case.
"""

from __future__ import annotations

import contextlib
import json
import logging
import resource
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from experiments.demo import stages
from experiments.demo.config import DemoConfig
from experiments.demo.report import headline_lines, write_report
from experiments.demo.stages import DemoPaths
from experiments.runtime import setup_runtime
from experiments.tracking import new_run_dir, start_run
from offline_data.errors import OutputExistsError

logger = logging.getLogger("backdrop")

STAGES: tuple[tuple[str, str], ...] = (
    ("simulate", "simulate the studio world: products, variants, impressions, dwell, pairwise judgements"),
    ("validate", "validate the four log tables at the boundary"),
    ("split", "split the logs by product (held-out products never reach the reward model or DDPO)"),
    ("reward", "train the reward ensemble: position-debiased click, censored dwell, Bradley-Terry heads"),
    ("audit", "audit the reward model: calibration, ceilings, slices, spurious-feature and tamper probes"),
    ("ddpo", "DDPO with KL to the base, from the shipped tiny studio base"),
    ("compare", "best-of-n reranking vs DDPO on the same held-out requests"),
    ("export", "gate and export the candidate bundle"),
    ("report", "before/after contact sheet and report.html"),
)
"""(name, what it does), in order."""


class DemoOutputError(OutputExistsError):
    """The demo's output folder cannot be used (exit 73, like every command's used output folder)."""


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class StageClock:
    """Banners and wall/CPU time per stage (CPU = user + system of this process, all threads)."""

    def __init__(self, log_metrics: Callable[[dict[str, float], int], None]) -> None:
        self.log_metrics = log_metrics
        self.timings: list[dict[str, Any]] = []
        self._start = time.perf_counter()
        self._start_cpu = _cpu_seconds()

    @contextlib.contextmanager
    def stage(self, index: int, name: str, what: str) -> Iterator[None]:
        print(f"\n━━ [{index}/{len(STAGES)}] {name}: {what} ━━", flush=True)
        wall, cpu = time.perf_counter(), _cpu_seconds()
        yield
        wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
        self.timings.append({"stage": name, "wall_s": wall, "cpu_s": cpu})
        self.log_metrics({f"demo/wall_s/{name}": wall, f"demo/cpu_s/{name}": cpu}, index)
        total = time.perf_counter() - self._start
        print(f"━━ {name} done in {wall:.1f} s (CPU {cpu:.1f} s); {total:.0f} s since the start ━━", flush=True)

    def totals(self) -> dict[str, float]:
        return {"wall_s": time.perf_counter() - self._start, "cpu_s": _cpu_seconds() - self._start_cpu}


def demo_directory(config: DemoConfig, out: Path | None) -> Path:
    """``out`` (new or empty), else a fresh ``<output_dir>/<name>/<timestamp>``.

    Raises:
        DemoOutputError: ``out`` is a file or already holds files.
    """
    if out is None:
        return new_run_dir(config.run.output_dir, config.run.name)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DemoOutputError(f"{out}: already exists and is not an empty folder; give a new --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_demo(config: DemoConfig, out: Path | None = None, *, progress: bool = True) -> int:
    """Run every stage (module docstring) into ``out`` and write report.html; returns the exit status."""
    directory = demo_directory(config, out)
    directory.rmdir()  # empty: start_run creates exactly this folder and refuses an existing one
    paths = DemoPaths(directory)
    results: dict[str, Any] = {
        "config_threads": config.run.threads,
        "eval_seeds": config.eval.seeds_per_request,
        "best_of": config.demo.best_of,
        "ddpo_budget": f"at most {config.trainer.epochs} epochs"
        + (
            f" and {config.trainer.cpu_budget_minutes:g} CPU-minutes"
            if config.trainer.cpu_budget_minutes is not None
            else ""
        ),
    }
    with start_run(config.run, config, command="demo", directory=directory) as run:
        setup_runtime(config.run)  # threads and seeds for every stage of this process
        clock = StageClock(run.log_metrics)
        steps: dict[str, Callable[[], Any]] = {
            "simulate": lambda: stages.simulate_stage(config, paths, progress=progress),
            "validate": lambda: stages.validate_stage(paths),
            "split": lambda: stages.split_stage(config, paths),
            "reward": lambda: stages.reward_stage(config, paths, progress=progress),
            "audit": lambda: stages.audit_stage(config, paths),
            "ddpo": lambda: stages.ddpo_stage(config, paths, progress=progress),
            "compare": lambda: stages.compare_stage(config, paths),
            "export": lambda: stages.export_stage(config, paths, progress=progress),
            "report": lambda: stages.before_after_stage(config, paths),
        }
        for index, (name, what) in enumerate(STAGES, start=1):
            with clock.stage(index, name, what):
                results[name] = steps[name]()
                if name == "report":  # the report shows the stages before it and the total so far
                    results["timings"], results["totals"] = clock.timings, clock.totals()
                    report = write_report(paths, results)
        results["timings"], results["totals"] = clock.timings, clock.totals()
        (directory / "demo.json").write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    print()
    for line in [f"report: {report}", *headline_lines(results, paths)]:
        print(line)
    status = results["export"]["status"]
    return {"refused": 4, "reload_failed": 5}.get(status, 0)
