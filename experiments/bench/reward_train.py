"""Benchmark: reward-model training and scoring speed on CPU (default 2 threads).

1. Click-head training from precomputed embeddings: impression rows per second of the training loop
   (``reward.train.train_member``, click loss only), for D-dimensional embeddings keyed by image id.
2. Scoring with each encoder (small CNN; small CNN with a learned branch; frozen EfficientNet-Lite0;
   precomputed embeddings): images per second at batch 64, and milliseconds per batch of 8 (the RL loop
   scores a few images at a time; target: a few milliseconds for the small CNN).

Untimed setup simulates a small studio world (64 px) and trains each scorer for one short epoch. Every timing is
the median of ``--repeats`` runs after a warm-up. Prints a table and writes JSON.

    python -m experiments.bench.reward_train                     # 2 threads, 15 repeats
    python -m experiments.bench.reward_train --threads 1 --out bench_reward.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

from reward.config import RewardConfig

ENCODERS = {
    "cnn": {"kind": "cnn", "channels": 0},
    "cnn+learned(8)": {"kind": "cnn", "channels": 8},
    "efficientnet_lite0": {"kind": "efficientnet_lite0"},
    "precomputed(256)": {"kind": "precomputed"},
}


def _world(root: Path) -> Path:
    # heavy (torch, diffusers, transformers): imported when the benchmark runs, so importing the module stays light
    from experiments.reward_fit import record_asset_root
    from offline_data.io import find_table
    from offline_data.simulator import AnnotatorsConfig, LoggingConfig, SimulatorConfig, WorldConfig, simulate
    from offline_data.splits import SplitConfig, split_logs
    from offline_data.validation import validate_logs

    config = SimulatorConfig(
        world=WorldConfig(products=60, variants_per_product=4),
        logging=LoggingConfig(requests=8000),
        annotators=AnnotatorsConfig(pairs=3000, annotators=6),
    )
    world = root / "world"
    simulate(config, world, progress=False)
    sources = {t: find_table(world, t) for t in ("assets", "impressions", "dwell", "preferences")}
    validate_logs(sources, world / "validated")
    split_logs(world / "validated", root / "splits", SplitConfig(fractions=(0.6, 0.2, 0.2)))
    record_asset_root(world / "validated", root / "splits")
    return root / "splits"


def _config(encoder: dict, embeddings: Path, **train):
    base = RewardConfig()
    if encoder["kind"] == "precomputed":
        encoder = {**encoder, "embeddings": str(embeddings)}
    return dataclasses.replace(
        base,
        encoder=dataclasses.replace(base.encoder, **encoder),
        train=dataclasses.replace(base.train, **train),
        ensemble=dataclasses.replace(base.ensemble, members=1),
    )


def _median_seconds(call, repeats: int) -> float:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_click_training(splits: Path, embeddings: Path, *, steps: int, repeats: int) -> dict:
    """Impression rows per second of click-only training from precomputed embeddings."""
    # heavy (torch, pyarrow): imported when the benchmark runs, so importing the module stays light
    import torch

    from reward.data import load_reward_data
    from reward.encoders import build_encoder
    from reward.train import annotator_ids, build_model, build_vocabulary, encode_frozen, index_data, train_member

    batch = 4096
    config = _config(ENCODERS["precomputed(256)"], embeddings, epochs=1, steps_per_epoch=steps, patience=0,
                     batch_impressions=batch, loss_weights={"click": 1.0})  # fmt: skip
    train, validation = (load_reward_data(splits / s, load_masks=False) for s in ("train", "validation"))
    encoder = build_encoder(config.encoder)
    vocabulary, annotators = build_vocabulary(train, config), annotator_ids(train)
    indexed = [index_data(d, vocabulary, annotators, encode_frozen(encoder, d)) for d in (train, validation)]

    def run() -> None:
        model = build_model(config, feature_dim=encoder.dim, scene_dim=0, vocabulary=vocabulary, slots=4,
                            annotators=annotators, encoder=None, training_images=len(train.images))  # fmt: skip
        train_member(config, *indexed, model, seed=0, device=torch.device("cpu"), progress=False)

    seconds = _median_seconds(run, repeats)
    rows = steps * batch
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "embedding_dim": encoder.dim}


def bench_scoring(splits: Path, embeddings: Path, name: str, *, repeats: int) -> dict:
    """Images per second at batch 64 and ms per batch of 8 for one encoder."""
    # heavy (torch, pyarrow): imported when the benchmark runs, so importing the module stays light
    import torch

    from reward.data import load_reward_data
    from reward.pipeline import fit_reward_model
    from reward.scorer import ScoringRequest

    config = _config(ENCODERS[name], embeddings, epochs=1, steps_per_epoch=2, patience=0)
    scorer, _ = fit_reward_model(config, splits / "train", splits / "validation", seed=0,
                                 device=torch.device("cpu"), progress=False)  # fmt: skip
    images = load_reward_data(splits / "train").images  # any 64 composites: the test split has fewer
    requests = [ScoringRequest("warm", images.prompts[i], images.kinds[i], images.masks[i]) for i in range(64)]
    ids = list(images.image_ids[:64])
    results = {}
    for size in (8, 64):
        seconds = _median_seconds(lambda s=size: scorer(images.pixels[:s], requests[:s], image_ids=ids[:s]), repeats)
        results[size] = seconds
    return {"ms_per_8": results[8] * 1000, "images_per_s_batch64": 64 / results[64]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default: 2)")
    parser.add_argument("--repeats", type=int, default=15, help="timed repeats per measurement (default: 15)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed run (default: 20)")
    parser.add_argument("--out", type=Path, default=Path("bench_reward_train.json"), help="JSON output")
    args = parser.parse_args(argv)

    # heavy (torch, pyarrow): imported when the benchmark runs, so importing the module stays light
    import numpy as np
    import torch

    from reward.data import load_reward_data
    from reward.embeddings import write_embeddings

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        splits = _world(Path(tmp))
        ids = sorted({i for s in ("train", "validation", "test") for i in load_reward_data(
            splits / s, load_masks=False).images.image_ids})  # fmt: skip
        embeddings = write_embeddings(Path(tmp) / "emb.parquet", ids,
                                      np.random.default_rng(0).standard_normal((len(ids), 256)))  # fmt: skip
        training = bench_click_training(splits, embeddings, steps=args.steps, repeats=args.repeats)
        scoring = {name: bench_scoring(splits, embeddings, name, repeats=args.repeats) for name in ENCODERS}
    report = {
        "threads": args.threads,
        "repeats": args.repeats,
        "machine": platform.platform(),
        "processor": platform.processor(),
        "torch": torch.__version__,
        "click_training_from_embeddings": training,
        "scoring": scoring,
    }
    print(f"click-head training from 256-d embeddings: {training['rows_per_s']:,.0f} rows/s "
          f"({training['rows']:,} rows in {training['seconds']:.2f} s, median of {args.repeats})")  # fmt: skip
    print(f"\n{'encoder':22s} {'ms / 8 images':>14s} {'images/s (64)':>14s}")
    for name, row in scoring.items():
        print(f"{name:22s} {row['ms_per_8']:14.2f} {row['images_per_s_batch64']:14,.0f}")
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
