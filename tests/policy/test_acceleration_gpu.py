"""The GPU fast path end to end on a tiny policy: inductor, CUDA graphs, bf16 weights, replayed old log-probs.

Marked ``gpu`` (skipped without CUDA; CI has none): the CPU tests in test_acceleration.py check the tracing with
dynamo's "eager" backend, these check inductor's kernels and CUDA-graph replay, which only exist on a GPU. Run them
first on a device session: ``pytest -m gpu tests/policy/test_acceleration_gpu.py`` (about a minute, mostly
compilation).
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from policy.acceleration_config import AccelerationConfig
from policy.config import LoraConfig
from policy.model import InpaintPolicy
from policy.trainer import DDPOTrainer
from policy.trainer_config import DDPOConfig, OptimConfig
from rollout.config import SamplerConfig
from tests.policy.test_acceleration import TINY, WORDS, mean_red, run_epoch, tiny_requests

BF16_LORA = AccelerationConfig(lora_compute="model_dtype", reference_gate=True)


def trainer_on(device: str, acceleration: AccelerationConfig, *, old_log_probs: str = "replay") -> DDPOTrainer:
    """Two requests x 2 samples, 3 steps, one optimiser step per epoch, bf16 frozen weights on ``device``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        policy = InpaintPolicy.from_config(
            TINY, lora=LoraConfig(), vocabulary=WORDS, device=device, dtype=torch.bfloat16
        )
    config = DDPOConfig(
        epochs=2,
        requests_per_epoch=2,
        samples_per_request=2,
        sampler=SamplerConfig(num_steps=3, guidance_scale=3.0, batch_size=4),
        # reference calls of 2 x 2 rows: the sampler's shape, so sampling and the reference share a graph
        optim=OptimConfig(samples_per_step=4, rows_per_forward=2, old_log_probs=old_log_probs),
        eval_every=0,
        acceleration=acceleration,
    )
    return DDPOTrainer(policy, mean_red, tiny_requests(2), config, seed=0)


def compiled_epochs(device: str, acceleration: AccelerationConfig) -> tuple[list[dict[str, float]], int]:
    """Two epochs with ``acceleration``; the second must not recompile. Returns the records and the graph count."""
    torch._dynamo.reset()
    counters.clear()
    trainer = trainer_on(device, acceleration)
    records = [run_epoch(trainer)]
    graphs = counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(error_on_recompile=True):
        records.append(run_epoch(trainer))
    assert counters["stats"]["unique_graphs"] == graphs
    torch._dynamo.reset()
    return records, graphs


def check_fast_path(device: str, acceleration: AccelerationConfig) -> None:
    eager_trainer = trainer_on(device, BF16_LORA)
    eager = [run_epoch(eager_trainer) for _ in range(2)]
    compiled, graphs = compiled_epochs(device, acceleration)
    assert graphs == 2  # sampling + gated reference, and training
    for got, expected in zip(compiled, eager):
        assert got["preservation/max_abs_diff"] == 0.0
        # one optimiser step per epoch with replayed old log-probs: r = 1 exactly, whatever bf16 rounding does
        assert got["policy/ratio_mean"] == 1.0 and got["policy/clipfrac"] == 0.0
        # bf16 kernels of inductor vs eager: agreement to bf16 precision, not bit-exactly
        for key in ("reward/mean", "rollout/log_prob_mean"):
            assert got[key] == pytest.approx(expected[key], rel=2e-2, abs=1e-3), key
    assert compiled[0]["policy/kl"] == 0.0 and compiled[1]["policy/kl"] > 0.0


def test_the_check_itself_runs_on_a_cpu_with_dynamo_eager() -> None:
    """The GPU tests' helper, exercised on a CPU (dynamo's "eager" backend, no CUDA graphs), so that a device
    session does not discover a broken test."""
    check_fast_path("cpu", AccelerationConfig(**{**BF16_LORA.__dict__, "compile": True, "compile_backend": "eager"}))


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["inductor", "inductor+cuda-graphs"])
def test_inductor_and_cuda_graphs_train_like_eager(cuda_graphs: bool) -> None:
    fast = AccelerationConfig(
        **{**BF16_LORA.__dict__, "compile": True, "cuda_graphs": cuda_graphs, "cudnn_benchmark": True}
    )
    check_fast_path("cuda", fast)


@pytest.mark.gpu
def test_sampler_log_probs_show_the_bf16_gap_that_replay_removes() -> None:
    """On a GPU the sampler's and the trainer's bf16 calls round differently; the gap is reported either way."""
    records = {}
    for mode in ("sampler", "replay"):
        trainer = trainer_on("cuda", BF16_LORA, old_log_probs=mode)
        records[mode] = run_epoch(trainer)
    assert records["replay"]["policy/clipfrac"] == 0.0
    assert records["sampler"]["policy/log_prob_gap"] == pytest.approx(records["replay"]["policy/log_prob_gap"])
