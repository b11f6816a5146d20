"""Calibration of the click head on held-out (validation) impressions: temperature or isotonic scaling.

The click head predicts P(click | slot k) = θ_k σ(f). Calibration maps it to observed click rates:

- temperature (Guo et al. 2017): P = θ_k σ(f / T), T > 0 fitted by maximum likelihood on the held-out clicks;
  it only rescales the attractiveness logit, so the ranking of images never changes;
- isotonic (Zadrozny & Elkan 2002; scikit-learn's ``IsotonicRegression``): P = g(θ_k σ(f)) for the monotone g
  that best fits the held-out clicks (clipped to [0, 1], constant beyond the fitted range).

The reward's click score is the calibrated P(click | shown in slot 1): σ(f / T), or g(σ(f)) (θ_1 = 1).
Calibrators are small and serialisable (:meth:`Calibrator.to_dict`), so they are saved with the model.

A calibrator is kept only when it helps on data it was not fitted on (:func:`choose_calibrator`): the validation
impressions are cut into folds, each fold is predicted by a calibrator fitted on the others, and the ECE of those
out-of-fold probabilities is compared with the uncalibrated head's on the same rows. Isotonic regression on a few
hundred clicks can overfit and make ECE worse; then the head stays uncalibrated, and the choice says why.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import optimize

from reward.metrics import expected_calibration_error


@dataclasses.dataclass(frozen=True)
class Calibrator:
    """A fitted click calibrator.

    Attributes:
        method: "temperature", "isotonic" or "none".
        temperature: T (temperature only; 1 otherwise).
        thresholds_x, thresholds_y: the isotonic step function's knots (isotonic only).
        note: why this calibrator was kept (:func:`choose_calibrator`'s reason; saved with the model, shown by
            the audit).
    """

    method: str
    temperature: float = 1.0
    thresholds_x: tuple[float, ...] = ()
    thresholds_y: tuple[float, ...] = ()
    note: str = ""

    def probability(self, logits: np.ndarray, examination: np.ndarray | float = 1.0) -> np.ndarray:
        """Calibrated P(click) of attractiveness logits [n] in slots with examination θ ([n] or a scalar)."""
        logits = np.asarray(logits, dtype=np.float64)
        theta = np.asarray(examination, dtype=np.float64)
        if self.method == "temperature":
            return theta * _sigmoid(logits / self.temperature)
        raw = theta * _sigmoid(logits)
        if self.method == "isotonic":
            return np.interp(raw, self.thresholds_x, self.thresholds_y)
        return raw

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {
            "thresholds_x": list(self.thresholds_x),
            "thresholds_y": list(self.thresholds_y),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Calibrator:
        return cls(
            method=str(data["method"]),
            temperature=float(data.get("temperature", 1.0)),
            thresholds_x=tuple(float(v) for v in data.get("thresholds_x", ())),
            thresholds_y=tuple(float(v) for v in data.get("thresholds_y", ())),
            note=str(data.get("note", "")),
        )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def fit_temperature(logits: np.ndarray, examination: np.ndarray, clicked: np.ndarray) -> float:
    """T minimising the click NLL of P = θ σ(f / T) on held-out rows (all [n]); searched over log T in [−4, 4].

    Raises:
        ValueError: empty input, or all rows clicked / none clicked (T is not identified).
    """
    f = np.asarray(logits, dtype=np.float64)
    theta = np.asarray(examination, dtype=np.float64)
    y = np.asarray(clicked, dtype=bool)
    if f.size == 0 or y.all() or not y.any():
        raise ValueError("temperature scaling needs held-out impressions with and without clicks")

    def nll(log_t: float) -> float:
        p = np.clip(theta * _sigmoid(f / math.exp(log_t)), 1e-12, 1 - 1e-12)
        return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))

    result = optimize.minimize_scalar(nll, bounds=(-4.0, 4.0), method="bounded", options={"xatol": 1e-6})
    return float(math.exp(result.x))


def fit_calibrator(method: str, logits: np.ndarray, examination: np.ndarray, clicked: np.ndarray) -> Calibrator:
    """Fit the configured calibrator on held-out impressions (logits, θ of their slots, clicks; all [n])."""
    if method == "none":
        return Calibrator("none")
    if method == "temperature":
        return Calibrator("temperature", temperature=fit_temperature(logits, examination, clicked))
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression  # heavy: scikit-learn (~0.5 s) only for this calibrator

        raw = np.asarray(examination, dtype=np.float64) * _sigmoid(np.asarray(logits, dtype=np.float64))
        y = np.asarray(clicked, dtype=np.float64)
        if raw.size == 0 or y.min() == y.max():
            raise ValueError("isotonic calibration needs held-out impressions with and without clicks")
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw, y)
        return Calibrator(
            "isotonic",
            thresholds_x=tuple(float(v) for v in iso.X_thresholds_),
            thresholds_y=tuple(float(v) for v in iso.y_thresholds_),
        )
    raise ValueError(f"unknown calibration method {method!r}; expected temperature, isotonic or none")


@dataclasses.dataclass(frozen=True)
class CalibrationChoice:
    """The calibrator kept and why (:func:`choose_calibrator`)."""

    calibrator: Calibrator
    """The kept calibrator, refitted on every held-out row (method "none" when calibration did not help)."""
    requested: str
    """The configured method."""
    kept: bool
    """Whether the requested method was kept."""
    ece_uncalibrated: float | None
    """ECE of the uncalibrated P(click | slot) on the held-out rows (None when not measured)."""
    ece_calibrated: float | None
    """ECE of the out-of-fold calibrated probabilities on the same rows (None when not measured)."""
    folds: int
    reason: str
    """One sentence for the run's log and metrics."""

    def to_dict(self) -> dict:
        return {
            "requested": self.requested,
            "kept": self.kept,
            "method": self.calibrator.method,
            "ece_uncalibrated": self.ece_uncalibrated,
            "ece_calibrated_out_of_fold": self.ece_calibrated,
            "folds": self.folds,
            "reason": self.reason,
        }


