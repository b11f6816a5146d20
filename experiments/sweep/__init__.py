"""``backdrop sweep``: an optuna study over config keys of a training command, stored in SQLite, resumable.

Entry points:

- :func:`experiments.sweep.study.run_sweep`: create or resume a sweep and run its trials (in-process or in
  ``--workers`` processes).
- :func:`experiments.sweep.space.load_space`: the search space file (experiments/configs/*_space.toml).
- :func:`experiments.sweep.targets.register_target` and :func:`~experiments.sweep.targets.load_target`: the
  registry of what a sweep can drive (built in: ``"policy train"``, ``"reward train"``).
- :func:`experiments.sweep.summary.summarize_sweep`: best trials, importances and plots.
- :mod:`experiments.sweep.trial` (one trial), :mod:`experiments.sweep.objective` (a trial's objective from its
  metrics) and :mod:`experiments.sweep.devices` (GPU and threads per worker).
"""
