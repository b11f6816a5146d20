"""Logged slotted impressions and a candidate policy's view of them, laid out as dense [requests, slots] arrays.

The setting (docs/architecture.md, "The pipeline"): request i (context x_i, the independent unit) shows slots k =
1..S; in slot k the logging policy π0 chose one action a_ik (an image among the product's candidate variants) with
the logged propensity π0(a_ik | x_i, k), and reward r_ik was observed (a click, or any per-impression engagement
value). A candidate policy π_e is represented only through what the estimators need on the logged rows:

- ``candidate_propensity``: π_e(a_ik | x_i, k), the candidate's probability of the logged action;
- ``dm_prediction``: Σ_a π_e(a | x_i, k) q̂(x_i, k, a), the reward model's expected reward of the candidate
  in that slot (see :func:`expected_reward`); needed by DM and DR;
- ``dm_logged``: q̂(x_i, k, a_ik), the reward model's prediction for the logged action; needed by DR;
- ``unsupported_mass`` (optional): Σ_a π_e(a | x_i, k) 1[π0(a | x_i, k) = 0], the candidate's mass on actions the
  logger never takes (see :func:`unsupported_mass`); only computable from full action distributions.

Callers pass flat per-impression arrays in any row order (one row per impression, as in the impressions
table); the builders check every row and scatter them into [n, S] arrays, keeping each impression's input row
for error messages. Bad values raise :class:`~offline_data.errors.LogValidationError` naming the source, the
1-based row, the column, the expectation and the value found (first problems of the table, not just one);
inconsistent array shapes are programming errors and raise ``ValueError``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from offline_data.errors import LogValidationError

MAX_REPORTED_PROBLEMS = 5
"""How many row problems an error message lists before summarising the rest."""


@dataclasses.dataclass(frozen=True, eq=False)
class ImpressionLog:
    """Logged impressions, dense by request (rows, sorted by request id) and slot (columns, position - 1).

    Attributes:
        request_ids: [n] the request id of each dense row.
        present: [n, S] bool, slot k of request i was shown.
        reward: [n, S] float64, observed reward; 0 where absent.
        propensity: [n, S] float64, π0(a_ik | x_i, k); NaN where absent or not logged, may be 0 (a logged
            impression outside the randomisation, e.g. an editorial override; a support violation for any
            candidate that would show it).
        row: [n, S] int64, 0-based index of the impression in the caller's flat arrays; -1 where absent.
        source: what the rows came from (a file path, or ``<arrays>``), used in messages.
    """

    request_ids: np.ndarray
    present: np.ndarray
    reward: np.ndarray
    propensity: np.ndarray
    row: np.ndarray
    source: str = "<arrays>"

    @property
    def n_requests(self) -> int:
        return int(self.present.shape[0])

    @property
    def n_slots(self) -> int:
        return int(self.present.shape[1])

    @property
    def n_impressions(self) -> int:
        return int(self.present.sum())

    def missing_propensity_rows(self) -> np.ndarray:
        """1-based input rows of present impressions without a logged propensity, in input order."""
        missing = self.present & np.isnan(self.propensity)
        return np.sort(self.row[missing]) + 1

    def scatter(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Place flat per-impression ``values`` [N] (caller's row order) into the dense layout [n, S]."""
        dense = np.full(self.present.shape, fill, dtype=np.float64)
        dense[self.present] = values[self.row[self.present]]
        return dense


@dataclasses.dataclass(frozen=True, eq=False)
class CandidatePolicy:
    """A candidate policy π_e seen through the logged impressions of one :class:`ImpressionLog`.

    Attributes:
        name: label used in results (``candidate``, a model version, ...).
        propensity: [n, S] float64, π_e(a_ik | x_i, k) of the logged action; 0 where absent.
        dm_prediction: [n, S] float64 or None, Σ_a π_e(a | x_i, k) q̂(x_i, k, a); 0 where absent.
        dm_logged: [n, S] float64 or None, q̂(x_i, k, a_ik); 0 where absent.
        unsupported_mass: [n, S] float64 or None, π_e's mass on actions with π0 = 0; 0 where absent.
    """

    name: str
    propensity: np.ndarray
    dm_prediction: np.ndarray | None = None
    dm_logged: np.ndarray | None = None
    unsupported_mass: np.ndarray | None = None


