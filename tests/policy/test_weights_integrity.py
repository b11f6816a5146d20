"""Verified weights on the policy side: adapters, training checkpoints and base models carry SHA256SUMS, loads
refuse a flipped byte or NaN weights by name, and identical trainings write byte-identical adapters."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from offline_data.integrity import CHECKSUMS_FILE, WeightIntegrityError
from policy.checkpoint import load_checkpoint, save_checkpoint
from policy.lora import WEIGHT_NAME
from policy.model import STUDIO_TINY, InpaintPolicy
from tests.offline_data.test_integrity import flip_byte
from tests.policy.test_trainer import tiny_policy

ROOT = Path(__file__).resolve().parents[2]


def test_a_flipped_byte_in_an_adapter_is_refused_by_name(tmp_path: Path) -> None:
    tiny_policy().save_adapter(tmp_path)
    assert (tmp_path / CHECKSUMS_FILE).read_text().endswith(f"  {WEIGHT_NAME}\n")
    flip_byte(tmp_path / WEIGHT_NAME)
    with pytest.raises(
        WeightIntegrityError, match=rf"^{tmp_path / WEIGHT_NAME}: SHA-256 mismatch: expected [0-9a-f]{{64}}"
    ):
        tiny_policy().load_adapter(tmp_path)


def test_an_adapter_with_nan_weights_is_refused_by_tensor(tmp_path: Path) -> None:
    policy = tiny_policy()
    with torch.no_grad():
        policy.trainable_parameters()[0].fill_(math.nan)
    policy.save_adapter(tmp_path)  # the sums match: the file is what was written, and what was written is NaN
    with pytest.raises(WeightIntegrityError, match=r"tensor 'unet\..*lora_A.*' has \d+ NaN/infinite value"):
        tiny_policy().load_adapter(tmp_path)


def test_a_training_checkpoint_is_verified_and_needs_its_sums(tmp_path: Path) -> None:
    policy = tiny_policy()
    optimizer = torch.optim.AdamW(policy.trainable_parameters())
    folder = save_checkpoint(tmp_path, "epoch-000001", policy=policy, optimizer=optimizer, trainer_state={"epoch": 1})
    assert (folder / CHECKSUMS_FILE).read_text().count("\n") == 2  # tensors + adapter
    assert load_checkpoint(folder, policy=policy, optimizer=optimizer) == {"epoch": 1}
    flip_byte(folder / "tensors.safetensors")
    with pytest.raises(WeightIntegrityError, match="tensors.safetensors: SHA-256 mismatch"):
        load_checkpoint(folder, policy=policy, optimizer=optimizer)
    (folder / CHECKSUMS_FILE).unlink()
    with pytest.raises(WeightIntegrityError, match="this training checkpoint was written by backdrop but has no"):
        load_checkpoint(folder, policy=policy, optimizer=optimizer)


def test_the_base_model_is_verified_and_a_user_base_without_sums_loads(tmp_path: Path, caplog) -> None:
    base = tmp_path / "base"
    shutil.copytree(STUDIO_TINY, base)
    flip_byte(base / "unet" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(WeightIntegrityError, match="unet/diffusion_pytorch_model.safetensors: SHA-256 mismatch"):
        InpaintPolicy.from_pretrained(base)
    shutil.copy(STUDIO_TINY / "unet" / "diffusion_pytorch_model.safetensors", base / "unet")
    (base / CHECKSUMS_FILE).unlink()  # as a user's own checkpoint folder would be
    InpaintPolicy.from_pretrained(base)
    assert "base model has no SHA256SUMS: loading unverified weights" in caplog.text


SCRIPT = """
import sys
import torch
from policy.trainer import DDPOTrainer
from tests.policy.test_trainer import red_background, tiny_config, tiny_policy, tiny_requests
torch.set_num_threads(1)
policy = tiny_policy()
DDPOTrainer(policy, red_background, tiny_requests(4), tiny_config(epochs=1), seed=0).train()
policy.save_adapter(sys.argv[1])
"""


def test_identical_trainings_write_byte_identical_adapters(tmp_path: Path) -> None:
    # Separate processes with different string-hash seeds: peft's target_modules is a set, whose order followed the
    # hash seed, and safetensors' metadata map is seeded per process; both are written sorted now.
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / hash_seed)], check=True, env=env, cwd=ROOT,
                       capture_output=True, timeout=300)  # fmt: skip
    for name in (WEIGHT_NAME, CHECKSUMS_FILE):
        assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "2" / name).read_bytes(), name
