"""Comparisons of finished runs.

Entry points: :func:`experiments.compare.runs.compare_runs` (``backdrop runs compare``: a table and curves for
several run folders side by side) and :func:`experiments.compare.methods.compare_methods` (``backdrop policy
compare``: DDPO against best-of-n reranking and the offline methods, at matched KL).
"""
