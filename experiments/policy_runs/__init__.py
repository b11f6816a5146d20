"""The run functions of the policy training commands, and where a policy run's requests come from.

Entry points: :func:`experiments.policy_runs.train.train_policy` (``backdrop policy train``, root config
:class:`~experiments.policy_runs.train.PolicyTrainCommandConfig`, e.g. experiments/configs/studio_ddpo.toml);
:func:`experiments.policy_runs.offline.train_offline` (``backdrop policy offline``: Diffusion-DPO and RWR, root
config :class:`~experiments.policy_runs.offline.PolicyOfflineCommandConfig`);
:func:`experiments.policy_runs.requests.run_requests` (a team's request table or the studio world's requests, for
both); :mod:`experiments.policy_runs.request_manifest` (the requests a run used, written into its own folder and read
back by ``export`` and ``policy compare``).
"""
