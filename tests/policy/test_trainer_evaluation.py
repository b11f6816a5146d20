"""Evaluation during training: paired gains, best-of-n, the evaluator's state, evaluation without gold."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from policy.evaluation import (
    EvaluationConfig,
    EvaluationProcesses,
    PolicyEvaluator,
    best_of_n,
    best_of_n_kl_bound,
    evaluation_share,
    gather_shares,
    paired_gain,
    plot_overoptimisation,
    share_sizes,
    within_request_sd,
)
from policy.lora import lora_parameters

from .test_trainer import SAMPLER, red_background, tiny_policy, tiny_requests


def test_paired_gain_and_within_request_sd_by_hand() -> None:
    base = torch.tensor([[0.0, 2.0], [1.0, 1.0]], dtype=torch.float64)
    # var of [0, 2] = 2, of [1, 1] = 0 -> pooled sd sqrt(1) = 1
    assert within_request_sd(base) == pytest.approx(1.0)
    values = torch.tensor([[1.0, 3.0], [0.0, 1.0]], dtype=torch.float64)  # per-request gains 1 and -0.5
    gain = paired_gain(values, base, scale=0.5)
    assert gain["gain"] == pytest.approx(0.25) and gain["gain_sd"] == pytest.approx(0.5)
    assert gain["improved"] == 0.5
    assert gain["gain_se"] == pytest.approx(torch.tensor([1.0, -0.5]).std().item() / 2**0.5)
    with pytest.raises(ValueError, match="K >= 2"):
        within_request_sd(torch.zeros(3, 1))


def test_best_of_n_picks_the_proxy_maximum() -> None:
    policy = tiny_policy()
    requests = tiny_requests(3, offset=20)

    def gold(images: torch.Tensor, batch) -> torch.Tensor:
        return -red_background(images, batch).double()  # gold disagrees with the proxy

    result = best_of_n(policy, requests, n=4, reward_fn=red_background, gold_fn=gold, sampler=SAMPLER, first_seed=5)
    assert result.proxy.shape == (3, 4) and result.gold.shape == (3, 4)
    assert torch.equal(result.chosen, result.proxy.argmax(dim=1))
    torch.testing.assert_close(result.chosen_gold, -result.proxy.max(dim=1).values.double(), rtol=1e-6, atol=1e-7)
    assert best_of_n_kl_bound(16) == pytest.approx(math.log(16) - 15 / 16)
    assert best_of_n_kl_bound(1) == 0.0


def test_evaluator_state_round_trips_and_the_base_scores_zero_gain() -> None:
    policy = tiny_policy()
    evaluator = PolicyEvaluator(
        tiny_requests(2, offset=30), reward_fn=red_background, gold_fn=red_background, sampler=SAMPLER,
        config=EvaluationConfig(seeds_per_request=3),
    )  # fmt: skip
    metrics = evaluator.evaluate(policy)
    # A fresh adapter is the base: the same noise gives the same samples, so every gain and the KL are 0.
    assert metrics["gold/gain"] == 0.0 and metrics["eval/proxy_gain_sd"] == 0.0 and metrics["eval/kl_nats"] == 0.0
    assert metrics["gold/engagement"] == metrics["gold/base_engagement"]
    state = json.loads(json.dumps(evaluator.state_dict()))
    restored = PolicyEvaluator(
        tiny_requests(2, offset=30), reward_fn=red_background, gold_fn=red_background, sampler=SAMPLER,
        config=EvaluationConfig(seeds_per_request=3),
    )  # fmt: skip
    restored.load_state_dict(state)
    assert torch.equal(restored.base(policy)["gold"], evaluator.base(policy)["gold"])
    other = PolicyEvaluator(tiny_requests(2), reward_fn=red_background, gold_fn=None, sampler=SAMPLER)
    with pytest.raises(ValueError, match="requests x seeds"):
        other.load_state_dict(state)


@dataclass(frozen=True)
class Scored:
    reward: torch.Tensor
    uncertainty: torch.Tensor


def uncertain_red(images: torch.Tensor, requests) -> Scored:
    """A reward in [0, 2] whose ensemble std is half of it: the lower bound mean - k std is (1 - k / 2) mean."""
    proxy = 1.0 + red_background(images, requests)
    return Scored(reward=proxy, uncertainty=0.5 * proxy)


def test_evaluation_without_gold_reports_the_proxy_its_lower_bound_and_the_kl() -> None:
    policy = tiny_policy()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in lora_parameters(policy.unet):  # move the adapter off the base
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))

    def evaluate(pessimism: float | None, training_pessimism: float) -> dict[str, float]:
        config = EvaluationConfig(seeds_per_request=3, pessimism=pessimism)
        evaluator = PolicyEvaluator(
            tiny_requests(2, offset=40), reward_fn=uncertain_red, gold_fn=None, sampler=SAMPLER, config=config,
            training_pessimism=training_pessimism,
        )  # fmt: skip
        return evaluator.evaluate(policy)

    default = evaluate(None, 0.0)
    assert not [name for name in default if name.startswith("gold/")]
    assert default["eval/kl_nats"] > 0 and default["eval/proxy_gain"] != 0 and default["eval/pessimism"] == 1.0
    assert default["eval/uncertainty_mean"] == pytest.approx(0.5 * default["eval/proxy_mean"], rel=1e-5)
    for name in ("gain", "gain_sd", "gain_se"):
        assert default[f"eval/pessimistic_{name}"] == pytest.approx(0.5 * default[f"eval/proxy_{name}"], rel=1e-4)
    as_trained = evaluate(None, 2.0)  # the trainer's lambda = 2: the lower bound is 0 everywhere
    assert as_trained["eval/pessimism"] == 2.0
    assert as_trained["eval/pessimistic_gain"] == pytest.approx(0.0, abs=1e-7)
    plain = evaluate(0.0, 2.0)  # an explicit k wins; k = 0 is the proxy itself
    assert plain["eval/pessimistic_gain"] == plain["eval/proxy_gain"] == default["eval/proxy_gain"]


def test_a_saved_base_without_its_ensemble_std_is_sampled_again() -> None:
    policy = tiny_policy()
    make = lambda: PolicyEvaluator(  # noqa: E731
        tiny_requests(2, offset=30), reward_fn=uncertain_red, gold_fn=None, sampler=SAMPLER,
        config=EvaluationConfig(seeds_per_request=2),
    )  # fmt: skip
    evaluator = make()
    base = evaluator.base(policy)
    state = evaluator.state_dict()
    assert state["base"]["uncertainty"] == base["uncertainty"].tolist()
    del state["base"]["uncertainty"]
    restored = make()
    restored.load_state_dict(state)
    assert torch.equal(restored.base(policy)["uncertainty"], base["uncertainty"])


def test_overoptimisation_plot_without_gold(tmp_path: Path) -> None:
    history = [
        {"epoch": e, "eval/kl_nats": kl, "eval/proxy_gain_sd": p, "eval/pessimistic_gain_sd": q, "eval/pessimism": 1.0}
        for e, kl, p, q in [(0, 0.0, 0.0, 0.0), (10, 5.0, 0.8, 0.5), (20, 12.0, 1.5, 0.3)]
    ]  # fmt: skip
    path = plot_overoptimisation(history, tmp_path / "curve.png")
    assert path.stat().st_size > 5000


def test_overoptimisation_plot(tmp_path: Path) -> None:
    history = [
        {"epoch": e, "eval/kl_nats": kl, "eval/proxy_gain_sd": p, "gold/gain_sd": g, "gold/gain_se": 0.05,
         "gold/base_within_sd": 0.5}
        for e, kl, p, g in [(0, 0.0, 0.0, 0.0), (10, 5.0, 0.8, 0.4), (20, 12.0, 1.5, 0.2)]
    ] + [{"epoch": 5, "policy/kl": 0.1}]  # fmt: skip
    path = plot_overoptimisation(history, tmp_path / "curve.png")
    assert path.stat().st_size > 5000


@pytest.mark.parametrize(("samples", "processes"), [(8, 1), (8, 2), (9, 2), (10, 4), (4, 3), (3, 5), (0, 2)])
def test_process_shares_are_balanced_blocks_that_cover_every_sample_once(samples: int, processes: int) -> None:
    shares = [evaluation_share(samples, processes, p) for p in range(processes)]
    assert [i for share in shares for i in share] == list(range(samples))  # in order, each exactly once
    sizes = [len(share) for share in shares]
    assert sizes == share_sizes(samples, processes) and max(sizes) - min(sizes) <= 1
    # Gathering: each process pads its block to ceil(N / P) rows; the padding must not reach the gathered table.
    table = torch.arange(1, samples + 1, dtype=torch.float64)[:, None].expand(-1, 3)  # no zero row anywhere
    width = max(sizes)
    blocks = [torch.zeros(width, 3, dtype=torch.float64) for _ in shares]
    for block, share in zip(blocks, shares):
        block[: len(share)] = table[share.start : share.stop]
    for p, share in enumerate(shares):

        def gather(padded: torch.Tensor, p: int = p) -> torch.Tensor:
            assert torch.equal(padded, blocks[p])  # this process's block, zero-padded to the common width
            return torch.cat(blocks)

        processes_view = EvaluationProcesses(index=p, count=processes, gather=gather if processes > 1 else None)
        got = gather_shares(table[share.start : share.stop], samples, processes_view)
        assert torch.equal(got, table) and got.dtype == torch.float64


def test_evaluator_share_is_the_request_major_block_with_fixed_seeds() -> None:
    evaluator = PolicyEvaluator(
        tiny_requests(3), reward_fn=red_background, gold_fn=None, sampler=SAMPLER,
        config=EvaluationConfig(seeds_per_request=3, first_seed=100),
    )  # fmt: skip
    pairs = []
    for p in range(2):
        requests, seeds = evaluator.share(EvaluationProcesses(index=p, count=2, gather=torch.clone))
        pairs.append(list(zip([r.request_id for r in requests], seeds)))
    # 9 samples over 2 processes: 4 and 5; request r's k-th sample has seed 100 + 3 r + k whoever samples it.
    assert [len(share) for share in pairs] == [4, 5]
    assert pairs[0] + pairs[1] == [(f"r{r}", 100 + 3 * r + k) for r in range(3) for k in range(3)]
    one_requests, one_seeds = evaluator.share()
    assert list(zip([r.request_id for r in one_requests], one_seeds)) == pairs[0] + pairs[1]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"index": 2, "count": 2}, r"process index must be in 0..count - 1 with count >= 1, got 2 of 2"),
        ({"index": 0, "count": 0}, "got 0 of 0"),
        ({"index": 1, "count": 2}, "2 processes need a gather callable"),
    ],
)
def test_evaluation_processes_refuse_bad_values(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EvaluationProcesses(**changes)


def test_gather_shares_refuses_a_table_of_the_wrong_length() -> None:
    view = EvaluationProcesses(index=1, count=2, gather=torch.clone)
    with pytest.raises(ValueError, match=r"process 1 holds 5 of 9 samples but its table is \[4\]"):
        gather_shares(torch.zeros(4), 9, view)
    with pytest.raises(ValueError, match=r"gather returned \[5\], expected \[10\]"):
        gather_shares(torch.zeros(5), 9, view)  # a gather that returned only this process's rows
