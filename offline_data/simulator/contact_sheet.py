"""A contact sheet of a world, so a person can look at it: products, noisy masks, backgrounds, composites.

Rows, top to bottom: products on a checkerboard (kind); the segmenter's masks over the product (red: extra
pixels, blue: missed pixels; IoU); eight backgrounds for each prompt family; and for six products their
best and worst logged composite with its panel gold.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from offline_data.simulator.backgrounds import render_background
from offline_data.simulator.engagement import PANEL_SEGMENT
from offline_data.simulator.prompts import PROMPT_FAMILIES, parse_prompt, sample_prompt
from offline_data.simulator.world import StudioWorld

COLUMNS = 12


def _checkerboard(size: int) -> np.ndarray:
    cells = (np.add.outer(np.arange(size) // 8, np.arange(size) // 8) % 2).astype(np.uint8)
    return np.repeat((200 + 40 * cells)[..., None], 3, axis=2).astype(np.uint8)


def mask_overlay(photo: np.ndarray, exact: np.ndarray, noisy: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8: the photo dimmed, noisy-only pixels red, exact-only (missed) pixels blue."""
    out = (photo.astype(np.float64) * 0.55 + 255 * 0.45 * noisy[..., None]).astype(np.uint8)
    out[noisy & ~exact] = (230, 40, 40)
    out[exact & ~noisy] = (40, 80, 230)
    return out


def draw_contact_sheet(world: StudioWorld, path: str | Path, seed: int = 0) -> None:
    """Render the contact sheet of ``world`` to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = world.config.world.image_size
    rng = np.random.default_rng(seed)
    shown = np.linspace(0, len(world.products) - 1, min(COLUMNS, len(world.products))).astype(int)
    cells: list[list[tuple[np.ndarray, str]]] = []
    board = _checkerboard(size)
    cells.append(
        [
            (np.where(world.products[i].mask[..., None], world.products[i].rgb, board), world.products[i].kind)
            for i in shown
        ]
    )
    cells.append(
        [
            (
                mask_overlay(world.products[i].photo(), world.exact_masks[i], world.noisy_masks[i]),
                f"IoU {world.segmenter_iou[i]:.2f}",
            )
            for i in shown
        ]
    )
    for family in PROMPT_FAMILIES:
        row = []
        for _ in range(8):
            spec = dataclasses.replace(parse_prompt(sample_prompt(rng)), material=family)
            row.append(
                (render_background(spec, rng, size), f"{spec.colour or ''} {spec.lighting}/{spec.scene}".strip())
            )
        cells.append(row)
    gold = world.variant_gold[:, world.segment_column(PANEL_SEGMENT)]
    k_count = world.config.world.variants_per_product
    composites = []
    for i in shown[: COLUMNS // 2]:
        block = slice(i * k_count, (i + 1) * k_count)
        order = np.argsort(gold[block]) + i * k_count
        composites.append((world.variants.images[order[-1]], f"best {gold[order[-1]]:+.2f}"))
        composites.append((world.variants.images[order[0]], f"worst {gold[order[0]]:+.2f}"))
    cells.append(composites)

    labels = ["products", "noisy masks", *[f"{f} backgrounds" for f in PROMPT_FAMILIES], "composites (panel gold)"]
    fig, axes = plt.subplots(len(cells), COLUMNS, figsize=(COLUMNS * 1.05, len(cells) * 1.15), squeeze=False)
    for r, row in enumerate(cells):
        for c in range(COLUMNS):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(row):
                image, caption = row[c]
                ax.imshow(image, interpolation="nearest")
                ax.set_title(caption, fontsize=5.5, pad=2)
        axes[r][0].set_ylabel(labels[r], fontsize=7, rotation=0, ha="right", va="center", labelpad=6)
    fig.suptitle(f"studio world (seed {world.config.seed}): {len(world.products)} products", fontsize=10)
    fig.tight_layout(rect=(0.06, 0, 1, 0.98))
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
