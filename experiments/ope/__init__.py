"""Off-policy evaluation of a ranking candidate on slotted impression logs, and A/B test planning (``backdrop ope``).

Entry points:

- :func:`experiments.ope.evaluate.evaluate` (root config :class:`experiments.ope.evaluate.OPECommandConfig`):
  the command's whole evaluation from files to an :class:`~experiments.ope.evaluate.OPEReport`;
  :func:`experiments.ope.evaluate.estimate` does the same on arrays already in memory.
- :mod:`experiments.ope.inputs`: reading the impressions log and a candidate's scores (``load_impressions``,
  ``load_candidate_scores``).
- :mod:`experiments.ope.data`: the dense ``[requests, slots]`` layout (``build_impression_log``,
  ``build_candidate``).
- :mod:`experiments.ope.estimators`, :mod:`experiments.ope.weights`, :mod:`experiments.ope.bootstrap`: the
  estimators, importance weights with their overlap refusal, and request-level bootstrap intervals.
- :mod:`experiments.ope.summary`: the A/B sample size for an estimated lift and the text report.
- :mod:`experiments.ope.abtest`: A/B sample sizes, power and minimum detectable effects.
- :mod:`experiments.ope.synthetic`: a slate bandit with exact policy values, the truth the estimators are tested on.
"""