def build_impression_log(
    request_id: Sequence[object] | np.ndarray,
    position: Sequence[int] | np.ndarray,
    reward: Sequence[float] | np.ndarray,
    propensity: Sequence[float] | np.ndarray | None = None,
    *,
    source: str = "<arrays>",
) -> ImpressionLog:
    """Check flat per-impression arrays and lay them out by request and slot.

    Args:
        request_id: [N] request (page view) of each impression; any hashable, compared by value.
        position: [N] int, 1-based slot.
        reward: [N] float, finite observed reward (clicked as 0/1, or an engagement value).
        propensity: [N] float in [0, 1], π0 of the logged action; NaN (or None for the whole column) = not logged.
        source: name of the input, used in error messages.

    Raises:
        ValueError: the arrays are not 1-D of one common, non-zero length.
        LogValidationError: a position below 1 or not an integer, a non-finite reward, a propensity outside
            [0, 1], or a (request_id, position) pair that occurs twice.
    """
    request_id = np.asarray(request_id)
    position_raw = np.asarray(position)
    reward_arr = np.asarray(reward, dtype=np.float64)
    n_rows = _common_length(source, request_id=request_id, position=position_raw, reward=reward_arr)
    if propensity is None:
        prop_arr = np.full(n_rows, np.nan)
    else:
        prop_arr = np.asarray(propensity, dtype=np.float64)
        _common_length(source, request_id=request_id, propensity=prop_arr)

    problems: list[str] = []
    missing_id = np.array([v is None or (isinstance(v, float) and np.isnan(v)) for v in request_id.tolist()])
    total = _collect(problems, missing_id, "request_id", "non-empty id", request_id)
    position_float = position_raw.astype(np.float64)
    bad_position = ~(
        np.isfinite(position_float) & (position_float >= 1) & (position_float == np.round(position_float))
    )
    total += _collect(problems, bad_position, "position", "integer >= 1", position_raw)
    total += _collect(problems, ~np.isfinite(reward_arr), "reward", "finite number", reward_arr)
    bad_prop = ~np.isnan(prop_arr) & ~((prop_arr >= 0) & (prop_arr <= 1))
    total += _collect(problems, bad_prop, "propensity", "number in [0, 1] (or missing)", prop_arr)
    if total:
        _raise(source, problems, total=total)

    slot = position_float.astype(np.int64) - 1
    request_ids, request_index = np.unique(request_id, return_inverse=True)
    n_requests, n_slots = len(request_ids), int(slot.max()) + 1
    flat_cell = request_index * n_slots + slot
    order = np.argsort(flat_cell, kind="stable")
    repeated = np.flatnonzero(flat_cell[order][1:] == flat_cell[order][:-1])
    if repeated.size:
        for j in repeated[:MAX_REPORTED_PROBLEMS]:
            first, again = order[j], order[j + 1]
            problems.append(
                f"row {again + 1}: request_id {_show(request_id[again])} already shows position {slot[again] + 1} "
                f"(row {first + 1}); expected one impression per (request_id, position)"
            )
        _raise(source, problems, total=repeated.size)

    row = np.full(n_requests * n_slots, -1, dtype=np.int64)
    row[flat_cell] = np.arange(n_rows)
    row = row.reshape(n_requests, n_slots)
    present = row >= 0
    log = ImpressionLog(
        request_ids=request_ids,
        present=present,
        reward=np.zeros(present.shape),
        propensity=np.full(present.shape, np.nan),
        row=row,
        source=source,
    )
    return dataclasses.replace(log, reward=log.scatter(reward_arr), propensity=log.scatter(prop_arr, fill=np.nan))


def build_candidate(
    log: ImpressionLog,
    candidate_propensity: Sequence[float] | np.ndarray,
    *,
    name: str = "candidate",
    dm_prediction: Sequence[float] | np.ndarray | None = None,
    dm_logged: Sequence[float] | np.ndarray | None = None,
    unsupported_mass: Sequence[float] | np.ndarray | None = None,
    source: str = "<arrays>",
    source_rows: np.ndarray | None = None,
) -> CandidatePolicy:
    """Check a candidate's flat per-impression arrays (same row order as the log's input) and lay them out.

    Args:
        log: the impressions these rows belong to.
        candidate_propensity: [N] π_e(a_ik | x_i, k) in [0, 1].
        name: label used in results.
        dm_prediction: [N] finite, the reward model's expected reward of π_e in the slot (for DM and DR).
        dm_logged: [N] finite, the reward model's prediction for the logged action (for DR).
        unsupported_mass: [N] in [0, 1], π_e's mass on actions the logger never takes.
        source: name of the input, used in error messages.
        source_rows: [N] int, the 1-based row of each value in ``source`` when the caller reordered the rows
            (a scores file joined onto the impressions); default: position in the arrays + 1.

    Raises:
        ValueError: an array's length differs from the log's number of impressions.
        LogValidationError: a value outside its range (row, column and value named).
    """
    n_rows = log.n_impressions
    columns = {
        "candidate_propensity": candidate_propensity,
        "dm_prediction": dm_prediction,
        "dm_logged": dm_logged,
        "unsupported_mass": unsupported_mass,
    }
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in columns.items() if v is not None}
    for key, values in arrays.items():
        if values.ndim != 1 or len(values) != n_rows:
            raise ValueError(
                f"{source}: {key} must be 1-D with one value per logged impression ({n_rows}), got shape "
                f"{values.shape}"
            )
    problems: list[str] = []
    in_unit = ("number in [0, 1]", lambda v: np.isfinite(v) & (v >= 0) & (v <= 1))
    finite = ("finite number", np.isfinite)
    checks = {
        "candidate_propensity": in_unit,
        "dm_prediction": finite,
        "dm_logged": finite,
        "unsupported_mass": in_unit,
    }
    total = 0
    for key, values in arrays.items():
        expected, is_ok = checks[key]
        total += _collect(problems, ~is_ok(values), key, expected, values, rows=source_rows)
    if total:
        _raise(source, problems, total=total)
    dense = {key: log.scatter(values) for key, values in arrays.items()}
    return CandidatePolicy(
        name=name,
        propensity=dense["candidate_propensity"],
        dm_prediction=dense.get("dm_prediction"),
        dm_logged=dense.get("dm_logged"),
        unsupported_mass=dense.get("unsupported_mass"),
    )


