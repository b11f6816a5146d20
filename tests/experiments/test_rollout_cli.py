"""``backdrop rollout sample``: real photos with a mask file, native size, best-of-N, style, guards, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib.cbook
import numpy as np
import pytest
from PIL import Image

from experiments.cli import main
from experiments.studio.prompts import studio_training_prompts, studio_vocabulary
from policy.config import InpaintModelConfig, StyleConfig
from policy.model import STUDIO_TINY, InpaintPolicy
from policy.style import StyleConditioning
from policy.vae import MaskAwareDecoder
from rollout.guards import TRAINING_PROMPTS_FILE, write_training_prompts
from rollout.trajectory import Trajectory

FAST = ["--steps", "2", "--threads", "1", "--no-progress", "--no-guard"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random model in the shipped layout (diffusers folder + mask_decoder/ + style/ + training prompts)."""
    folder = tmp_path_factory.mktemp("model")
    policy = InpaintPolicy.from_config(InpaintModelConfig(), vocabulary=studio_vocabulary())
    policy.mask_decoder = MaskAwareDecoder.from_vae(policy.vae)
    policy.save_pretrained(folder)
    StyleConditioning(StyleConfig(), policy.text_encoder.config.hidden_size).save(folder / "style")
    write_training_prompts(folder, studio_training_prompts())
    return folder


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """matplotlib's 128 px RGBA product photo split into an RGB file and a mask file (alpha >= 128)."""
    folder = tmp_path_factory.mktemp("photo")
    with matplotlib.cbook.get_sample_data("Minduka_Present_Blue_Pack.png") as handle:
        rgba = np.asarray(Image.open(handle).convert("RGBA"))
    mask = rgba[..., 3] >= 128
    Image.fromarray(rgba[..., :3]).save(folder / "gift.png")
    Image.fromarray((mask * 255).astype(np.uint8)).save(folder / "gift_mask.png")
    return folder / "gift.png", folder / "gift_mask.png", np.dstack([rgba[..., :3], mask * np.uint8(255)])


