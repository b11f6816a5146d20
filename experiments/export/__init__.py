"""``backdrop export``: a policy run turned into an A/B candidate bundle, behind gates.

Entry points:

- :func:`experiments.export.bundle.export_candidate` (root config
  :class:`experiments.export.config.ExportCommandConfig`, file experiments/configs/export.toml): read the run,
  check the gates, write the bundle (adapter, manifest.json, MODEL_CARD.md, reference images).
- :func:`experiments.export.gates.check_gates`: the preservation, KL, OPE and audit gates.
- :func:`experiments.export.logged_ope.evaluate_candidate`: off-policy evaluation of a generative candidate on
  logs of another generator's images (ELBO log-ratios as propensities).
- :func:`experiments.export.reload.verify_reload`: the bundle's reference images reproduced bit for bit after
  reloading it.
- :mod:`experiments.export.manifest` (identities and hashes in manifest.json) and
  :func:`experiments.export.model_card.write_model_card`.
"""
