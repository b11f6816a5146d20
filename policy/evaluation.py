"""Per-epoch evaluation of a policy on held-out requests, and the over-optimisation curve.

Every evaluation samples the same held-out requests with the same seeds (common random numbers), so the policy's
samples are paired with the base model's samples of the same noise and the gain is measured with little
variance. It reports:

- ``eval/proxy_mean``, ``eval/proxy_std``: the reward model's combined reward (the ensemble mean);
- ``eval/proxy_gain`` (raw), ``eval/proxy_gain_sd`` (in within-request SDs of the base model's proxy,
  ``eval/proxy_base_within_sd``) and ``eval/proxy_gain_se``: the reward model's held-out estimate of the gain;
- ``eval/pessimistic_mean``, ``eval/pessimistic_gain``, ``eval/pessimistic_gain_sd`` (in the same proxy SDs),
  ``eval/pessimistic_gain_se``: the same for the ensemble's lower confidence bound proxy - k std
  (``policy.reward_signal.pessimistic_reward``, k = ``eval/pessimism``), with ``eval/uncertainty_mean`` the mean
  ensemble std. A proxy gain that the pessimistic gain does not share was bought where the ensemble disagrees,
  which is where over-optimisation finds it; without gold these and the KL are the evidence;
- with a gold function (an optional ``rollout.gold.GoldFn``: the studio world's, or a real team's evaluation;
  NEVER used by training): ``gold/engagement``, the hidden gold of the samples, ``gold/gain`` (raw gold units)
  and ``gold/gain_sd`` (in within-request standard deviations of the base model's samples), with
  ``gold/gain_se`` (standard error over requests) and the share of requests improved;
- two KLs to the base, each with one name and one meaning everywhere (metrics, logs, plots, docs):
  *KL per denoising step* (:data:`KL_PER_STEP`): ``eval/kl_step`` here and ``policy/kl`` in training, the
  Gaussian KL of one denoising step, mean over the background latent dims (what the training penalty uses);
  *KL per sample* (:data:`KL_PER_SAMPLE`): ``eval/kl_nats``, the KL of a whole chain in nats, the sum over steps
  of the per-dim KL times the number of background latent dims (comparable with best-of-n's
  log n - (n - 1) / n, and what gates and budgets use);
- ``eval/preservation_max_abs_diff`` (must be 0).

:func:`plot_overoptimisation` draws the proxy, pessimistic proxy and (when measured) gold gains against
``eval/kl_nats`` (Gao et al. 2023, "Scaling Laws for Reward Model Overoptimization": the proxy keeps rising while
gold turns over).

Several processes share one evaluation (:class:`EvaluationProcesses`): the R x K samples, request-major (sample
i = r K + k has seed ``first_seed + i`` whatever the process count), are cut into contiguous blocks whose sizes
differ by at most one (:func:`evaluation_share`); each process samples, scores and replays (KL) its block, and the
per-sample tables (proxy, ensemble std, gold, per-step KL, background dims) and each process's preservation maximum are
gathered in sample order (:func:`gather_shares`: blocks padded with zeros to ceil(R K / P) rows for a fixed-shape
gather, the padding dropped after it). Every process then computes the metrics from the same full [R, K] tables,
so every process returns the same metrics (no broadcast needed) and caches the same base statistics. Only the
chunking of the sampler and of the KL pass depends on the process count, so the metrics agree with one process's
to float rounding; one process runs exactly the one-process code path.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from offline_data.errors import PreservationError
from policy.contact_sheet import contact_sheet_array
from policy.model import InpaintPolicy
from policy.replay import background_dims, stepwise_kl
from policy.reward_signal import RewardModelFn, pessimistic_reward, score_rewards
from rollout.config import SamplerConfig
from rollout.gold import GoldFn, score_gold
from rollout.request import InpaintRequest, expand_requests
from rollout.rerank import rerank
from rollout.sampler import Rollout, sample_trajectories

logger = logging.getLogger(__name__)

Gather = Callable[[torch.Tensor], torch.Tensor]
"""``tensor [S, ...] -> [P S, ...]``: every process's tensor, concatenated in process order. A collective call
(every process calls it, in the same order, with the same shape and dtype), e.g. ``accelerate.Accelerator.gather``
moved back to the CPU."""

STATE_FORMAT = "backdrop.policy_evaluator"


SHEET_REQUESTS = 4
"""Held-out requests shown in the before/after contact sheet of an evaluation (their first seed each)."""

KL_PER_STEP = "KL per denoising step (nats per background latent dim)"
"""Label of ``policy/kl`` and ``eval/kl_step``."""
KL_PER_SAMPLE = "KL per sample (nats)"
"""Label of ``eval/kl_nats`` (a whole chain's KL)."""


@dataclass(frozen=True, kw_only=True)
class EvaluationConfig:
    """Held-out evaluation during training."""

    seeds_per_request: int = 4
    """Samples per held-out request (K); the same seeds at every evaluation and for the base."""
    first_seed: int = 1_000_000_007
    """Seed of the first evaluation sample (request r, sample k gets first_seed + r K + k); far from the
    training seeds, which are 32-bit hashes of (run seed, epoch)."""
    rows_per_forward: int = 128
    """(sample, step) rows per UNet call of the KL pass (no grad)."""
    pessimism: float | None = None
    """k of the reported pessimistic proxy mean - k std (ensemble std). None: the training reward's pessimism
    lambda when it is > 0 (then the evaluation reports exactly what the trainer optimises), else 1."""

    def __post_init__(self) -> None:
        if self.seeds_per_request < 2:
            raise ValueError(
                f"seeds_per_request must be >= 2 (a within-request SD needs two), got {self.seeds_per_request}"
            )
        if self.first_seed < 0 or self.rows_per_forward < 1:
            raise ValueError("first_seed must be >= 0 and rows_per_forward >= 1")
        if self.pessimism is not None and not self.pessimism >= 0:
            raise ValueError(f"pessimism must be >= 0 or unset, got {self.pessimism}")


@dataclass(frozen=True, kw_only=True)
class EvaluationProcesses:
    """The processes that share one evaluation: which one this is, how many there are, and the gather between
    them (see the module docstring). The default is one process, which needs no gather."""

    index: int = 0
    """This process's rank, 0 .. count - 1."""
    count: int = 1
    """Number of processes evaluating together (every one of them calls the evaluator)."""
    gather: Gather | None = None
    """The all-gather between them; required when count > 1, unused with one process."""

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(
                f"process index must be in 0..count - 1 with count >= 1, got {self.index} of {self.count}"
            )
        if self.count > 1 and self.gather is None:
            raise ValueError(f"{self.count} processes need a gather callable")


def share_sizes(samples: int, processes: int) -> list[int]:
    """Samples of each process: ``samples`` cut into ``processes`` contiguous blocks, sizes differing by <= 1."""
    if samples < 0 or processes < 1:
        raise ValueError(f"need samples >= 0 and processes >= 1, got {samples} and {processes}")
    bounds = [p * samples // processes for p in range(processes + 1)]
    return [bounds[p + 1] - bounds[p] for p in range(processes)]


def evaluation_share(samples: int, processes: int, index: int) -> range:
    """Indices of the samples process ``index`` evaluates: floor(p N / P) .. floor((p + 1) N / P) - 1.

    Contiguous, so the blocks gathered in process order are the samples in their own order; balanced, so no
    process waits for more than one extra sample (a process gets none when N < P).
    """
    if not 0 <= index < processes:
        raise ValueError(f"process index must be in 0..{processes - 1}, got {index}")
    sizes = share_sizes(samples, processes)
    start = sum(sizes[:index])
    return range(start, start + sizes[index])


def gather_shares(local: torch.Tensor, samples: int, processes: EvaluationProcesses) -> torch.Tensor:
    """Every process's block of a per-sample table, put together in sample order: ``[n_p, ...] -> [N, ...]``.

    Blocks differ in size by one at most; each is padded with zeros to ceil(N / P) rows so that the gather sees the
    same shape on every process, and the padding rows are dropped from the gathered table. Dtype is kept.

    Raises:
        ValueError: ``local`` does not have this process's number of rows, or the gather returned the wrong rows.
    """
    sizes = share_sizes(samples, processes.count)
    if local.ndim < 1 or local.shape[0] != sizes[processes.index]:
        raise ValueError(
            f"process {processes.index} holds {sizes[processes.index]} of {samples} samples but its table is "
            f"{list(local.shape)}"
        )
    if processes.count == 1:
        return local
    assert processes.gather is not None  # EvaluationProcesses checks it
    width = max(sizes)
    padded = torch.zeros((width, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local
    gathered = processes.gather(padded)
    if gathered.shape != (width * processes.count, *local.shape[1:]):
        raise ValueError(
            f"gather returned {list(gathered.shape)}, expected {[width * processes.count, *local.shape[1:]]}"
        )
    return torch.cat([gathered[p * width : p * width + size] for p, size in enumerate(sizes)])


ONE_PROCESS = EvaluationProcesses()


@dataclass(frozen=True, kw_only=True, eq=False)
class EvaluationSamples:
    """What one evaluation sampled: R requests x K seeds, request-major (every process's, except the rollout)."""

    rollout: Rollout | None
    """This process's samples (:meth:`PolicyEvaluator.share`); None when its share is empty."""
    proxy: torch.Tensor
    """``[R, K]`` float32 proxy rewards."""
    uncertainty: torch.Tensor
    """``[R, K]`` float32 ensemble std of the proxy (zeros for a plain reward function)."""
    gold: torch.Tensor | None
    """``[R, K]`` float64 gold (None without a gold function)."""
    preservation_max_abs_diff: float
    """Largest product-pixel difference of any sample (0: the sampler refuses anything else)."""


def within_request_sd(values: torch.Tensor) -> float:
    """Pooled within-request standard deviation of ``values [R, K]``: sqrt(mean_r var_r) with unbiased var_r."""
    if values.ndim != 2 or values.shape[1] < 2:
        raise ValueError(f"values must be [R, K] with K >= 2, got {list(values.shape)}")
    return float(values.double().var(dim=1, unbiased=True).mean().sqrt())


def paired_gain(values: torch.Tensor, base: torch.Tensor, scale: float) -> dict[str, float]:
    """Mean gain of ``values [R, K]`` over the paired ``base [R, K]``, raw and in units of ``scale``.

    Returns:
        ``gain`` (raw), ``gain_sd`` (gain / scale), ``gain_se`` (standard error of the raw gain over requests),
        ``improved`` (share of requests whose mean rose).
    """
    if values.shape != base.shape or values.ndim != 2:
        raise ValueError(f"values {list(values.shape)} and base {list(base.shape)} must both be [R, K]")
    per_request = (values.double() - base.double()).mean(dim=1)
    gain = float(per_request.mean())
    requests = per_request.numel()
    se = float(per_request.std(unbiased=True) / math.sqrt(requests)) if requests > 1 else float("nan")
    return {
        "gain": gain,
        "gain_sd": gain / scale if scale > 0 else float("nan"),
        "gain_se": se,
        "improved": float((per_request > 0).double().mean()),
    }


class PolicyEvaluator:
    """Evaluates a policy against its own base model on fixed held-out requests and seeds.

    Args:
        requests: R held-out requests (never trained on).
        reward_fn: the proxy reward (the trainer's reward model).
        gold_fn: hidden engagement, or None (then proxy, pessimistic proxy and KL are reported).
        sampler: the training rollouts' sampler settings (same T, eta and guidance).
        config: seeds per request, chunk sizes and the pessimism of the reported lower bound.
        training_pessimism: the trainer's ``reward.pessimism`` (the default k of the pessimistic proxy).
    """

    def __init__(
        self,
        requests: Sequence[InpaintRequest],
        *,
        reward_fn: RewardModelFn,
        gold_fn: GoldFn | None,
        sampler: SamplerConfig,
        config: EvaluationConfig | None = None,
        training_pessimism: float = 0.0,
    ) -> None:
        if not requests:
            raise ValueError("no evaluation requests")
        self.requests = tuple(requests)
        self.reward_fn = reward_fn
        self.gold_fn = gold_fn
        self.sampler = sampler
        self.config = config or EvaluationConfig()
        fallback = training_pessimism if training_pessimism > 0 else 1.0
        self.pessimism = self.config.pessimism if self.config.pessimism is not None else fallback
        """k of the reported pessimistic proxy (:attr:`EvaluationConfig.pessimism`)."""
        self._base: dict[str, torch.Tensor] | None = None
        self._base_images: list[np.ndarray] = []  # the sheet's "before" column (not kept across a resume)
        self._last_images: list[np.ndarray] = []
        self._last_proxy: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(R, K)."""
        return len(self.requests), self.config.seeds_per_request

    def share(self, processes: EvaluationProcesses = ONE_PROCESS) -> tuple[list[InpaintRequest], list[int]]:
        """The (request, seed) pairs this process samples: its block (:func:`evaluation_share`) of the R x K
        request-major samples, where request r's k-th sample has seed ``first_seed + r K + k``."""
        count, k = self.shape
        expanded, seeds = expand_requests(self.requests, k, self.config.first_seed)
        block = evaluation_share(count * k, processes.count, processes.index)
        return expanded[block.start : block.stop], seeds[block.start : block.stop]

    def sample(self, policy: InpaintPolicy, processes: EvaluationProcesses = ONE_PROCESS) -> EvaluationSamples:
        """Sample this process's share with ``policy`` as it is (wrap in ``policy.as_base()`` for the base) and
        gather every process's scores (a collective call with several processes).

        Raises:
            PreservationError: a sample of any process changed a product pixel (raised on every process, so none
                waits at a later gather).
        """
        count, k = self.shape
        requests, seeds = self.share(processes)
        rollout, preservation = None, None
        if requests:
            rollout = sample_trajectories(policy, requests, seeds, self.sampler)
            preservation = rollout.preservation
        if processes.count == 1:
            if preservation is not None and not preservation.ok:
                raise PreservationError(f"evaluation samples changed product pixels: {preservation.describe()}")
            max_abs_diff = 0.0 if preservation is None else float(preservation.max_abs_diff)
        else:
            assert processes.gather is not None  # EvaluationProcesses checks it
            local = (
                [0.0, 0.0] if preservation is None else [float(preservation.max_abs_diff), float(not preservation.ok)]
            )
            everyone = processes.gather(torch.tensor([local], dtype=torch.float64))  # [P, 2]
            failed = torch.nonzero(everyone[:, 1] > 0).flatten().tolist()
            if failed:
                mine = f"; this process's: {preservation.describe()}" if processes.index in failed else ""
                raise PreservationError(f"evaluation samples of process(es) {failed} changed product pixels{mine}")
            max_abs_diff = float(everyone[:, 0].max())
        proxy = uncertainty = torch.zeros(0, dtype=torch.float32)
        gold = torch.zeros(0, dtype=torch.float64)
        if rollout is not None:
            proxy, uncertainty, _ = score_rewards(self.reward_fn, rollout.images, requests)
            if self.gold_fn is not None:
                gold = score_gold(self.gold_fn, rollout.images, requests)
        scores = gather_shares(torch.stack([proxy, uncertainty], dim=1), count * k, processes)  # one gather, [N, 2]
        proxy, uncertainty = scores[:, 0].reshape(count, k), scores[:, 1].reshape(count, k)
        gathered_gold = None
        if self.gold_fn is not None:
            gathered_gold = gather_shares(gold, count * k, processes).reshape(count, k)
        return EvaluationSamples(
            rollout=rollout,
            proxy=proxy,
            uncertainty=uncertainty,
            gold=gathered_gold,
            preservation_max_abs_diff=max_abs_diff,
        )

    def base(self, policy: InpaintPolicy, processes: EvaluationProcesses = ONE_PROCESS) -> dict[str, torch.Tensor]:
        """Proxy, ensemble std and gold ``[R, K]`` of the base model's samples (adapters disabled), computed once
        and cached; with several processes each samples its share and every process caches the full tables."""
        if self._base is None:
            with policy.as_base():
                samples = self.sample(policy, processes)
            self._base = {"proxy": samples.proxy, "uncertainty": samples.uncertainty}
            self._base_images = self._sheet_images(samples, processes)
            if samples.gold is not None:
                self._base["gold"] = samples.gold
        return self._base

    def evaluate(self, policy: InpaintPolicy, processes: EvaluationProcesses = ONE_PROCESS) -> dict[str, float]:
        """Metrics of ``policy`` on the held-out requests (module docstring); with several processes every process
        calls it and gets the same metrics."""
        base = self.base(policy, processes)
        samples = self.sample(policy, processes)
        self._last_images, self._last_proxy = self._sheet_images(samples, processes), samples.proxy
        count, k = self.shape
        if samples.rollout is None:
            kl_share = torch.zeros(0, self.sampler.num_steps, dtype=torch.float32)
            dims_share = torch.zeros(0, dtype=torch.float32)
        else:
            trajectory = samples.rollout.trajectory
            kl_share = stepwise_kl(policy, trajectory, self.config.rows_per_forward)  # [n, T]
            dims_share = background_dims(trajectory)  # [n]
        kl = gather_shares(kl_share, count * k, processes)  # [R K, T]
        kl_nats = kl.sum(dim=1) * gather_shares(dims_share, count * k, processes)
        metrics = {
            "eval/proxy_mean": float(samples.proxy.mean()),
            "eval/proxy_std": float(samples.proxy.std()),
            "eval/kl_step": float(kl.mean()),
            "eval/kl_nats": float(kl_nats.mean()),
            "eval/preservation_max_abs_diff": samples.preservation_max_abs_diff,
        }
        metrics |= self._proxy_metrics(samples, base)
        if samples.gold is not None:
            gold_sd = within_request_sd(base["gold"])
            gain = paired_gain(samples.gold, base["gold"], gold_sd)
            metrics |= {
                "gold/engagement": float(samples.gold.mean()),
                "gold/base_engagement": float(base["gold"].mean()),
                "gold/base_within_sd": gold_sd,
                "gold/gain": gain["gain"],
                "gold/gain_sd": gain["gain_sd"],
                "gold/gain_se": gain["gain_se"],
                "gold/improved_requests": gain["improved"],
            }
        return metrics

    def _proxy_metrics(self, samples: EvaluationSamples, base: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """The reward model's held-out gain and its pessimistic counterpart, both in the base proxy's SDs."""
        k = self.pessimism
        proxy_sd = within_request_sd(base["proxy"])
        proxy = paired_gain(samples.proxy, base["proxy"], proxy_sd)
        lower = pessimistic_reward(samples.proxy, samples.uncertainty, k)
        pessimistic = paired_gain(lower, pessimistic_reward(base["proxy"], base["uncertainty"], k), proxy_sd)
        return {
            "eval/proxy_gain": proxy["gain"],
            "eval/proxy_gain_sd": proxy["gain_sd"],
            "eval/proxy_gain_se": proxy["gain_se"],
            "eval/proxy_base_within_sd": proxy_sd,
            "eval/uncertainty_mean": float(samples.uncertainty.mean()),
            "eval/pessimism": k,
            "eval/pessimistic_mean": float(lower.mean()),
            "eval/pessimistic_gain": pessimistic["gain"],
            "eval/pessimistic_gain_sd": pessimistic["gain_sd"],
            "eval/pessimistic_gain_se": pessimistic["gain_se"],
        }

    def _sheet_images(self, samples: EvaluationSamples, processes: EvaluationProcesses) -> list[np.ndarray]:
        """[H, W, 3] uint8 images of the first seed of the first :data:`SHEET_REQUESTS` requests; only the first
        process holds them (its share starts at sample 0), the others return none."""
        if samples.rollout is None or processes.index != 0:
            return []
        k = self.config.seeds_per_request
        held = samples.rollout.images.shape[0]
        rows = [r * k for r in range(min(SHEET_REQUESTS, len(self.requests))) if r * k < held]
        return [samples.rollout.images[i].permute(1, 2, 0).contiguous().numpy() for i in rows]

    def before_after_sheet(self) -> np.ndarray | None:
        """The latest evaluation's contact sheet, ``[H, W, 3]`` uint8: one row per shown request with the base
        model's sample and the policy's (same seed), captioned with their proxy rewards; None before any
        evaluation or on a process without the images. After a resume the base column is missing (the base's
        images are not checkpointed) until the base is sampled again."""
        if not self._last_images or self._last_proxy is None:
            return None
        base_proxy = None if self._base is None else self._base["proxy"]
        rows = []
        for r, after in enumerate(self._last_images):
            cells = []
            if r < len(self._base_images) and base_proxy is not None:
                cells.append((self._base_images[r], f"base {float(base_proxy[r, 0]):.2f}"))
            cells.append((after, f"policy {float(self._last_proxy[r, 0]):.2f}"))
            request = self.requests[r]
            rows.append((f"{request.product_id}: {request.prompt}", cells))
        return contact_sheet_array(rows, scale=2)

    def state_dict(self) -> dict[str, Any]:
        """The cached base statistics (JSON), so a resumed run does not sample the base again."""
        base = None if self._base is None else {k: v.tolist() for k, v in self._base.items()}
        return {"format": STATE_FORMAT, "shape": list(self.shape), "base": base}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output written for the same requests and seeds per request."""
        if state.get("format") != STATE_FORMAT or list(state.get("shape", [])) != list(self.shape):
            raise ValueError(f"evaluator state is for {state.get('shape')} requests x seeds, this one is {self.shape}")
        base = state.get("base")
        self._base = None
        if base is not None and "uncertainty" not in base:
            # Written before the ensemble std was kept: the base is sampled again (same seeds, same numbers).
            logger.info("the saved evaluator state has no base ensemble std; the base is evaluated again")
        elif base is not None:
            self._base = {
                "proxy": torch.tensor(base["proxy"], dtype=torch.float32),
                "uncertainty": torch.tensor(base["uncertainty"], dtype=torch.float32),
                **({"gold": torch.tensor(base["gold"], dtype=torch.float64)} if "gold" in base else {}),
            }


def plot_overoptimisation(history: Sequence[Mapping[str, float]], path: str | Path, *, title: str = "") -> Path:
    """Proxy, pessimistic proxy and, when measured, gold gains (within-request SDs of the base) against the KL to
    the base (nats), one point per evaluation, as a PNG at ``path``. Records without ``eval/kl_nats`` are skipped;
    a curve is drawn when every evaluation has its metric."""
    import matplotlib  # heavy (~0.35 s): loaded only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the Agg backend is chosen

    points = [h for h in history if "eval/kl_nats" in h]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    has_gold = bool(points) and all("gold/gain_sd" in h for h in points)
    figure, axis = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    if points:
        kl = [h["eval/kl_nats"] for h in points]
        axis.plot(kl, [h["eval/proxy_gain_sd"] for h in points], "o-", color="tab:blue", label="proxy (reward model)")
        if all("eval/pessimistic_gain_sd" in h for h in points):
            k = points[-1]["eval/pessimism"]
            pessimistic = [h["eval/pessimistic_gain_sd"] for h in points]
            axis.plot(kl, pessimistic, "^--", color="tab:purple", label=f"pessimistic proxy (mean - {k:g} std)")
        if has_gold:
            gold = [h["gold/gain_sd"] for h in points]
            errors = [h["gold/gain_se"] / h["gold/base_within_sd"] for h in points]
            axis.errorbar(kl, gold, yerr=errors, fmt="s-", color="tab:red", capsize=3, label="gold (hidden)")
        for h, x in zip(points, kl):
            axis.annotate(str(int(h.get("epoch", 0))), (x, h["eval/proxy_gain_sd"]), fontsize=7, alpha=0.6,
                          textcoords="offset points", xytext=(2, 4))  # fmt: skip
    axis.axhline(0.0, color="grey", linewidth=0.8)
    axis.set_xlabel(f"{KL_PER_SAMPLE} of the policy to the base")
    axis.set_ylabel("gain over base, within-request SDs")
    default = "proxy vs gold" if has_gold else "proxy vs pessimistic proxy"
    axis.set_title(title or f"over-optimisation: {default} (labels: epoch)")
    axis.legend(loc="best")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


@dataclass(frozen=True, kw_only=True, eq=False)
class BestOfN:
    """n samples per request from one policy, their scores, and the sample the proxy picks for each request."""

    proxy: torch.Tensor
    """``[R, n]`` float32 proxy rewards."""
    gold: torch.Tensor | None
    """``[R, n]`` float64 gold (None without a gold function)."""
    chosen: torch.Tensor
    """``[R]`` int64 index of the best-scoring sample of each request."""
    uncertainty: torch.Tensor | None = None
    """``[R, n]`` float32 ensemble std of the proxy (zeros for a plain reward function)."""
    members: torch.Tensor | None = None
    """``[M, R, n]`` float32 each ensemble member's reward, when the reward model reports them (``members`` of its
    output, as ``reward``'s scorer does); None otherwise. For held-out-member estimates of the pick's value."""
    duplicates: int = 0
    """Candidates the reranker's near-duplicate filter found (a measure of how alike the n samples are)."""

    @property
    def chosen_gold(self) -> torch.Tensor:
        """``[R]`` gold of the picked samples."""
        if self.gold is None:
            raise ValueError("no gold function was given")
        return self.gold.gather(1, self.chosen[:, None])[:, 0]


def best_of_n_kl_bound(n: int) -> float:
    """Upper bound on KL(best-of-n || base) in nats: log n - (n - 1) / n (Beirami et al. 2024; exact for
    continuous rewards without ties)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def best_of_n(
    policy: InpaintPolicy,
    requests: Sequence[InpaintRequest],
    *,
    n: int,
    reward_fn: RewardModelFn,
    gold_fn: GoldFn | None,
    sampler: SamplerConfig,
    first_seed: int,
) -> BestOfN:
    """Sample ``n`` candidates per request with ``policy`` as it is and keep the one the proxy scores highest
    (``rollout.rerank``; with one image kept per request its near-duplicate filter never changes the pick).

    Request r's candidates use seeds first_seed + r n .. first_seed + r n + n - 1; wrap the call in
    ``policy.as_base()`` for the base model. Request ids must be distinct.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if len({r.request_id for r in requests}) != len(requests):
        raise ValueError("request ids must be distinct: candidates are grouped by request id")
    expanded, seeds = expand_requests(requests, n, first_seed)
    rollout = sample_trajectories(policy, expanded, seeds, sampler)
    if not rollout.preservation.ok:
        raise PreservationError(f"best-of-{n} samples changed product pixels: {rollout.preservation.describe()}")
    spreads: list[torch.Tensor] = []
    members: list[Any] = []

    def recorded(images: torch.Tensor, batch: Sequence[InpaintRequest]) -> Any:
        out = reward_fn(images, batch)
        members.append(getattr(out, "members", None))
        return out

    def score(images: torch.Tensor, batch: Sequence[InpaintRequest]) -> torch.Tensor:
        proxy, uncertainty, _ = score_rewards(recorded, images, batch)
        spreads.append(uncertainty)
        return proxy

    picked = rerank(rollout.images, expanded, score)  # scores the candidates once, in order
    shape = (len(requests), n)
    proxy = picked.candidate_scores.reshape(shape)
    chosen = torch.tensor(picked.indices, dtype=torch.int64) - torch.arange(len(requests)) * n
    gold = None
    if gold_fn is not None:
        gold = score_gold(gold_fn, rollout.images, expanded).reshape(shape)
    per_member = None
    if members and all(isinstance(m, torch.Tensor) for m in members):
        per_member = torch.cat([m.detach().float().cpu() for m in members], dim=1)
        per_member = per_member.reshape(per_member.shape[0], *shape)
    return BestOfN(
        proxy=proxy, gold=gold, chosen=chosen, uncertainty=torch.cat(spreads).reshape(shape), members=per_member,
        duplicates=picked.filtered,
    )  # fmt: skip