def choose_calibrator(
    method: str,
    logits: np.ndarray,
    examination: np.ndarray,
    clicked: np.ndarray,
    *,
    folds: int = 2,
    seed: int = 0,
    bins: int = 15,
) -> CalibrationChoice:
    """Fit ``method`` and keep it only if its cross-fitted ECE beats the uncalibrated head's (module docstring).

    Args:
        method: "temperature", "isotonic" or "none".
        logits, examination, clicked: the held-out impressions' attractiveness logits, θ of their slots and
            clicks (all [n]).
        folds: cross-fitting folds (>= 2); rows are assigned by a seeded permutation.
        seed: the permutation's seed.
        bins: ECE bins.

    Returns:
        The choice; when kept, the calibrator is refitted on all rows.
    """
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    if method == "none":
        reason = "calibration.method = none: left uncalibrated"
        return CalibrationChoice(Calibrator("none", note=reason), method, True, None, None, folds, reason)
    f = np.asarray(logits, dtype=np.float64)
    theta = np.asarray(examination, dtype=np.float64)
    y = np.asarray(clicked, dtype=bool)
    raw = theta * _sigmoid(f)
    fold = np.random.default_rng(seed).permutation(f.size) % folds
    calibrated = np.empty_like(raw)
    try:
        for k in range(folds):
            held = fold == k
            fitted = fit_calibrator(method, f[~held], theta[~held], y[~held])
            calibrated[held] = fitted.probability(f[held], theta[held])
    except ValueError as exc:
        reason = f"{method} calibration could not be assessed on held-out folds ({exc}): left uncalibrated"
        return CalibrationChoice(Calibrator("none", note=reason), method, False, None, None, folds, reason)
    before = expected_calibration_error(raw, y, bins)
    after = expected_calibration_error(calibrated, y, bins)
    measured = (
        f"held-out ECE {before:.4f} uncalibrated vs {after:.4f} {method} ({folds}-fold cross-fitted, {f.size:,} rows)"
    )
    if after < before:
        reason = f"{method} kept: {measured}"
        kept = dataclasses.replace(fit_calibrator(method, f, theta, y), note=reason)
        return CalibrationChoice(kept, method, True, before, after, folds, reason)
    reason = f"{method} dropped, it did not improve calibration: {measured}; the click head is left uncalibrated"
    return CalibrationChoice(Calibrator("none", note=reason), method, False, before, after, folds, reason)
