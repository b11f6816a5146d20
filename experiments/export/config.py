"""Configuration of ``backdrop export`` (experiments/configs/export.toml): the candidate bundle and its gates.

[export]               device, threads, where the audit's truth comes from
[export.evaluation]    the held-out requests and seeds every gate sample is drawn from
[export.gates]         thresholds: KL budget, direct lift, logged non-inferiority margin, tolerated audit flags
[export.lift]          the direct lift's interval: bootstrap, ensemble members, calibration
[export.lift.logged_correction]  the logs' correction of the lift (embedding clusters, overlap, abstention)
[export.ope]           logs, the candidate's propensities over logged variants, and the OPE settings (the
                       logged non-inferiority check)
[export.audit]         the reward-model audit (``reward/audit_config.py``)
[export.reference]     the reference images the reloaded bundle must reproduce bit-identically
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from experiments.ope.evaluate import OPEConfig
from reward.audit_config import AuditConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvaluationSetConfig:
    """The held-out requests the preservation and KL gates sample (the run's own evaluation requests)."""

    requests: int = 32
    """Evaluation requests used (the first ones of the run's held-out requests: products unseen in training)."""
    seeds_per_request: int = 2
    """Samples per request; every sample's product pixels are verified."""
    first_seed: int = 2_000_000_011
    """Seed of the first sample (request r, sample k gets first_seed + r * seeds_per_request + k); far from the
    training seeds and from the training evaluation's seeds."""

    def __post_init__(self) -> None:
        if self.requests < 1 or self.seeds_per_request < 1 or self.first_seed < 0:
            raise ValueError("requests and seeds_per_request must be >= 1 and first_seed >= 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GateConfig:
    """Thresholds of the export gates (``experiments/export/gates.py``). Preservation has none: zero violations."""

    max_kl_nats: float = 400.0
    """KL(candidate || base) per sample in nats, recomputed on the evaluation samples (sum over steps of the
    per-step Gaussian KL times the background latent dims, as ``eval/kl_nats`` of a policy run)."""
    min_direct_lift_sd: float = 0.0
    """The lift gate: the lower end of the direct lift's interval (``experiments/export/direct.py``; in
    within-request SDs of the base's combined reward on the same requests and seeds) must be strictly above this,
    and ``[export.lift] min_member_share`` of the members' own lifts too. 0 = better than the base."""
    min_lift_lower_bound: float = -0.01
    """Logged non-inferiority: the lower end of the OPE interval of the candidate's lift over the logging policy
    among LOGGED images (clicks per request, estimator ``[export.ope.ope] primary``) must be at or above this: a
    non-inferiority margin. 0 demands a lift the logs can already prove. The lift only re-weights logged
    base-model variants, so it cannot see gains a candidate makes off that support: on the studio it did not
    rank five candidates by their held-out gold gain (Spearman ≤ 0.03 at every τ and draws tried) and refused two
    DDPO seeds whose gold rose (module docstring of ``experiments/export/logged_ope.py``); the lift gate
    (``min_direct_lift_sd``) judges the candidate's own samples instead."""
    tolerated_flags: tuple[str, ...] = ()
    """Audit flag ids (e.g. "tamper_not_noticed") that do not fail the audit gate; they are still reported."""

    def __post_init__(self) -> None:
        if not self.max_kl_nats > 0:
            raise ValueError(f"max_kl_nats must be > 0, got {self.max_kl_nats}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoggedCorrectionConfig:
    """The logs' correction of the direct lift (``experiments/export/logged_correction.py``): the reward model's
    click residual on logged impressions, per embedding cluster of the logged variants, weighted by how much more
    of the candidate's fresh samples than of the base's fall in each cluster, plus the logged variant's own
    residual where a sample overlaps one. Needs the run's logs (``[export.ope] logs``, default the reward model's
    test split); without them, or with a reward encoder that cannot embed new pixels, it is not applied and the
    manifest says why."""

    enabled: bool = True
    """Compute the correction when the logs are there (false = the plain direct method; recorded as disabled)."""
    clusters: int = 32
    """k of the seeded k-means over the logged variants' embeddings; capped at half the distinct logged images (a
    cluster pools two or more on average). More clusters = a finer residual (less bias) from fewer impressions
    each (more variance)."""
    min_impressions_per_cluster: int = 50
    """A cluster's residual is used only when it holds at least this many logged impressions (at a ~10 % click
    rate, 50 impressions give a residual with an SE of ~0.04 clicks); samples in thinner clusters get none."""
    min_coverage: float = 0.5
    """Abstain (the plain direct lift decides, and the result says so) when fewer than this share of the
    candidate's samples fall inside a cluster with ``min_impressions_per_cluster`` impressions (nearest centroid,
    no farther from it than the cluster's farthest logged variant plus the median distance between two logged
    variants of one product)."""
    overlap_distance: float | None = None
    """A sample overlaps a logged variant when the nearest one is at most this far (Euclidean, in the reward
    model's standardised embedding); its residual is then that variant's own (the doubly robust term). Unset =
    the ``overlap_quantile`` of the logged variants' distances to their nearest sibling (another logged variant of
    the same product: two draws of the logging generator for one product)."""
    overlap_quantile: float = 0.1
    """Quantile of the within-product nearest-sibling distances that sets ``overlap_distance`` when unset: 0.1 =
    a sample counts as overlapping when it is as close to a logged variant as the closest tenth of sibling pairs,
    nearly the same image, so the variant's measured clicks can stand for it."""
    min_impressions_per_variant: int = 5
    """A logged variant's own residual is used for an overlapping sample only with at least this many impressions."""
    min_click_std: float = 1e-3
    """Not applied when the click head's normalising SD (the spread of its calibrated P(click) over the reward
    model's training images, probability units) is below this: a residual of r clicks is r / SD in reward units,
    so a click head that barely varies would turn a 0.01-click residual into thousands of SDs (seen on an
    under-trained smoke reward model: +1290 SD)."""
    n_bootstrap: int = 1000
    """Replicates of the correction's bootstrap (logged impressions and evaluation requests resampled), >= 100."""
    seed: int = 0
    """Seeds the k-means and the bootstrap."""

    def __post_init__(self) -> None:
        if self.clusters < 1:
            raise ValueError(f"clusters must be >= 1, got {self.clusters}")
        if self.min_impressions_per_cluster < 1:
            raise ValueError(f"min_impressions_per_cluster must be >= 1, got {self.min_impressions_per_cluster}")
        if not 0 <= self.min_coverage <= 1:
            raise ValueError(f"min_coverage must be in [0, 1], got {self.min_coverage}")
        if self.overlap_distance is not None and not self.overlap_distance >= 0:
            raise ValueError(f"overlap_distance must be >= 0 (or unset), got {self.overlap_distance}")
        if not 0 <= self.overlap_quantile <= 1:
            raise ValueError(f"overlap_quantile must be in [0, 1], got {self.overlap_quantile}")
        if self.min_impressions_per_variant < 1:
            raise ValueError(f"min_impressions_per_variant must be >= 1, got {self.min_impressions_per_variant}")
        if self.n_bootstrap < 100:
            raise ValueError(f"n_bootstrap must be >= 100, got {self.n_bootstrap}")
        if not self.min_click_std >= 0:
            raise ValueError(f"min_click_std must be >= 0, got {self.min_click_std}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DirectLiftConfig:
    """The interval of the direct lift (``experiments/export/direct.py``), measured on the evaluation samples
    (``[export.evaluation]``: the candidate's and the base's, same requests and seeds; needs seeds_per_request
    >= 2, the unit being the base's within-request SD)."""

    confidence: float = 0.95
    """Two-sided level of the percentile bootstrap interval (its lower end is a 97.5 % one-sided bound)."""
    n_bootstrap: int = 2000
    """Bootstrap replicates (>= 100); each resamples the requests and, with ``resample_members``, the members."""
    resample_members: bool = True
    """Resample the reward ensemble's members in every replicate, so the interval carries the ensemble spread;
    false takes the ensemble mean as exact (request sampling only)."""
    min_member_share: float = 1.0
    """Share of the members (0..1) whose own lift must be above ``[export.gates] min_direct_lift_sd``; 1 = every
    member, 0 = no member requirement."""
    calibration: bool = False
    """Widen the interval on each side by the click head's held-out calibration error (the audit's ``click_ece`` on
    the logs, converted to reward units, ``experiments.export.direct.calibration_margin``). Off by default: the
    ECE is mostly a level error, which cancels in the paired candidate - base difference, while in the lift's
    unit (the base's within-request SD, small) it is several SDs (±4.1 SD on the export test's tiny world), so
    applying it refuses everything. Either way the manifest records the ECE and its size in SDs, and whether it
    was applied."""
    seed: int = 0
    """Seeds the bootstrap."""
    logged_correction: LoggedCorrectionConfig = LoggedCorrectionConfig()
    """The logs' correction of the lift; when applied the lift gate decides on the corrected lower bound."""

    def __post_init__(self) -> None:
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.n_bootstrap < 100:
            raise ValueError(f"n_bootstrap must be >= 100, got {self.n_bootstrap}")
        if not 0 <= self.min_member_share <= 1:
            raise ValueError(f"min_member_share must be in [0, 1], got {self.min_member_share}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CandidateOPEConfig:
    """How the candidate is evaluated off-policy on logs of the production generator's variants.

    A generative candidate does not choose among logged images, so it is given propensities over them
    (``experiments/export/logged_ope.py``): the logging policy's choices re-weighted by the candidate's likelihood
    ratio to the base model, ρ(v) = exp(ELBO_candidate(v) − ELBO_base(v)), normalised per (product, slot).
    """

    logs: Path | None = None
    """Validated logs with impressions (with propensities) and the assets of the logged images; unset = the test
    split the reward model was evaluated on (its metrics.json ``splits`` + /test)."""
    elbo_draws: int = 2
    """Forward-noising draws averaged per logged image in the ELBO log-ratio (Monte Carlo noise falls as 1/√n).
    Measured on a studio DDPO candidate (``experiments/bench/export_ope_fidelity.py``): per-image MC sd 27 nats at
    2 draws (14 at 8) against a 57-nat spread between a product's variants, i.e. 70 % of that spread is signal at
    2 draws and 90 % at 8; more draws cost proportionally more and did not make the lift rank candidates."""
    ratio_temperature: float = 1.0
    """τ in π_e ∝ π_0 ρ^(1/τ); 1 is the self-normalised importance resampling of the candidate's distribution
    from the logged images, > 1 flattens it (less variance, biased toward the logging policy). On the studio logs
    τ = 1 leaves ~8 % weight ESS (each cell's mass on its largest ratio); τ ≈ 46 gives ~50 % (one DDPO seed) and
    narrows the lift's interval 2.4-9x, toward the logger's value, not toward the truth (the bench above)."""
    batch_size: int = 32
    """Logged images per ELBO forward chunk."""
    seed: int = 0
    """Seeds the forward-noising draws and the bootstrap."""
    ope: OPEConfig = OPEConfig(n_bootstrap=1000)
    """Estimators, intervals and overlap refusals (``experiments/ope/evaluate.py``)."""

    def __post_init__(self) -> None:
        if self.elbo_draws < 1 or self.batch_size < 1 or self.seed < 0:
            raise ValueError("elbo_draws and batch_size must be >= 1 and seed >= 0")
        if not self.ratio_temperature > 0:
            raise ValueError(f"ratio_temperature must be > 0, got {self.ratio_temperature}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReferenceConfig:
    """Reference images: sampled before writing, reproduced bit-identically after reloading the bundle."""

    requests: int = 4
    """Evaluation requests sampled (one image each)."""
    seed: int = 7
    """Seed of the first reference image (request r uses seed + r)."""

    def __post_init__(self) -> None:
        if self.requests < 1 or self.seed < 0:
            raise ValueError("requests must be >= 1 and seed >= 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExportConfig:
    """Everything ``backdrop export`` does besides choosing the run and the bundle folder (section [export])."""

    device: str = "cpu"
    """"auto", "cpu", "cuda" or "cuda:N"; the candidate runs in its training run's dtype."""
    threads: int = 0
    """torch intra-op threads (0 = torch's default)."""
    truth: Path | None = None
    """Simulation folder with the evaluation-only truth/ sidecar for the audit (ceilings, gold); unset = look for
    one above the OPE logs folder (``truth_search``)."""
    truth_search: bool = True
    """Look for truth/world.json in the OPE logs folder and up to five folders above it when ``truth`` is unset."""
    audit_report: Path | None = None
    """An audit.json written by ``backdrop reward audit`` for this reward model; unset = run the audit now."""
    contact_sheet_requests: int = 6
    """Evaluation requests shown before (base) / after (candidate) in the bundle's contact sheet."""
    evaluation: EvaluationSetConfig = EvaluationSetConfig()
    gates: GateConfig = GateConfig()
    lift: DirectLiftConfig = DirectLiftConfig()
    ope: CandidateOPEConfig = CandidateOPEConfig()
    audit: AuditConfig = AuditConfig()
    reference: ReferenceConfig = ReferenceConfig()

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")
        if self.contact_sheet_requests < 1:
            raise ValueError(f"contact_sheet_requests must be >= 1, got {self.contact_sheet_requests}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExportCommandConfig:
    """Root config of ``backdrop export``: the single section [export]."""

    export: ExportConfig = ExportConfig()
    """The bundle's gates, evaluation and reload check."""
