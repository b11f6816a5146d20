"""The logs' correction of the direct lift: the reward model's click residual on logged impressions, per embedding
cluster of the logged variants (OffCEM/MIPS-style), and the logged variant's own residual where a fresh sample
overlaps one (the doubly robust term), with abstention when the logs do not cover the candidate's samples.

The direct lift (``experiments/export/direct.py``) is the reward model's opinion of fresh samples; its bias is
the model's error on the images the candidate paints. The logs measure that error where they have images like
them. Notation: logged impression i shows logged image v_i in slot k_i to segment s_i, clicked y_i ∈ {0, 1};
the reward model predicts P(click) = θ_k · p̂(v, s) (``reward/heads.py``: position-based, examination θ_k per
slot with θ_1 = 1, p̂ the calibrated P(click | slot 1), the probability the combined reward uses). Every image
is placed by the reward model's embedding e(·) (``reward.scorer.RewardScorer.embed``: the first member's
standardised encoder features; Euclidean distances).

1. **Clusters.** Seeded k-means on the U logged images' embeddings, k = min(``clusters``, ⌊distinct / 2⌋, at
   least 1): a cluster pools two or more logged images on average (single images are the overlap term's). The
   residual of cluster c, in slot-1 click probability (the position adjustment of the click head: under the
   model E[y_i] = θ_{k_i} a(v_i), so the examination-weighted mean error is):

       δ_c = Σ_{i ∈ c} (y_i − θ_{k_i} p̂(v_i, s_i)) / Σ_{i ∈ c} θ_{k_i}           probability units (slot 1)

   used only when c holds n_c ≥ ``min_impressions_per_cluster`` impressions ("eligible").
2. **Assignment.** A fresh sample x (the candidate's and the base's evaluation samples, same requests and seeds)
   belongs to its nearest centroid c(x); it is *covered* when c(x) is eligible and ‖e(x) − μ_c‖ ≤ extent_c + h:
   extent_c is the distance of the cluster's farthest logged image from μ_c, and h the median of the logged
   images' distances to their nearest sibling (another logged image of the same product: the logging
   generator's draw-to-draw spread for one product; 0 when no product is logged twice). So x falls inside what
   the logs saw, give or take one more draw of the logger; a fresh draw of the base lands there about as often
   as a logged variant has a sibling that close. An uncovered sample gets no correction (the direct method
   alone).
3. **Overlap (DR).** v(x) is x's nearest logged image; x *overlaps* it when ‖e(x) − e(v)‖ ≤ τ and v has at
   least ``min_impressions_per_variant`` impressions; then the image-level residual δ_v (the formula of 1. over
   v's impressions) replaces the cluster's. τ is ``overlap_distance``, or by default the ``overlap_quantile``
   of the nearest-sibling distances of 2. (0.1: as close as the closest tenth of two logger draws for one
   product, nearly the same image); with no product logged twice τ = 0 (only exact copies).
4. **Correction**, with π_c the share of a model's N samples covered by c and o(x) the overlap indicator:

       ρ(x)      = 1[covered] δ_{c(x)} + o(x) (δ_{v(x)} − 1[covered] δ_{c(x)})         x's residual
       cluster   = Σ_c (π_c^cand − π_c^base) δ_c                                      (clicks, slot 1)
       dr        = mean_cand o (δ_v − 1[covered] δ_c) − mean_base o (δ_v − 1[covered] δ_c)
       Δ         = (cluster + dr) · w_click / σ_click / s                              within-request SDs

   w_click and σ_click are the click head's weight and normalising SD in the combined reward (the conversion of
   ``experiments.export.direct.click_to_reward``, the one ``calibration_margin`` uses for the ECE), s the direct
   lift's unit (the base's within-request SD of the reward). The corrected lift is lift + Δ. This is OffCEM's
   cluster effect (Saito et al. 2023, "Off-Policy Evaluation for Large Action Spaces via Conjunct Effect
   Modeling") with the candidate's cluster distribution measured on its fresh samples instead of given by
   propensities: Σ_c π_c^cand δ_c = E_log[(π_c^cand / π_c^log) (y − q̂)] up to the θ weighting, the MIPS weight
   (Saito & Joachims 2022) of the cluster. It only corrects the click term (the logs measure clicks); dwell and
   preference stay the model's.
5. **Abstention.** coverage = share of the candidate's samples covered; when coverage < ``min_coverage`` the
   correction is not applied and the result says "abstained: coverage X < Y" (the numbers are still recorded);
   the lift gate then decides on the plain direct lift and says so.
6. **Uncertainty.** B replicates resample the logged impressions (δ_c, δ_v recomputed; eligibility fixed) and,
   independently, the evaluation requests (each request's K samples together); Δ's percentile interval
   [Δ_lo, Δ_hi] at the lift's confidence. The logs are independent of the fresh samples, so the half-widths add
   in quadrature (exact for independent normal errors):

       lower = (lift + Δ) − √((lift − lower_direct)² + (Δ − Δ_lo)²)                 within-request SDs
       upper = (lift + Δ) + √((upper_direct − lift)² + (Δ_hi − Δ)²)

   The requests' share noise enters both the direct interval and Δ's: conservative. Each member's own lift is
   shifted by the same Δ (the residuals are the ensemble mean's).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from scipy import sparse
from sklearn.cluster import KMeans

from experiments.export.config import LoggedCorrectionConfig
from experiments.export.direct import DirectLift, click_to_reward
from experiments.export.logged_ope import OPELogs, load_ope_logs
from offline_data.errors import BackdropError
from reward.scorer import RewardScorer

BOOTSTRAP_CELLS = 20_000_000
"""At most this many impression counts ([replicates, n] float64, 160 MB) are held in memory at once."""


@dataclasses.dataclass(frozen=True, eq=False)
class LoggedClicks:
    """Logged impressions and the embeddings of their images, what the correction reads from the logs."""

    embeddings: np.ndarray
    """[U, D] float64 the reward model's embedding of each distinct logged image."""
    products: np.ndarray
    """[U] product id of each image (object)."""
    image_row: np.ndarray
    """[n] int64 image of each impression (row of ``embeddings``)."""
    clicked: np.ndarray
    """[n] float64 1 = clicked."""
    predicted: np.ndarray
    """[n] float64 the reward model's P(click) of the impression: θ_k · P̂(click | slot 1, segment, image)."""
    examination: np.ndarray
    """[n] float64 θ_k of the impression's slot (the click head's examination)."""

    def __post_init__(self) -> None:
        images, n = self.embeddings.shape[0], self.image_row.shape[0]
        if self.embeddings.ndim != 2 or self.products.shape != (images,):
            raise ValueError(f"embeddings must be [U, D] with U products, got {list(self.embeddings.shape)}")
        for name in ("clicked", "predicted", "examination"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} must be [{n}] (one per impression), got {list(getattr(self, name).shape)}")
        if n == 0 or self.image_row.min() < 0 or self.image_row.max() >= images:
            raise ValueError(f"need >= 1 impression with image_row in [0, {images}), got {n} impression(s)")
        if not (self.examination > 0).all():
            raise ValueError("the examination θ_k must be > 0")

    @classmethod
    def from_logs(cls, logs: OPELogs, embeddings: np.ndarray) -> LoggedClicks:
        """From the logs read by ``experiments.export.logged_ope.load_ope_logs`` and the embeddings [U, D] of
        ``logs.pixels``."""
        impressions = logs.impressions
        clicked = np.zeros(impressions.image_row.shape[0])
        present = logs.log.present
        clicked[logs.log.row[present]] = logs.log.reward[present]
        theta = logs.examination[impressions.slot]
        slot_one = np.array([logs.click[s][r] for s, r in zip(impressions.segment, impressions.image_row)])
        products = np.empty(len(logs.image_ids), dtype=object)
        products[impressions.image_row] = impressions.product
        return cls(
            embeddings=np.asarray(embeddings, dtype=np.float64),
            products=products,
            image_row=impressions.image_row,
            clicked=clicked,
            predicted=theta * slot_one,
            examination=theta,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoggedCorrection:
    """The logs' correction of one direct lift (module docstring). Every ``*_sd`` is in the lift's unit
    (within-request SDs of the base's combined reward); ``None`` where it was not computed."""

    status: str
    """"applied", "abstained: coverage X < Y ..." or "not applied: <why>"."""
    applied: bool
    correction_sd: float | None = None
    """Δ, the correction added to the lift (cluster + dr)."""
    cluster_term_sd: float | None = None
    dr_term_sd: float | None = None
    correction_clicks: float | None = None
    """Δ before conversion: slot-1 click probability (cluster + dr)."""
    correction_lower_sd: float | None = None
    correction_upper_sd: float | None = None
    """Δ's bootstrap interval (logged impressions and requests resampled)."""
    lift_sd: float | None = None
    lower_sd: float | None = None
    upper_sd: float | None = None
    """The corrected lift and its widened interval (None unless applied)."""
    member_lifts_sd: tuple[float, ...] | None = None
    """Each member's own lift shifted by Δ (None unless applied)."""
    coverage: float | None = None
    """Share of the candidate's samples covered by an eligible cluster."""
    base_coverage: float | None = None
    min_coverage: float | None = None
    overlap_share: float | None = None
    """Share of the candidate's samples overlapping a logged variant (the DR term's support)."""
    base_overlap_share: float | None = None
    overlap_distance: float | None = None
    overlap_distance_source: str | None = None
    reach: float | None = None
    """h: how far beyond its farthest logged image a cluster still covers a sample (median sibling distance)."""
    clusters: int | None = None
    """k of the k-means."""
    eligible_clusters: int | None = None
    min_impressions_per_cluster: int | None = None
    logged_impressions: int | None = None
    logged_images: int | None = None
    cluster_table: tuple[dict, ...] = ()
    """Per cluster: impressions, images, clicks, predicted clicks, exposure Σθ, residual δ_c (None when not
    eligible), the candidate's and the base's covered shares."""
    n_bootstrap: int | None = None
    confidence: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def not_applied(reason: str) -> LoggedCorrection:
    """A correction that could not be computed (no logs, disabled, an encoder that cannot embed new pixels, a click
    head that barely varies)."""
    return LoggedCorrection(status=f"not applied: {reason}", applied=False)


def sibling_distances(embeddings: np.ndarray, products: np.ndarray) -> np.ndarray:
    """Each logged image's distance to its nearest other logged image of the same product: [m] float64 over the
    images of products logged at least twice (empty when none is)."""
    out = []
    for product in np.unique(products):
        rows = np.flatnonzero(products == product)
        if rows.size < 2:
            continue
        points = embeddings[rows]
        distance = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(axis=2))
        np.fill_diagonal(distance, np.inf)
        out.append(distance.min(axis=1))
    return np.concatenate(out) if out else np.zeros(0)


