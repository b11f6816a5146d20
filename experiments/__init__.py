"""Configs, the ``backdrop`` CLI, run directories and tracking, sweeps, off-policy evaluation, export,
benchmarks and the end-to-end demo. Imports every package; nothing imports it.
"""