def expected_reward(target_probs: np.ndarray, predictions: np.ndarray, *, atol: float = 1e-6) -> np.ndarray:
    """The direct-method slot value Σ_a π_e(a | x, k) q̂(x, k, a) for each impression.

    Args:
        target_probs: [N, A] float, π_e over the A candidate actions of each impression's slot; each row sums
            to 1 (within ``atol``). Pad impressions with fewer actions with probability 0.
        predictions: [N, A] float, the reward model's q̂(x, k, a); padded entries may hold anything finite.
        atol: tolerance on each row's probability sum.

    Returns:
        [N] float64, the ``dm_prediction`` column.
    """
    target_probs, predictions = _check_action_matrices(target_probs, predictions, atol=atol)
    return (target_probs * predictions).sum(axis=1)


def unsupported_mass(target_probs: np.ndarray, logging_probs: np.ndarray, *, atol: float = 1e-6) -> np.ndarray:
    """Σ_a π_e(a | x, k) 1[π0(a | x, k) = 0]: the candidate's mass that no logged row can ever reweight.

    IPS-type estimators are biased down by exactly this mass times the reward those actions would earn, and no
    amount of data reveals it, so :func:`experiments.ope.weights.check_overlap` refuses when it is not ~0.

    Args:
        target_probs: [N, A] float, π_e over each impression's candidate actions (rows sum to 1).
        logging_probs: [N, A] float, π0 over the same actions (rows sum to 1).
        atol: tolerance on each row's probability sum.

    Returns:
        [N] float64 in [0, 1], the ``unsupported_mass`` column.
    """
    target_probs, logging_probs = _check_action_matrices(target_probs, logging_probs, atol=atol)
    _check_action_matrices(logging_probs, target_probs, atol=atol)
    return np.where(logging_probs <= 0, target_probs, 0.0).sum(axis=1)


def _check_action_matrices(probs: np.ndarray, other: np.ndarray, *, atol: float) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    other = np.asarray(other, dtype=np.float64)
    if probs.ndim != 2 or probs.shape != other.shape:
        raise ValueError(f"expected two [N, A] matrices of one shape, got {probs.shape} and {other.shape}")
    if not np.all(np.isfinite(other)):
        raise ValueError("action matrices must be finite (pad missing actions with probability 0)")
    bad = ~np.isfinite(probs) | (probs < 0) | (probs > 1)
    if bad.any():
        i, a = np.argwhere(bad)[0]
        raise ValueError(f"probabilities must be in [0, 1]; row {i + 1}, action {a + 1} holds {_show(probs[i, a])}")
    sums = probs.sum(axis=1)
    off = np.flatnonzero(np.abs(sums - 1) > atol)
    if off.size:
        raise ValueError(
            f"each row of action probabilities must sum to 1 (±{atol:g}); {off.size} row(s) do not, first: "
            f"row {off[0] + 1} sums to {sums[off[0]]:.6g}"
        )
    return probs, other


def _common_length(source: str, **arrays: np.ndarray) -> int:
    lengths = {k: (v.shape[0] if v.ndim == 1 else None) for k, v in arrays.items()}
    if any(n is None for n in lengths.values()) or len(set(lengths.values())) != 1:
        shapes = ", ".join(f"{k}: {v.shape}" for k, v in arrays.items())
        raise ValueError(f"{source}: expected 1-D arrays of one length, got {shapes}")
    n_rows = next(iter(lengths.values()))
    if n_rows == 0:
        raise ValueError(f"{source}: no impressions (all arrays are empty)")
    return int(n_rows)


def _collect(
    problems: list[str],
    bad: np.ndarray,
    column: str,
    expected: str,
    values: np.ndarray,
    rows: np.ndarray | None = None,
) -> int:
    """Describe the first bad rows of one column into ``problems``; return how many rows are bad.

    ``rows`` [N] gives each value's 1-based row in the source (default: index + 1); problems are listed in
    source-row order.
    """
    index = np.flatnonzero(bad)
    row_of = (index + 1) if rows is None else np.asarray(rows)[index]
    order = np.argsort(row_of, kind="stable")[:MAX_REPORTED_PROBLEMS]
    for i, row in zip(index[order], row_of[order]):
        problems.append(f"row {row}, column '{column}': expected {expected}, got {_show(values[i])}")
    return int(bad.sum())


def _show(value: object) -> str:
    # numpy scalars repr as np.float64(1.5); users wrote 1.5.
    return repr(value.item() if isinstance(value, np.generic) else value)


def _raise(source: str, problems: list[str], *, total: int) -> None:
    shown = problems[: MAX_REPORTED_PROBLEMS * 4]
    raise LogValidationError(f"{source}: {total} problem(s); first {len(shown)}:\n  " + "\n  ".join(shown))