def overlap_threshold(siblings: np.ndarray, config: LoggedCorrectionConfig) -> tuple[float, str]:
    """τ and where it came from (module docstring, 3.), from the nearest-sibling distances [m]."""
    if config.overlap_distance is not None:
        return float(config.overlap_distance), "[export.lift.logged_correction] overlap_distance"
    if siblings.size == 0:
        return 0.0, "no product has two logged images: only exact copies overlap"
    tau = float(np.quantile(siblings, config.overlap_quantile))
    return tau, (
        f"the {config.overlap_quantile:g} quantile of {siblings.size} logged images' distances to their nearest "
        "sibling of the same product"
    )


def _distances(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """[N, C] Euclidean distances (clipped at 0 before the root against rounding)."""
    squared = (points**2).sum(axis=1)[:, None] - 2.0 * points @ centres.T + (centres**2).sum(axis=1)[None, :]
    return np.sqrt(np.maximum(squared, 0.0))


def _group_residuals(counts: np.ndarray, residual: sparse.csr_matrix, exposure: sparse.csr_matrix) -> np.ndarray:
    """[B, G] Σ (y − θ p̂) / Σ θ per group under impression multiplicities ``counts`` [B, n] (0 where a group got
    no exposure)."""
    numerator = (residual.T @ counts.T).T
    denominator = (exposure.T @ counts.T).T
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def logged_correction(
    logged: LoggedClicks,
    candidate: np.ndarray,
    base: np.ndarray,
    *,
    seeds_per_request: int,
    lift: DirectLift,
    click_weight: float,
    click_std: float,
    config: LoggedCorrectionConfig,
) -> LoggedCorrection:
    """The correction of ``lift`` from the logged clicks (module docstring).

    Args:
        logged: the logged impressions and their images' embeddings.
        candidate: [N, D] the embeddings of the candidate's evaluation samples, request-major (N = R K).
        base: [N, D] the base's, same requests and seeds.
        seeds_per_request: K.
        lift: the direct lift of the same samples (its unit, interval, confidence and members' lifts).
        click_weight, click_std: the click head's weight and normalising SD in the combined reward.
        config: clusters, thresholds, bootstrap.

    Raises:
        ValueError: embeddings of different widths or shapes, or N not a multiple of K.
    """
    if not click_std >= config.min_click_std:
        return not_applied(
            f"the click head barely varies (normalising SD {click_std:.3g} < min_click_std {config.min_click_std:g} "
            "clicks): its residuals would be divided by that SD"
        )
    candidate = np.asarray(candidate, dtype=np.float64)
    base = np.asarray(base, dtype=np.float64)
    width = logged.embeddings.shape[1]
    if candidate.shape != base.shape or candidate.ndim != 2 or candidate.shape[1] != width:
        raise ValueError(
            f"candidate {list(candidate.shape)} and base {list(base.shape)} must both be [N, {width}] (the logged "
            "images' embedding width)"
        )
    samples = candidate.shape[0]
    if seeds_per_request < 1 or samples == 0 or samples % seeds_per_request:
        raise ValueError(f"{samples} samples are not R x K with K = {seeds_per_request}")
    distinct = np.unique(logged.embeddings, axis=0).shape[0]
    k = max(1, min(config.clusters, distinct // 2))
    kmeans = KMeans(n_clusters=k, n_init=4, random_state=config.seed).fit(logged.embeddings)
    centres = kmeans.cluster_centers_.astype(np.float64)
    image_cluster = kmeans.labels_.astype(np.int64)  # [U]
    own_centre = _distances(logged.embeddings, centres)[np.arange(image_cluster.size), image_cluster]
    extent = np.zeros(k)
    np.maximum.at(extent, image_cluster, own_centre)  # each cluster's farthest logged image

    impression_cluster = image_cluster[logged.image_row]
    impressions_per_cluster = np.bincount(impression_cluster, minlength=k)
    eligible = impressions_per_cluster >= config.min_impressions_per_cluster
    impressions_per_image = np.bincount(logged.image_row, minlength=logged.embeddings.shape[0])
    siblings = sibling_distances(logged.embeddings, logged.products)
    reach = float(np.median(siblings)) if siblings.size else 0.0
    tau, tau_source = overlap_threshold(siblings, config)

    def place(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        to_centre = _distances(points, centres)
        cluster = to_centre.argmin(axis=1)
        # A tolerance of rounding: a logged image itself must count as inside its own cluster's extent.
        inside = to_centre[np.arange(len(points)), cluster] <= (extent[cluster] + reach) * (1 + 1e-9) + 1e-12
        covered = eligible[cluster] & inside
        to_image = _distances(points, logged.embeddings)
        nearest = to_image.argmin(axis=1)
        overlap = (to_image[np.arange(len(points)), nearest] <= tau) & (
            impressions_per_image[nearest] >= config.min_impressions_per_variant
        )
        return cluster, covered, nearest, overlap

    placed = {"candidate": place(candidate), "base": place(base)}
    # Groups: the k clusters, then one column per logged image some overlapping sample stands on.
    variants = np.unique(np.concatenate([p[2][p[3]] for p in placed.values()]))
    column = np.full(logged.embeddings.shape[0], -1)
    column[variants] = k + np.arange(variants.size)
    groups = k + variants.size
    n = logged.image_row.shape[0]
    residual_rows = logged.clicked - logged.predicted
    rows = np.concatenate([np.arange(n), np.flatnonzero(column[logged.image_row] >= 0)])
    cols = np.concatenate([impression_cluster, column[logged.image_row][column[logged.image_row] >= 0]])
    residual = sparse.csr_matrix((residual_rows[rows], (rows, cols)), shape=(n, groups))
    exposure = sparse.csr_matrix((logged.examination[rows], (rows, cols)), shape=(n, groups))
    delta = _group_residuals(np.ones((1, n)), residual, exposure)[0]  # [G]

    def coefficients(cluster, covered, nearest, overlap) -> tuple[np.ndarray, np.ndarray]:
        """Per sample, the weights of x's residual on the groups' δ: the cluster part and the DR part [N, G]."""
        index = np.arange(len(cluster))
        on_cluster = np.zeros((len(cluster), groups))
        on_cluster[index, cluster] = covered
        dr = np.zeros((len(cluster), groups))
        dr[index[overlap], column[nearest[overlap]]] = 1.0
        dr[index, cluster] -= overlap * covered
        return on_cluster, dr

    requests = samples // seeds_per_request
    per_request = {}
    for part, (cand, base_part) in zip(
        ("cluster", "dr"), zip(coefficients(*placed["candidate"]), coefficients(*placed["base"]))
    ):
        per_request[part] = (cand - base_part).reshape(requests, seeds_per_request, groups).mean(axis=1)  # [R, G]
    to_sd = click_to_reward(1.0, click_weight, click_std) / lift.base_within_sd
    terms = {part: float(g.mean(axis=0) @ delta) for part, g in per_request.items()}
    clicks = terms["cluster"] + terms["dr"]
    correction = clicks * to_sd

    rng = np.random.default_rng(config.seed)
    replicates = []
    chunk = max(1, BOOTSTRAP_CELLS // n)
    for start in range(0, config.n_bootstrap, chunk):
        size = min(chunk, config.n_bootstrap - start)
        impression_counts = rng.multinomial(n, np.full(n, 1.0 / n), size=size).astype(np.float64)
        request_counts = rng.multinomial(requests, np.full(requests, 1.0 / requests), size=size) / requests
        shares = request_counts @ (per_request["cluster"] + per_request["dr"])  # [b, G]
        replicates.append((shares * _group_residuals(impression_counts, residual, exposure)).sum(axis=1))
    tail = (1.0 - lift.confidence) / 2.0
    low, high = (float(v) * to_sd for v in np.quantile(np.concatenate(replicates), [tail, 1.0 - tail]))
    if to_sd < 0:
        low, high = high, low

    coverage = float(placed["candidate"][1].mean())
    shares = {name: np.bincount(p[0][p[1]], minlength=k) / samples for name, p in placed.items()}
    table = tuple(
        {
            "cluster": c,
            "images": int((image_cluster == c).sum()),
            "impressions": int(impressions_per_cluster[c]),
            "clicks": float(logged.clicked[impression_cluster == c].sum()),
            "predicted_clicks": float(logged.predicted[impression_cluster == c].sum()),
            "exposure": float(logged.examination[impression_cluster == c].sum()),
            "residual": float(delta[c]) if eligible[c] else None,
            "candidate_share": float(shares["candidate"][c]),
            "base_share": float(shares["base"][c]),
        }
        for c in range(k)
    )
    applied = coverage >= config.min_coverage
    status = (
        "applied"
        if applied
        else f"abstained: coverage {coverage:.3f} < {config.min_coverage:g} (share of the candidate's {samples} "
        f"samples inside a cluster of logged variants with >= {config.min_impressions_per_cluster} impressions)"
    )
    corrected = {}
    if applied:
        centre = lift.lift_sd + correction
        corrected = {
            "lift_sd": centre,
            "lower_sd": centre - float(np.hypot(max(lift.lift_sd - lift.lower_sd, 0.0), max(correction - low, 0.0))),
            "upper_sd": centre + float(np.hypot(max(lift.upper_sd - lift.lift_sd, 0.0), max(high - correction, 0.0))),
            "member_lifts_sd": tuple(v + correction for v in lift.member_lifts_sd),
        }
    return LoggedCorrection(
        status=status,
        applied=applied,
        correction_sd=correction,
        cluster_term_sd=terms["cluster"] * to_sd,
        dr_term_sd=terms["dr"] * to_sd,
        correction_clicks=clicks,
        correction_lower_sd=low,
        correction_upper_sd=high,
        **corrected,
        coverage=coverage,
        base_coverage=float(placed["base"][1].mean()),
        min_coverage=config.min_coverage,
        overlap_share=float(placed["candidate"][3].mean()),
        base_overlap_share=float(placed["base"][3].mean()),
        overlap_distance=tau,
        overlap_distance_source=tau_source,
        reach=reach,
        clusters=k,
        eligible_clusters=int(eligible.sum()),
        min_impressions_per_cluster=config.min_impressions_per_cluster,
        logged_impressions=n,
        logged_images=int(logged.embeddings.shape[0]),
        cluster_table=table,
        n_bootstrap=config.n_bootstrap,
        confidence=lift.confidence,
    )


def read_logged_clicks(
    scorer: RewardScorer, logs_dir: Path | None, config: LoggedCorrectionConfig
) -> LoggedClicks | LoggedCorrection:
    """The logged impressions and their images' reward embeddings, read once for any number of candidates; or, when
    the correction cannot be computed, a not-applied :class:`LoggedCorrection` saying why (disabled, no logs,
    unreadable logs, a combined reward that gives the click head no weight, logged images the encoder cannot embed).

    Args:
        scorer: the run's reward model.
        logs_dir: validated logs with impressions and the shown images (the reward model's test split by default,
            as ``experiments/export/logged_ope.py`` reads them; propensities not needed).
        config: ``[export.lift.logged_correction]``.
    """
    if not config.enabled:
        return not_applied("disabled ([export.lift.logged_correction] enabled = false)")
    if logs_dir is None or not Path(logs_dir).is_dir():
        return not_applied(f"no logs ({logs_dir}); set [export.ope] logs to a folder of validated logs")
    if click_weight(scorer) == 0.0:
        return not_applied("the combined reward gives the click head weight 0, so click residuals do not move it")
    try:
        logs = load_ope_logs(Path(logs_dir), scorer, require_propensity=False)
    except (BackdropError, ValueError) as exc:
        return not_applied(f"the logs cannot be used: {exc}")
    try:
        embeddings = scorer.embed(logs.pixels, masks=logs.masks, image_ids=logs.image_ids)
    except (BackdropError, ValueError) as exc:
        return not_applied(f"the reward model cannot embed the logged images: {exc}")
    return LoggedClicks.from_logs(logs, embeddings.double().numpy())


def click_weight(scorer: RewardScorer) -> float:
    """The click head's weight in the scorer's combined reward (0 when it has none)."""
    return float(scorer.config.combination.weights.get("click", 0.0))


def embed_samples(scorer: RewardScorer, images: torch.Tensor, masks: torch.Tensor) -> np.ndarray | str:
    """[N, D] float64 the reward model's embeddings of fresh samples ([N, 3, H, W] uint8, masks [N, H, W] bool), or
    why it cannot embed them (an encoder of precomputed embeddings knows only the logged images)."""
    try:
        return scorer.embed(images, masks=masks).double().numpy()
    except (BackdropError, ValueError) as exc:
        return f"the reward model cannot embed the fresh samples: {exc}"


def correct_lift(
    scorer: RewardScorer,
    logged: LoggedClicks,
    candidate: np.ndarray,
    base: np.ndarray,
    *,
    seeds_per_request: int,
    lift: DirectLift,
    config: LoggedCorrectionConfig,
) -> LoggedCorrection:
    """:func:`logged_correction` with the click head's weight and normalising SD of ``scorer``'s combined reward
    (``candidate``, ``base``: [N, D] embeddings from :func:`embed_samples`)."""
    return logged_correction(
        logged, candidate, base, seeds_per_request=seeds_per_request, lift=lift, click_weight=click_weight(scorer),
        click_std=scorer.normalisation["click"][1], config=config,
    )  # fmt: skip


def measure_correction(
    scorer: RewardScorer,
    logs_dir: Path | None,
    candidate_images: torch.Tensor,
    base_images: torch.Tensor,
    masks: torch.Tensor,
    *,
    seeds_per_request: int,
    lift: DirectLift,
    config: LoggedCorrectionConfig,
) -> LoggedCorrection:
    """Read the logs, embed the logged and the fresh images with the reward model and compute
    :func:`logged_correction`. Never raises for the logs' sake: disabled, no logs, unreadable logs, a reward model
    that cannot embed new pixels (precomputed embeddings) or gives the click head no weight each give a
    correction that says why it was not applied.

    Args:
        scorer: the run's reward model.
        logs_dir: the logs (:func:`read_logged_clicks`).
        candidate_images, base_images: [R K, 3, H, W] uint8 request-major evaluation samples (same seeds).
        masks: [R K, H, W] bool their product masks.
        seeds_per_request: K.
        lift: the direct lift of these samples.
        config: ``[export.lift.logged_correction]``.
    """
    logged = read_logged_clicks(scorer, logs_dir, config)
    if isinstance(logged, LoggedCorrection):
        return logged
    fresh = [embed_samples(scorer, images, masks) for images in (candidate_images, base_images)]
    for embedded in fresh:
        if isinstance(embedded, str):
            return not_applied(embedded)
    return correct_lift(scorer, logged, *fresh, seeds_per_request=seeds_per_request, lift=lift, config=config)
