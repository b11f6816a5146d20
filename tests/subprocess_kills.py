"""Kill tests' common step: start a command, SIGKILL it at seeded random points, count the kills that landed."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child_env() -> dict[str, str]:
    """The environment of a child backdrop process: this checkout first on the path, one thread."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def kill_repeatedly(
    command: Callable[[], Sequence[str]], *, times: int, window: float, seed: int, ready_line: bool, delay: float = 0.0
) -> int:
    """Run ``command()`` ``times`` times, each SIGKILLed after ``delay`` + U(0, ``window``) seconds (seeded).

    Args:
        command: the argv of each start (it may change once a run folder exists, e.g. to ``--resume``).
        ready_line: the child prints "ready" when its start-up is over; the clock starts then.

    Returns:
        How many kills landed before the child had finished by itself.
    """
    rng, kills = random.Random(seed), 0
    for _ in range(times):
        process = subprocess.Popen(list(command()), cwd=ROOT, env=child_env(), text=True, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)  # fmt: skip
        if ready_line:
            assert process.stdout.readline().strip() == "ready", process.stderr.read()[-3000:]
        time.sleep(delay + rng.uniform(0.0, window))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.communicate(timeout=120)
    return kills
