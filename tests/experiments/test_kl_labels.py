"""Two KLs, one name each: the KL per denoising step and the KL per sample are never printed as just "KL"."""

from __future__ import annotations

from experiments.policy_runs.train import describe_evaluation
from policy.evaluation import KL_PER_SAMPLE, KL_PER_STEP


def test_the_evaluation_line_names_both_kls_with_their_units() -> None:
    record = {
        "epoch": 3.0,
        "gold/engagement": 0.31,
        "gold/base_engagement": 0.25,
        "gold/gain": 0.06,
        "gold/gain_sd": 0.4,
        "gold/gain_se": 0.01,
        "gold/base_within_sd": 0.15,
        "eval/proxy_gain_sd": 0.7,
        "eval/kl_nats": 12.5,
        "eval/kl_step": 3.2e-4,
    }
    line = describe_evaluation(record)
    assert f"{KL_PER_SAMPLE} 12.50" in line and f"{KL_PER_STEP} 3.20e-04" in line
    assert KL_PER_SAMPLE == "KL per sample (nats)" and "per denoising step" in KL_PER_STEP
    assert "KL per sample" in describe_evaluation({k: v for k, v in record.items() if k != "eval/kl_step"})
