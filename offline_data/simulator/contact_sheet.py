"""A contact sheet of a world, so a person can look at it: products, noisy masks, backgrounds, composites.

Rows, top to bottom: products on a checkerboard (kind); the segmenter's masks over the product (red: extra
pixels, blue: missed pixels; IoU); backgrounds for each prompt family (colour, lighting, scene in the
caption); and for six products their best and worst logged composite with its panel gold. Drawn with
Pillow on a numpy mosaic (a fraction of a second; images enlarged 2x with nearest-neighbour).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from offline_data.simulator.backgrounds import render_background
from offline_data.simulator.engagement import PANEL_SEGMENT
from offline_data.simulator.prompts import PROMPT_FAMILIES, parse_prompt, sample_prompt
from offline_data.simulator.world import StudioWorld

COLUMNS = 12
SCALE = 2
CAPTION = 14
LABEL_WIDTH = 150


def _checkerboard(size: int) -> np.ndarray:
    cells = (np.add.outer(np.arange(size) // 8, np.arange(size) // 8) % 2).astype(np.uint8)
    return np.repeat((200 + 40 * cells)[..., None], 3, axis=2).astype(np.uint8)


def mask_overlay(photo: np.ndarray, exact: np.ndarray, noisy: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8: the photo, noisy-only pixels red, exact-only (missed) pixels blue, outside dimmed."""
    out = np.where(noisy[..., None], photo, (photo.astype(np.float64) * 0.45).astype(np.uint8))
    out[noisy & ~exact] = (230, 40, 40)
    out[exact & ~noisy] = (40, 80, 230)
    return out


def _rows(world: StudioWorld, rng: np.random.Generator) -> list[tuple[str, list[tuple[np.ndarray, str]]]]:
    size = world.config.world.image_size
    shown = np.linspace(0, len(world.products) - 1, min(COLUMNS, len(world.products))).astype(int)
    board = _checkerboard(size)
    products, masks = [], []
    for i in shown:
        product = world.products[i]
        products.append((np.where(product.mask[..., None], product.rgb, board), product.kind))
        overlay = mask_overlay(product.photo(), world.exact_masks[i], world.noisy_masks[i])
        masks.append((overlay, f"IoU {world.segmenter_iou[i]:.2f}"))
    rows = [("products", products), ("noisy masks", masks)]
    for family in PROMPT_FAMILIES:
        cells = []
        for _ in range(COLUMNS):
            spec = dataclasses.replace(parse_prompt(sample_prompt(rng)), material=family)
            caption = f"{spec.colour or '-'} {spec.lighting} {spec.scene}"
            cells.append((render_background(spec, rng, size), caption))
        rows.append((f"{family} backgrounds", cells))
    gold = world.variant_gold[:, world.segment_column(PANEL_SEGMENT)]
    k_count = world.config.world.variants_per_product
    composites = []
    for i in shown[: COLUMNS // 2]:
        order = np.argsort(gold[i * k_count : (i + 1) * k_count]) + i * k_count
        composites.append((world.variants.images[order[-1]], f"best {gold[order[-1]]:+.2f}"))
        composites.append((world.variants.images[order[0]], f"worst {gold[order[0]]:+.2f}"))
    rows.append(("composites, panel gold", composites))
    return rows


def draw_contact_sheet(world: StudioWorld, path: str | Path, seed: int = 0) -> None:
    """Render the contact sheet of ``world`` to ``path`` (PNG)."""
    rows = _rows(world, np.random.default_rng(seed))
    cell = world.config.world.image_size * SCALE
    width = LABEL_WIDTH + COLUMNS * (cell + 4)
    height = 30 + len(rows) * (cell + CAPTION + 6)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(11)
    title = f"studio world, seed {world.config.seed}: {len(world.products)} products"
    draw.text((8, 8), title, fill=(0, 0, 0), font=font)
    for r, (label, cells) in enumerate(rows):
        top = 30 + r * (cell + CAPTION + 6)
        draw.text((8, top + cell // 2), label, fill=(0, 0, 0), font=font)
        for c, (image, caption) in enumerate(cells):
            left = LABEL_WIDTH + c * (cell + 4)
            big = np.repeat(np.repeat(image, SCALE, axis=0), SCALE, axis=1)
            sheet.paste(Image.fromarray(big), (left, top + CAPTION))
            draw.text((left, top), caption[:24], fill=(40, 40, 40), font=font)
    sheet.save(path, format="PNG")
