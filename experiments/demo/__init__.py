"""``backdrop demo``: the whole loop on a demo-sized studio world, in one process.

Entry points: :func:`experiments.demo.run.run_demo` (root config :class:`experiments.demo.config.DemoConfig`,
files experiments/configs/demo.toml and demo_quick.toml); :mod:`experiments.demo.stages` (each stage through the
functions its own CLI command calls); :func:`experiments.demo.report.write_report` (report.html and the headline).
"""
