"""Samplers whose suggestion for a trial depends on the sweep's seed and the trial's place, not on the session.

optuna's samplers draw from one random stream per process: a sweep killed after 3 trials and resumed starts a new
stream (a new process, a new session seed), so its trials 4, 5, ... differ from the uninterrupted sweep's. Here
the sampler is reseeded before every trial from (space seed, k), where k counts the earlier trials that were not
interrupted: an interrupted trial (a FAIL with no error from the target: Ctrl-C or a kill) is queued again with the
same params and its retry takes its place, so the k-th trial to be sampled sees the same seed and, for TPE, the
same finished history (FAIL trials are not in TPE's model) as the k-th trial of the uninterrupted sweep. With one
worker a resumed sweep gives the uninterrupted sweep's trials; with several, the order in which workers finish
still changes the history each suggestion sees.

Hack: optuna (5.1) has no public way to reseed a sampler; ``_rng`` (a ``LazyRandomState``) is what RandomSampler
and TPESampler (and TPE's start-up RandomSampler) draw from, and ``reseed_rng`` draws a *random* seed. The sweep
tests check that resumed and uninterrupted sweeps agree, so a change of those internals fails there.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
from optuna.samplers._lazy_random_state import LazyRandomState
from optuna.trial import TrialState


def trial_key(study: Any, trial: Any) -> int:
    """k: how many trials before ``trial`` were not interrupted (finished, pruned, failed with an error, running)."""
    earlier = study.get_trials(deepcopy=False)
    interrupted = sum(
        t.number < trial.number and t.state == TrialState.FAIL and "error" not in t.user_attrs for t in earlier
    )
    return trial.number - interrupted


def make_trial_seeded_sampler(kind: str, seed: int) -> Any:
    """A ``"random"`` or ``"tpe"`` (constant liar) sampler reseeded before each trial from (``seed``, trial key)."""
    base = optuna.samplers.RandomSampler if kind == "random" else optuna.samplers.TPESampler
    options = {} if kind == "random" else {"constant_liar": True}

    class TrialSeeded(base):  # type: ignore[valid-type, misc]
        def before_trial(self, study: Any, trial: Any) -> None:
            state = int(np.random.SeedSequence([seed, trial_key(study, trial)]).generate_state(1)[0])
            self._rng = LazyRandomState(state)
            if hasattr(self, "_random_sampler"):  # TPE's start-up trials
                self._random_sampler._rng = LazyRandomState(state)
            super().before_trial(study, trial)

    TrialSeeded.__name__ = TrialSeeded.__qualname__ = f"TrialSeeded{base.__name__}"
    return TrialSeeded(seed=seed, **options)
