"""The one-line evaluation summary the policy commands print, with and without gold."""

from __future__ import annotations

from experiments.policy_runs.train import describe_evaluation

WITHOUT_GOLD = {
    "epoch": 4, "eval/kl_nats": 1.234, "eval/proxy_gain": 0.05, "eval/proxy_gain_sd": 0.5, "eval/proxy_gain_se": 0.01,
    "eval/proxy_base_within_sd": 0.1, "eval/pessimism": 1.0, "eval/pessimistic_gain_sd": 0.2,
}  # fmt: skip
GOLD = {"gold/engagement": 0.3, "gold/base_engagement": 0.2, "gold/gain": 0.1, "gold/gain_sd": 0.4,
        "gold/gain_se": 0.05, "gold/base_within_sd": 0.25}  # fmt: skip


def test_without_gold_the_line_reports_the_proxy_its_lower_bound_and_the_kl() -> None:
    assert describe_evaluation(WITHOUT_GOLD) == (
        "epoch 4: no gold; proxy gain +0.050 raw = +0.50 within-request SD (se 0.10); pessimistic (mean - 1 std) "
        "+0.20 SD; KL per sample (nats) 1.23"
    )


def test_with_gold_the_line_leads_with_gold_and_keeps_the_pessimistic_gain() -> None:
    assert describe_evaluation({**WITHOUT_GOLD, **GOLD}) == (
        "epoch 4: gold +0.300 vs base +0.200: gain +0.100 raw = +0.40 within-request SD (se 0.20); proxy gain "
        "+0.50 SD; pessimistic (mean - 1 std) +0.20 SD; KL per sample (nats) 1.23"
    )
    old = {key: value for key, value in {**WITHOUT_GOLD, **GOLD}.items() if "pessimis" not in key}
    assert describe_evaluation(old).endswith("proxy gain +0.50 SD; KL per sample (nats) 1.23")
