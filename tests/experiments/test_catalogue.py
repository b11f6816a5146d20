"""The README's "Bring your own catalogue" walk-through, end to end at a tiny budget: the example request table of
real photos -> `policy train --requests` -> `export` -> `rollout sample --requests --adapter` -> plain diffusers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from experiments.catalogue_example import write_example
from experiments.cli import main
from tests.experiments.test_export import FAST_SET

TINY = [
    "--set", "run.threads=1", "--set", "run.tensorboard=false", "--set", "trainer.epochs=2",
    "--set", "trainer.eval_every=1", "--set", "trainer.requests_per_epoch=2", "--set", "trainer.samples_per_request=2",
    "--set", "trainer.optim.samples_per_step=4", "--set", "trainer.sampler.num_steps=2",
    "--set", "trainer.sampler.batch_size=8", "--set", "eval.seeds_per_request=2",
    "--set", "trainer.cpu_budget_minutes=0.5",
]  # fmt: skip


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from reward.pipeline import fit_reward_model
    from tests.reward.conftest import build_splits, fast_config, small_world

    root = tmp_path_factory.mktemp("reward")
    splits = build_splits(root, small_world())
    scorer, metrics = fit_reward_model(
        fast_config(), splits / "train", splits / "validation", seed=0, device=torch.device("cpu"), progress=False
    )
    scorer.save(root / "model", metrics={**metrics, "splits": str(splits)})
    return root / "model"


def test_bring_your_own_catalogue(reward_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    table = write_example(tmp_path / "my_catalogue")
    code = main(["policy", "train", "--requests", str(table), "--reward", str(reward_model), "--no-progress",
                 "--set", f"run.output_dir={tmp_path / 'runs'}", *TINY])  # fmt: skip
    assert code == 0
    (run,) = (tmp_path / "runs" / "policy_train").iterdir()
    assert ": no gold; proxy gain" in capsys.readouterr().out
    final = json.loads((run / "final_eval.json").read_text())
    assert final["eval/preservation_max_abs_diff"] == 0 and not any(k.startswith("gold/") for k in final)
    assert (run / "adapter" / "pytorch_lora_weights.safetensors").is_file()
    manifest = pq.read_table(run / "requests" / "requests.parquet").to_pylist()
    assert len(manifest) == 24 and {r["split"] for r in manifest if r["product_id"] == "flower"} == {"eval"}
    assert len(list((run / "requests" / "files").iterdir())) == 4  # 3 photos + 1 mask shared by the JPEGs

    bundle = tmp_path / "bundle"
    code = main(["export", str(run), "--out", str(bundle), "--no-progress", *FAST_SET])
    if code == 4:  # a named gate refused (the tiny run's KL or OPE): the reason is printed, then overridden
        assert "gate" in capsys.readouterr().err
        code = main(["export", str(run), "--out", str(bundle), "--no-progress", "--override", "test", *FAST_SET])
    assert code == 0
    exported = json.loads((bundle / "manifest.json").read_text())
    assert exported["data"]["world"] is None and exported["data"]["requests"]["eval"] == 8
    assert exported["reload"]["diffusers_pipeline"]["identical"]
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "no gold (a catalogue run)" in card and "(16 train, 8 held-out;" in card

    out = tmp_path / "samples"
    code = main(["rollout", "sample", "--requests", str(table), "--adapter", str(bundle / "adapter"),
                 "--out", str(out), "--steps", "2", "--threads", "1", "--no-progress"])  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["alpha_rule"]["ok"] and report["alpha_rule"]["soft_pixels"] > 0
    gift = np.asarray(Image.open(table.parent / "photos" / "gift.png").convert("RGBA"))
    china = np.asarray(Image.open(table.parent / "photos" / "china.jpg"))
    china_mask = np.asarray(Image.open(table.parent / "photos" / "china_mask.png")) >= 128
    for k in range(8):
        painted = np.asarray(Image.open(out / "images" / f"gift-{k}.png"))
        assert painted.shape == (128, 128, 3)
        np.testing.assert_array_equal(painted[gift[..., 3] == 255], gift[..., :3][gift[..., 3] == 255])
        painted = np.asarray(Image.open(out / "images" / f"china-{k}.png"))
        assert painted.shape == (427, 640, 3)
        np.testing.assert_array_equal(painted[china_mask], china[china_mask])

    from diffusers import StableDiffusionInpaintPipeline

    from policy.model import STUDIO_TINY

    pipe = StableDiffusionInpaintPipeline.from_pretrained(STUDIO_TINY, safety_checker=None)
    pipe.load_lora_weights(bundle / "adapter")
    assert any("lora" in name for name, _ in pipe.unet.named_parameters())


def test_offline_method_evaluates_on_the_catalogue(reward_model: Path, tmp_path: Path) -> None:
    table = write_example(tmp_path / "my_catalogue")
    splits = Path(json.loads((reward_model / "metrics.json").read_text())["splits"])
    settings = ["run.threads=1", "run.tensorboard=false", "offline.steps=2", "offline.batch_size=4",
                "offline.eval_every=2", "sampler.num_steps=2", "eval.seeds_per_request=2",
                f"run.output_dir={tmp_path / 'runs'}"]  # fmt: skip
    code = main(["policy", "offline", "--method", "dpo", "--data", str(splits / "train"), "--requests", str(table),
                 "--reward", str(reward_model), *[a for s in settings for a in ("--set", s)]])  # fmt: skip
    assert code == 0
    (run,) = (tmp_path / "runs" / "policy_offline_dpo").iterdir()
    final = json.loads((run / "final_eval.json").read_text())
    assert final["eval/kl_nats"] >= 0 and not any(k.startswith("gold/") for k in final)
    assert pq.read_table(run / "requests" / "requests.parquet").num_rows == 24


def test_compare_refuses_a_catalogue_run_by_name(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from experiments.compare.methods import ComparisonError, reranking_rows
    from experiments.compare.runs import load_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(f'[catalogue]\nrequests = "{tmp_path / "requests.csv"}"\n')
    (run / "metrics.jsonl").write_text('{"step": 0, "eval/kl_nats": 0.0}\n')
    with pytest.raises(ComparisonError, match="a catalogue run .* has no gold"):
        reranking_rows(load_run(run), 2, stack_adapter=None)


def test_best_of_reranks_with_a_reward_model_folder(reward_model: Path, tmp_path: Path) -> None:
    table = write_example(tmp_path / "my_catalogue")
    lines = table.read_text(encoding="utf-8").splitlines()
    table.write_text("\n".join([lines[0], lines[1], lines[9]]) + "\n", encoding="utf-8")  # one gift, one china row
    out = tmp_path / "best"
    code = main(["rollout", "sample", "--requests", str(table), "--best-of", "3", "--reward", str(reward_model),
                 "--out", str(out), "--steps", "2", "--threads", "1", "--no-progress", "--no-guard"])  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["best_of"] == 3 and len(report["images"]) == 2
    assert all(isinstance(r["reward"], float) for r in report["images"])
    assert sorted(p.name for p in (out / "images").iterdir()) == ["china-0.png", "gift-0.png"]
