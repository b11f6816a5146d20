"""Configuration of ``backdrop demo`` (experiments/configs/demo.toml, demo_quick.toml): one file for the whole loop.

Each section is the config of the stage that reads it, so every key is documented where the stage declares it:

[run]        the demo's run directory, seed, device and threads (every stage runs in this process)
[world]      the studio world to simulate (``offline_data/simulator/config.py``), demo-sized
[reward]     the reward model (``reward/config.py``)
[audit]      the reward-model audit (``reward/audit_config.py``)
[policy]     base model and LoRA adapter (``policy/config.py``)
[requests]   training / held-out products (``experiments/studio/requests.py``); its split is also the split of the logs
[trainer]    DDPO (``policy/trainer_config.py``)
[eval]       held-out evaluation during training (``policy/evaluation.py``)
[export]     the candidate bundle and its gates (``experiments/export/config.py``)
[demo]       what only the demo decides: best-of-n, the documented gate override, the report
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from experiments.config import RunConfig
from experiments.export.config import ExportConfig
from experiments.studio.requests import StudioRequestsConfig
from offline_data.simulator import SimulatorConfig
from policy.config import InpaintModelConfig, PolicyConfig
from policy.evaluation import EvaluationConfig
from policy.trainer_config import DDPOConfig
from reward.audit_config import AuditConfig
from reward.config import RewardConfig


@dataclass(frozen=True, kw_only=True)
class DemoRunConfig(RunConfig):
    """[run] of ``backdrop demo``: RunConfig with the demo's defaults."""

    name: str = "demo"
    """Run name; the demo writes into ``<output_dir>/<name>/<timestamp>`` (or ``--out``)."""
    device: str = "cpu"
    """"cpu" (the demo is sized for 2 CPU cores), "auto", "cuda" or "cuda:N"."""
    threads: int = 2
    """torch intra-op threads of the whole demo (each stage runs in this process)."""
    tensorboard: bool = False
    """TensorBoard event files for the reward and DDPO runs (metrics.jsonl is always written)."""


@dataclass(frozen=True, kw_only=True)
class DemoStagesConfig:
    """[demo]: the comparison, the export decision and the report."""

    best_of: int = 8
    """Candidates per held-out request for best-of-n reranking of the base with the reward model (the comparison
    ``backdrop policy compare`` makes); KL to the base <= log n - (n - 1) / n nats."""
    stack_best_of: bool = True
    """Also rerank n samples of the DDPO policy (does best-of-n stack on top of DDPO?); doubles the comparison's
    sampling."""
    export_override: str | None = None
    """Unset: a failed export gate stops the export (the report says which gate and why, and the demo exits 4).
    A reason: export anyway, the way ``backdrop export --override REASON`` does; the reason and the failed gates
    are recorded in the manifest and the model card, and printed loudly."""
    contact_sheet_requests: int = 8
    """Held-out requests shown before (base) / after (DDPO) in the report, one seed each."""

    def __post_init__(self) -> None:
        if self.best_of < 2:
            raise ValueError(f"best_of must be >= 2, got {self.best_of}")
        if self.export_override is not None and not self.export_override.strip():
            raise ValueError("export_override must be unset or a reason (an override must say why)")
        if self.contact_sheet_requests < 1:
            raise ValueError(f"contact_sheet_requests must be >= 1, got {self.contact_sheet_requests}")


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """Root config of ``backdrop demo`` (module docstring)."""

    run: DemoRunConfig = DemoRunConfig()
    """Run directory, seed, device, threads."""
    world: SimulatorConfig = SimulatorConfig()
    """The studio world the logs are simulated from, and that requests and the hidden gold come from."""
    reward: RewardConfig = RewardConfig()
    """The reward model trained on the world's logs."""
    audit: AuditConfig = AuditConfig()
    """The reward model's audit on the test split."""
    policy: PolicyConfig = PolicyConfig(model=InpaintModelConfig(pretrained=Path("studio_tiny")))
    """The base model (the shipped tiny studio base) and the LoRA adapter DDPO trains."""
    requests: StudioRequestsConfig = StudioRequestsConfig()
    """Training and held-out products; ``split_fractions``/``split_seed`` also split the logs by product, so the
    reward model never sees a held-out product either."""
    trainer: DDPOConfig = DDPOConfig()
    """DDPO with KL to the base; ``cpu_budget_minutes`` is what keeps the demo inside its time budget."""
    eval: EvaluationConfig = EvaluationConfig()
    """Held-out evaluation during DDPO (gold, proxy, KL)."""
    export: ExportConfig = ExportConfig()
    """The gated candidate bundle (the audit report of the [audit] stage is reused unless ``audit_report`` is
    set)."""
    demo: DemoStagesConfig = DemoStagesConfig()
    """Best-of-n, the override, the report."""

    def __post_init__(self) -> None:
        fractions = self.requests.split_fractions
        if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
            raise ValueError(f"requests.split_fractions must be three shares > 0 summing to 1, got {fractions}")
