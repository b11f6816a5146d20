"""Configs, the ``backdrop`` CLI, run folders and tracking, and the commands' run functions. Imports every package;
nothing imports it (docs/architecture.md is the map).

Subpackages: ``commands`` (one module per CLI command: arguments and printing), ``policy_runs`` (the run functions
of policy train and policy offline, and a run's requests), ``ope`` (off-policy evaluation and A/B sizing), ``export``
(the gated candidate bundle), ``sweep`` (optuna studies), ``compare`` (runs compare, policy compare), ``demo`` (the
whole loop in one process), ``studio`` (the studio world's seam), ``bench`` (benchmarks).

Flat modules, shared by every command: ``config`` (strict TOML), ``cli``, ``output_folder`` and ``run_record`` (run
folders, command.json, error.json), ``tracking`` (metrics, TensorBoard, MLflow), ``runtime`` (device, threads,
seeds); ``reward_fit`` (the reward train run function, also run by the sweep and the demo); ``catalogue_example``
(writes the bring-your-own request table example).
"""
