"""Finite or refused: the named error for a run that went non-finite, the checks that raise it, strict JSON.

A NaN or an infinity in a loss, a gradient norm, a KL, a reward or a weight never recovers: AdamW carries it into
every weight it touches, and every later number of the run is meaningless. So trainers check what they already
read back once per epoch (losses, gradient norms, KL, rewards) and their trainable weights, and stop at the first
non-finite value with :class:`NonFiniteError`, before anything of that epoch (checkpoint, adapter, summary) is
written: the last checkpoint on disk is the last good one.

Reports are strict JSON (RFC 8259 has no NaN or Infinity; ``json.dumps`` writes them bare by default, which other
readers refuse). :func:`strict_json` turns non-finite floats into ``null`` and returns where they were, so a writer
can name them instead of hiding them.

This module sits at the root of the dependency graph (beside ``offline_data.errors``) because ``reward``,
``policy`` and ``experiments`` all use it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from offline_data.errors import BackdropError

if TYPE_CHECKING:
    import torch

NON_FINITE_KEY = "non_finite"
"""Key under which a strict JSON object lists the paths of the values written as null because they were NaN/inf."""


class NonFiniteError(BackdropError):
    """Training produced a NaN or infinite loss, gradient, KL, reward or weight; the run stopped at that point."""

    exit_code = 6


def first_non_finite(values: Mapping[str, Any]) -> tuple[str, float] | None:
    """The first ``(name, value)`` of ``values`` (floats, ints or 0-d tensors) that is NaN or infinite, else None."""
    for name, value in values.items():
        number = float(value)
        if not math.isfinite(number):
            return name, number
    return None


def check_finite(values: Mapping[str, Any], where: str, *, after: str = "") -> None:
    """Raise :class:`NonFiniteError` naming the first non-finite value of ``values``.

    Args:
        values: name -> number (float or 0-d tensor; reading a tensor waits for its device).
        where: the point of the run, e.g. ``"epoch 3"``; starts the message.
        after: what to tell the user after the value, e.g. where the last good checkpoint is.
    """
    bad = first_non_finite(values)
    if bad is not None:
        name, value = bad
        raise NonFiniteError(f"{where}: {name} is {value}; training stopped{after}")


def first_non_finite_tensor(tensors: Iterable[tuple[str, torch.Tensor]]) -> tuple[str, int, int] | None:
    """``(name, non-finite count, size)`` of the first floating-point tensor with a NaN or inf entry, else None."""
    import torch  # here, not at the top: the log-handling half of offline_data never needs torch

    floats = [(name, tensor) for name, tensor in tensors if tensor.is_floating_point()]
    finite = [True] * len(floats)
    by_device: dict[torch.device, list[int]] = {}
    for index, (_, tensor) in enumerate(floats):
        by_device.setdefault(tensor.device, []).append(index)
    for indices in by_device.values():  # one read-back per device, not one per tensor (hundreds of LoRA tensors)
        flags = torch.stack([torch.isfinite(floats[i][1]).all() for i in indices]).tolist()
        for index, flag in zip(indices, flags):
            finite[index] = flag
    for (name, tensor), ok in zip(floats, finite):
        if not ok:
            return name, int((~torch.isfinite(tensor)).sum()), tensor.numel()
    return None


def check_finite_tensors(tensors: Iterable[tuple[str, torch.Tensor]], where: str, *, after: str = "") -> None:
    """Raise :class:`NonFiniteError` naming the first tensor with a NaN or infinite entry, and how many it has."""
    bad = first_non_finite_tensor(tensors)
    if bad is not None:
        name, count, size = bad
        raise NonFiniteError(f"{where}: {name} has {count} non-finite value(s) of {size}; training stopped{after}")


def strict_json(payload: Any) -> tuple[Any, list[str]]:
    """``payload`` ready for ``json.dumps(..., allow_nan=False)``, and the dotted paths of its non-finite values.

    Every NaN/inf float becomes None; an object payload gains :data:`NON_FINITE_KEY` listing their paths (absent
    when every value is finite). Dicts, lists and tuples are walked (tuples become lists); numpy scalars and 0-d
    tensors become Python numbers.
    """
    clean, paths = _nulls_for_non_finite(payload, "")
    if paths and isinstance(clean, dict):
        clean[NON_FINITE_KEY] = paths
    return clean, paths


def dumps_strict(payload: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`strict_json` ``(payload)``: never a bare NaN or Infinity."""
    return json.dumps(strict_json(payload)[0], allow_nan=False, **kwargs)


def _nulls_for_non_finite(value: Any, path: str) -> tuple[Any, list[str]]:
    if isinstance(value, Mapping):
        items, paths = {}, []
        for key, item in value.items():
            items[key], found = _nulls_for_non_finite(item, f"{path}.{key}" if path else str(key))
            paths += found
        return items, paths
    if isinstance(value, list | tuple):
        items, paths = [], []
        for index, item in enumerate(value):
            clean, found = _nulls_for_non_finite(item, f"{path}[{index}]")
            items.append(clean)
            paths += found
        return items, paths
    if not isinstance(value, float) and hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()  # numpy scalars and 0-d tensors
    if isinstance(value, float) and not math.isfinite(value):
        return None, [path or "<value>"]
    return value, []
