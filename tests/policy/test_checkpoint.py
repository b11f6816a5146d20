"""Checkpoints: optimiser, adapter and RNG states round-trip exactly; bad checkpoints fail with named errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from offline_data.integrity import WeightIntegrityError, write_checksums
from policy.checkpoint import (
    CheckpointError,
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)

from .test_trainer import tiny_policy


def trained(steps: int = 2):
    policy = tiny_policy()
    params = policy.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = sum((p * torch.randn(p.shape, generator=generator)).sum() for p in params)
        loss.backward()
        optimizer.step()
    return policy, optimizer


def test_adapter_and_optimizer_round_trip_exactly(tmp_path: Path) -> None:
    policy, optimizer = trained()
    folder = save_checkpoint(tmp_path, "epoch-000002", policy=policy, optimizer=optimizer, trainer_state={"epoch": 2})
    assert sorted(p.name for p in folder.iterdir()) == ["SHA256SUMS", "adapter", "state.json", "tensors.safetensors"]
    assert latest_checkpoint(tmp_path) == folder

    fresh = tiny_policy(init_seed=0)
    fresh_optimizer = torch.optim.AdamW(fresh.trainable_parameters(), lr=0.5)
    state = load_checkpoint(folder, policy=fresh, optimizer=fresh_optimizer)
    assert state == {"epoch": 2}
    for got, want in zip(fresh.trainable_parameters(), policy.trainable_parameters()):
        assert torch.equal(got, want)
    assert fresh_optimizer.param_groups[0]["lr"] == 1e-2
    want_state, got_state = optimizer.state_dict()["state"], fresh_optimizer.state_dict()["state"]
    assert want_state.keys() == got_state.keys()
    for index in want_state:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(got_state[index][name], want_state[index][name])
    # The optimiser holds the policy's own parameters (loaded in place), so a step after resuming trains them.
    assert fresh_optimizer.param_groups[0]["params"][0] is fresh.trainable_parameters()[0]


def test_rng_states_round_trip() -> None:
    json_part, tensors = capture_rng_state()
    json_part = json.loads(json.dumps(json_part))  # what the checkpoint file holds
    first = (random.random(), np.random.rand(), torch.rand(2))
    restore_rng_state(json_part, tensors)
    second = (random.random(), np.random.rand(), torch.rand(2))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


def test_a_newer_checkpoint_replaces_the_pointer_and_a_partial_one_is_ignored(tmp_path: Path) -> None:
    policy, optimizer = trained(1)
    save_checkpoint(tmp_path, "epoch-000001", policy=policy, optimizer=optimizer, trainer_state={})
    (tmp_path / ".epoch-000002.partial").mkdir()  # a run killed while writing the next one
    assert latest_checkpoint(tmp_path).name == "epoch-000001"
    save_checkpoint(tmp_path, "epoch-000002", policy=policy, optimizer=optimizer, trainer_state={})
    assert latest_checkpoint(tmp_path).name == "epoch-000002"
    assert not (tmp_path / ".epoch-000002.partial").exists()


def test_bad_checkpoints_are_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        latest_checkpoint(tmp_path)
    (tmp_path / "latest.json").write_text('{"checkpoint": "epoch-000009"}')
    with pytest.raises(CheckpointError, match="epoch-000009, which does not exist"):
        latest_checkpoint(tmp_path)

    policy, optimizer = trained(1)
    folder = save_checkpoint(tmp_path, "epoch-000001", policy=policy, optimizer=optimizer, trainer_state={})
    state = json.loads((folder / "state.json").read_text())
    (folder / "state.json").write_text(json.dumps({**state, "version": 99}))
    with pytest.raises(CheckpointError, match="expected format 'backdrop.policy_checkpoint' version 1, got"):
        load_checkpoint(folder, policy=policy, optimizer=optimizer)
    (folder / "state.json").write_text(json.dumps(state))

    other_policy = tiny_policy()
    too_few = torch.optim.AdamW(other_policy.trainable_parameters()[:3])
    with pytest.raises(CheckpointError, match="optimiser state does not fit this optimiser"):
        load_checkpoint(folder, policy=other_policy, optimizer=too_few)

    (folder / "tensors.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(WeightIntegrityError, match="tensors.safetensors: SHA-256 mismatch"):
        load_checkpoint(folder, policy=policy, optimizer=optimizer)
    write_checksums(folder)  # the list agrees with the broken file: reading it is what fails now
    with pytest.raises(CheckpointError, match="unreadable checkpoint tensors"):
        load_checkpoint(folder, policy=policy, optimizer=optimizer)
    (folder / "tensors.safetensors").unlink()
    with pytest.raises(CheckpointError, match="tensors.safetensors: checkpoint file not found"):
        load_checkpoint(folder, policy=policy, optimizer=optimizer)
