"""Finite or refused: the checks name the first bad value; strict JSON has no bare NaN and names its nulls."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from offline_data.finite import NonFiniteError, check_finite, check_finite_tensors, dumps_strict, strict_json


def test_check_finite_names_the_first_bad_value_in_order() -> None:
    check_finite({"loss": 1.0, "kl": torch.tensor(0.5)}, "epoch 1")  # all finite: nothing happens
    with pytest.raises(NonFiniteError, match=r"^epoch 3: kl is inf; training stopped; see x$"):
        check_finite({"loss": 1.0, "kl": torch.tensor(math.inf), "reward": math.nan}, "epoch 3", after="; see x")


def test_check_finite_tensors_counts_the_bad_entries_and_skips_integer_tensors() -> None:
    weights = torch.zeros(2, 3)
    weights[1, 2] = math.nan
    check_finite_tensors([("steps", torch.tensor([1, 2]))], "here")
    with pytest.raises(NonFiniteError, match=r"^here: lora_B has 1 non-finite value\(s\) of 6; training stopped$"):
        check_finite_tensors([("lora_A", torch.ones(3)), ("lora_B", weights)], "here")


def test_strict_json_writes_null_and_names_every_non_finite_path() -> None:
    payload = {"a": math.nan, "b": [1.0, np.float32(np.inf), torch.tensor(2.0)], "c": {"d": -math.inf}, "e": "x"}
    clean, paths = strict_json(payload)
    assert paths == ["a", "b[1]", "c.d"]
    assert clean == {"a": None, "b": [1.0, None, 2.0], "c": {"d": None}, "e": "x", "non_finite": paths}
    text = dumps_strict(payload)
    assert "NaN" not in text and "Infinity" not in text and json.loads(text) == clean
    assert dumps_strict({"a": 1.5}) == '{"a": 1.5}'  # nothing added when every value is finite
    assert dumps_strict([math.nan]) == "[null]"