def read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_real_photo_with_a_mask_file(model: Path, photo, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rgb_path, mask_path, rgba = photo
    prompts = ["white marble tabletop, soft window light", "oak wood floor"]
    code = main(["rollout", "sample", "--model", str(model), "--products", str(rgb_path), "--masks", str(mask_path),
                 "--prompts", *prompts, "--n", "2", "--out", str(tmp_path / "out"), *FAST])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "max |diff| 0, 0 differing pixel(s)" in out
    assert "0 changed;" in out and "0 off the formula" in out
    # Outputs have the photo's own size (128 px), painted at the model's 64 px: every product pixel is the photo's.
    product = rgba[..., 3] == 255
    images = sorted((tmp_path / "out" / "images").glob("*.png"))
    assert len(images) == 4
    for path in images:
        pixels = read(path)
        assert pixels.shape == (128, 128, 3)
        np.testing.assert_array_equal(pixels[product], rgba[..., :3][product])
        assert (pixels[~product] != 0).any()  # a background was painted
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["preservation"]["ok"] and report["preservation"]["differing_pixels"] == 0
    assert report["alpha_rule"] == {"ok": True, "product_pixels": 4 * int(product.sum()), "soft_pixels": 0,
                                    "product_changed": 0, "soft_off": 0}  # fmt: skip
    assert {r["prompt"] for r in report["images"]} == set(prompts)
    trajectory = Trajectory.load(tmp_path / "out" / "trajectories" / "gift-p0.safetensors")
    assert trajectory.batch_size == 2 and trajectory.num_steps == 2 and trajectory.prompts[0] == prompts[0]
    assert (tmp_path / "out" / "contact_sheet.png").is_file()


def test_native_size_keeps_the_users_own_pixels(model: Path, photo, tmp_path: Path) -> None:
    rgb_path, mask_path, rgba = photo
    code = main(["rollout", "sample", "--model", str(model), "--products", str(rgb_path), "--masks", str(mask_path),
                 "--prompts", "oak wood floor", "--n", "1", "--native", "--out", str(tmp_path), *FAST])  # fmt: skip
    assert code == 0
    (path,) = (tmp_path / "images").glob("*.png")
    pixels, mask = read(path), rgba[..., 3] == 255
    assert pixels.shape == (128, 128, 3)
    np.testing.assert_array_equal(pixels[mask], rgba[..., :3][mask])


def test_best_of_with_the_gold_reward_and_a_style_board(model: Path, tmp_path: Path) -> None:
    board = tmp_path / "board.png"
    Image.fromarray(np.full((40, 50, 3), (200, 120, 60), dtype=np.uint8)).save(board)
    code = main(["rollout", "sample", "--model", str(model), "--products", "studio:bottle:3", "studio:mug",
                 "--prompts", "navy marble floor, moody low light", "--n", "2", "--best-of", "3", "--reward", "gold",
                 "--style", str(board), "--out", str(tmp_path / "out"), *FAST])  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["best_of"] == 3 and report["style_board"] == [str(board)]
    by_request: dict[str, list[float]] = {}
    for record in report["images"]:
        by_request.setdefault(record["request_id"], []).append(record["reward"])
    assert sorted(by_request) == ["studio-bottle-3-p0", "studio-mug-0-p0"]
    for rewards in by_request.values():
        assert len(rewards) == 2 and rewards == sorted(rewards, reverse=True)
    trajectory = Trajectory.load(tmp_path / "out" / "trajectories" / "studio-mug-0-p0.safetensors")
    # Style tokens extend the conditioning: 16 text tokens + 4 style tokens.
    assert trajectory.prompt_embeds.shape[1] == 20 and trajectory.batch_size == 2


def test_guard_needs_the_training_prompts_recorded_beside_the_model(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(model, bare)
    (bare / TRAINING_PROMPTS_FILE).unlink()
    args = ["rollout", "sample", "--model", str(bare), "--products", "studio:can", "--prompts", "oak wood floor",
            "--out", str(tmp_path / "out"), "--steps", "1"]  # fmt: skip
    assert main(args) == 2
    assert f"{bare / TRAINING_PROMPTS_FILE}: not found; the out-of-distribution guard" in capsys.readouterr().err
    assert main([*args, "--no-guard"]) == 0


def test_guard_refuses_a_blocklisted_prompt(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["rollout", "sample", "--model", str(model), "--products", "studio:can", "--prompts",
                 "nike logo on marble", "--out", str(tmp_path / "out"), "--steps", "2"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "prompt 1 'nike logo on marble': contains the blocked word 'nike'" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--products", "studio:vase"], "studio:vase: expected studio:KIND[:SEED] with KIND in bottle"),
        (["--products", "missing.png"], "missing.png: image file not found"),
        (["--products", "studio:can", "--masks", "a.png", "b.png"], "--masks has 2 entries but --products has 1"),
        (["--products", "studio:can", "--best-of", "2"], "--best-of needs --reward"),
        (["--products", "studio:can", "--reward", "gold:nobody", "--best-of", "2"], "unknown segment"),
        (["--products", "studio:can", "--eta", "0"], "invalid option: eta must be in (0, 1]"),
    ],
)
def test_input_errors(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture, args: list, message: str) -> None:
    code = main(["rollout", "sample", "--model", str(model), "--prompts", "oak wood floor", "--out", str(tmp_path),
                 *args, *FAST])  # fmt: skip
    assert code == 2
    assert message in capsys.readouterr().err


def test_mask_of_the_wrong_size(model: Path, photo, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rgb_path, _, _ = photo
    small = tmp_path / "small_mask.png"
    Image.fromarray(np.full((10, 12), 255, dtype=np.uint8)).save(small)
    code = main(["rollout", "sample", "--model", str(model), "--products", str(rgb_path), "--masks", str(small),
                 "--prompts", "oak wood floor", "--out", str(tmp_path / "o"), *FAST])  # fmt: skip
    assert code == 2
    assert "small_mask.png: mask is 12x10 but its photo is 128x128" in capsys.readouterr().err


@pytest.mark.skipif(not STUDIO_TINY.is_dir(), reason="shipped weights not present")
def test_default_model_is_the_shipped_base(tmp_path: Path) -> None:
    code = main(["rollout", "sample", "--products", "studio:jar:1", "--prompts", "sage linen backdrop", "--n", "1",
                 "--out", str(tmp_path), *FAST])  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert Path(report["model"]) == STUDIO_TINY and report["preservation"]["ok"]
    assert report["preservation"]["max_abs_diff"] == 0


def soft_cutout(height: int, width: int, seed: int) -> np.ndarray:
    """A random RGBA photo of odd size: a product box (alpha 255) with a soft rim (alpha 1..254)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    image[..., 3] = 0
    image[height // 4 - 2 : 3 * height // 4 + 2, width // 4 - 2 : 3 * width // 4 + 2, 3] = rng.integers(1, 255)
    image[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4, 3] = 255
    return image


@pytest.mark.parametrize("native", [False, True])
def test_request_table_outputs_at_each_photos_own_size(model: Path, photo, tmp_path: Path, native: bool) -> None:
    rgb_path, mask_path, rgba = photo
    cutouts = {"odd": soft_cutout(45, 71, 1), "tall": soft_cutout(90, 33, 2)}
    for name, image in cutouts.items():
        Image.fromarray(image).save(tmp_path / f"{name}.png")
    (tmp_path / "photos").mkdir()
    Image.open(rgb_path).save(tmp_path / "photos" / "gift.png")
    Image.open(mask_path).save(tmp_path / "photos" / "gift_mask.png")
    (tmp_path / "requests.csv").write_text(
        "request_id,product_id,image,mask,prompt\n"
        "odd/1,odd,odd.png,,oak wood floor\ntall-1,tall,tall.png,,white marble tabletop\n"
        "gift-1,gift,photos/gift.png,photos/gift_mask.png,oak wood floor\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    code = main(["rollout", "sample", "--model", str(model), "--requests", str(tmp_path / "requests.csv"),
                 "--out", str(out), *(["--native"] if native else []), *FAST])  # fmt: skip
    assert code == 0
    expected = {"odd_1.png": cutouts["odd"], "tall-1.png": cutouts["tall"], "gift-1.png": rgba}
    assert sorted(p.name for p in (out / "images").glob("*.png")) == sorted(expected)
    for name, source in expected.items():
        pixels = read(out / "images" / name)
        assert pixels.shape == (*source.shape[:2], 3)
        alpha = source[..., 3].astype(np.uint32)[..., None]
        full, soft = alpha[..., 0] == 255, (alpha[..., 0] > 0) & (alpha[..., 0] < 255)
        np.testing.assert_array_equal(pixels[full], source[..., :3][full])
        # Soft pixels lie between the photo and the background, by the integer formula: a painted value q exists.
        lo = (alpha * source[..., :3] + 127) // 255
        hi = (alpha * source[..., :3] + (255 - alpha) * 255 + 127) // 255
        assert ((pixels >= lo) & (pixels <= hi))[soft].all()
    report = json.loads((out / "report.json").read_text())
    assert report["alpha_rule"]["ok"] and report["alpha_rule"]["soft_pixels"] > 0
    manifest = out / "requests" / "requests.parquet"
    assert manifest.is_file() and len(list((out / "requests" / "files").iterdir())) == 4


@pytest.mark.parametrize(
    ("table", "code", "message"),
    [
        ("request_id,product_id,image,prompt\na,p,nowhere.png,oak\n", 1,
         "no request was accepted (1 read):\n  "),
        ("request_id,product_id,image\na,p,x.png\n", 2, "missing required column 'prompt'"),
    ],
)  # fmt: skip
def test_request_table_errors(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture, table: str, code: int,
                              message: str) -> None:  # fmt: skip
    (tmp_path / "r.csv").write_text(table, encoding="utf-8")
    assert main(["rollout", "sample", "--model", str(model), "--requests", str(tmp_path / "r.csv"), *FAST]) == code
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Image.fromarray(np.full((40, 40), 40000, dtype=np.uint16)), "has more than 8 bits per channel"),
        (lambda: Image.new("CMYK", (40, 40)), "CMYK images are not supported; convert it to sRGB"),
        (lambda: Image.new("RGBA", (20, 40)), "image is 20x40; photos need sides of at least 32 pixels"),
    ],
)  # fmt: skip
def test_odd_product_photos_are_refused_by_name(model: Path, tmp_path: Path, capsys, make, message: str) -> None:
    path = tmp_path / ("photo.jpg" if make().mode == "CMYK" else "photo.png")
    make().save(path)
    code = main(["rollout", "sample", "--model", str(model), "--products", str(path), "--prompts", "oak wood floor",
                 "--out", str(tmp_path / "out"), *FAST])  # fmt: skip
    assert code == 2
    assert message in capsys.readouterr().err


def test_colliding_file_names_are_refused(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    Image.fromarray(soft_cutout(40, 40, 3)).save(tmp_path / "a.png")
    (tmp_path / "r.csv").write_text("request_id,product_id,image,prompt\na/1,p,a.png,oak\na 1,p,a.png,oak\n")
    assert main(["rollout", "sample", "--model", str(model), "--requests", str(tmp_path / "r.csv"), *FAST]) == 2
    assert "requests 'a/1' and 'a 1' would both be written as images/a_1*.png" in capsys.readouterr().err


def test_requests_exclude_products(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["rollout", "sample", "--model", str(model), "--requests", "r.csv", "--products", "studio:can", *FAST]
    assert main(args) == 2
    assert "--requests replaces --products, --masks and --prompts" in capsys.readouterr().err
