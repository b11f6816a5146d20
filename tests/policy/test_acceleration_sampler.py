"""The sampler's cached conditioning: one VAE encoding per distinct request object changes no result."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rollout.config import SamplerConfig
from rollout.sampler import sample_trajectories
from tests.policy.test_acceleration import tiny_policy, tiny_requests


def test_repeated_requests_encode_once_and_sample_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = tiny_policy()
    requests = tiny_requests(2)
    repeated = [requests[0], requests[1], requests[0], requests[1]]  # the trainer's samples_per_request repeats
    copies = [dataclasses.replace(r) for r in repeated]  # equal content, distinct objects: encoded one by one
    config = SamplerConfig(num_steps=3, guidance_scale=3.0, batch_size=4)
    encoded: list[int] = []
    encode = policy.encode_images
    monkeypatch.setattr(policy, "encode_images", lambda images: encoded.append(len(images)) or encode(images))
    cached = sample_trajectories(policy, repeated, [0, 1, 2, 3], config)
    plain = sample_trajectories(policy, copies, [0, 1, 2, 3], config)
    assert encoded == [2, 4]
    # The VAE encodes a batch of 2 on one path and of 4 on the other; the convolution backend may pick another
    # algorithm (and summation order) per batch size on another CPU, so the latents agree to float32 rounding and
    # the 8-bit images to one level, not bit for bit.
    torch.testing.assert_close(cached.trajectory.masked_image_latents, plain.trajectory.masked_image_latents,
                               rtol=0, atol=1e-5)  # fmt: skip
    torch.testing.assert_close(cached.trajectory.log_probs, plain.trajectory.log_probs, rtol=0, atol=1e-4)
    assert int((cached.images.int() - plain.images.int()).abs().max()) <= 1
