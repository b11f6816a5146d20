"""Writing a world's images as PNG files and the rows of the assets table that describe them.

Files go under ``<out>/images/`` (not ``assets/``: a folder named after a table is read as that table's part
files) and the table's ``path`` column is relative to ``<out>`` (the folder holding ``assets.parquet``):

    images/products/<product_id>.png            RGBA, alpha 0/255 (kind "product")
    images/masks/<product_id>.png               the segmenter's mask, 8-bit 0/255 (kind "mask")
    images/masks/<product_id>_confidence.png    its confidence x 255 (not a table row: the schema has no
                                                 kind for it; read it next to the mask)
    images/generated/<product_id>-v<k>.png      RGB composite (kind "generated")

PNG bytes are deterministic for given pixels (no metadata, fixed compression), so the sha256 column is
reproducible.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from offline_data.simulator.world import StudioWorld

SEGMENTER_VERSION = "segmenter-sim-1"
"""model_version recorded for the noisy masks."""


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of [H, W] (grey), [H, W, 3] (RGB) or [H, W, 4] (RGBA) uint8 pixels."""
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        raise ValueError(f"pixels must be uint8 [H, W] or [H, W, C], got {pixels.dtype} {pixels.shape}")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def write_png(path: Path, pixels: np.ndarray) -> str:
    """Write ``pixels`` as PNG to ``path`` (parents created) and return the file's hex sha256."""
    data = encode_png(pixels)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def write_world_assets(world: StudioWorld, out_dir: Path, progress: bool = False) -> dict[str, list]:
    """Write every product, mask and generated image of ``world`` and return the assets table's columns.

    Returns:
        {column of ``SCHEMAS["assets"]``: list of values}, one entry per product, mask and generated image.
    """
    columns: dict[str, list] = {
        name: []
        for name in ("image_id", "product_id", "path", "sha256", "kind", "category", "prompt", "style_id",
                     "model_version", "seed")
    }  # fmt: skip

    def add(image_id: str, product_id: str, relative: str, pixels: np.ndarray, kind: str, category: str, **extra):
        columns["image_id"].append(image_id)
        columns["product_id"].append(product_id)
        columns["path"].append(relative)
        columns["sha256"].append(write_png(out_dir / relative, pixels))
        columns["kind"].append(kind)
        columns["category"].append(category)
        for name in ("prompt", "style_id", "model_version", "seed"):
            columns[name].append(extra.get(name))

    variants = world.variants
    k_count = world.config.world.variants_per_product
    for i, product in enumerate(tqdm(world.products, desc="writing assets", unit="product", disable=not progress)):
        pid = product.product_id
        add(f"{pid}-product", pid, f"images/products/{pid}.png", product.rgba, "product", product.kind)
        mask_pixels = np.where(world.noisy_masks[i], 255, 0).astype(np.uint8)
        add(f"{pid}-mask", pid, f"images/masks/{pid}.png", mask_pixels, "mask", product.kind,
            model_version=SEGMENTER_VERSION)  # fmt: skip
        confidence = np.round(world.confidences[i] * 255.0).astype(np.uint8)
        write_png(out_dir / f"images/masks/{pid}_confidence.png", confidence)
        for j in range(i * k_count, (i + 1) * k_count):
            image_id = variants.image_ids[j]
            add(
                image_id,
                pid,
                f"images/generated/{image_id}.png",
                variants.images[j],
                "generated",
                product.kind,
                prompt=variants.prompts[j],
                model_version=world.config.generator.model_version,
                seed=int(variants.seeds[j]),
            )
    return columns
