"""A request table of real photos shipped inside installed packages, for the README's "Bring your own catalogue".

``python -m experiments.catalogue_example --out runs/my_catalogue`` writes into ``OUT``:

- ``photos/gift.png``: matplotlib's sample product photo (128 x 128 RGBA, its alpha channel is the product, with a
  soft rim of 0 < alpha < 255 pixels);
- ``photos/china.jpg`` and ``photos/flower.jpg``: scikit-learn's sample photographs (640 x 427 JPEG, no alpha)
  with ``photos/*_mask.png``, an ellipse standing in for a segmenter's mask (white = product);
- ``requests.csv``: every photo with eight background prompts and a shopper segment; the gift and china rows are
  ``train``, the flower rows ``eval`` (held out: a product the policy never trains on).

The prompts are studio prompts (``rollout.guards``): the shipped tiny base knows their words. A team writes the same
table for its own photos (columns in ``offline_data/requests.py``).
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import matplotlib.cbook
import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_images

PROMPTS = (
    "white marble tabletop, soft window light, minimal",
    "oak wood tabletop, golden hour light, with plants",
    "sage linen backdrop, bright studio light, minimal",
    "navy linen backdrop, moody low light, with props",
    "terracotta marble floor, golden hour light, minimal",
    "concrete floor, bright studio light, with props",
    "white seamless paper backdrop, soft window light, with plants",
    "white marble tabletop, moody low light, minimal",
)
SEGMENTS = ("warm", "cool", "minimal")


def ellipse_mask(height: int, width: int, share: float = 0.3) -> np.ndarray:
    """A centred ellipse of the image's aspect covering about ``share`` of it, uint8 0/255 [H, W]."""
    rows, cols = np.ogrid[:height, :width]
    scale = np.sqrt(share / np.pi) * 2
    inside = ((rows - height / 2) / (scale * height / 2)) ** 2 + ((cols - width / 2) / (scale * width / 2)) ** 2 <= 1
    return np.where(inside, np.uint8(255), np.uint8(0))


def write_example(out: Path) -> Path:
    """Photos, masks and ``requests.csv`` into ``out`` (module docstring); returns the table's path."""
    photos = out / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    with matplotlib.cbook.get_sample_data("Minduka_Present_Blue_Pack.png") as handle:
        (photos / "gift.png").write_bytes(handle.read())
    products = [("gift", "photos/gift.png", "", "train")]
    for name, source in zip(("china", "flower"), load_sample_images().filenames):
        shutil.copyfile(source, photos / f"{name}.jpg")
        with Image.open(source) as image:
            width, height = image.size
        Image.fromarray(ellipse_mask(height, width)).save(photos / f"{name}_mask.png")
        products.append(
            (name, f"photos/{name}.jpg", f"photos/{name}_mask.png", "train" if name == "china" else "eval")
        )
    table = out / "requests.csv"
    with table.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["request_id", "product_id", "image", "mask", "prompt", "segment", "split"])
        for product, image, mask, split in products:
            for k, prompt in enumerate(PROMPTS):
                writer.writerow([f"{product}-{k}", product, image, mask, prompt, SEGMENTS[k % len(SEGMENTS)], split])
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder to write photos/ and requests.csv into")
    args = parser.parse_args(argv)
    table = write_example(args.out)
    print(f"request table {table} ({sum(1 for _ in table.open(encoding='utf-8')) - 1} requests)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
