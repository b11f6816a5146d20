"""Request tables and photo decoding: every bad row rejected with its message, odd photos refused by name or kept
exactly, accepted + rejected = read."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from offline_data.errors import InputUnreadableError, LogValidationError
from offline_data.photos import PhotoError, PhotoLimits, decode_photo
from offline_data.requests import RequestTableConfig, read_requests, require_requests

RNG = np.random.default_rng(7)
HEADER = "request_id,product_id,image,mask,prompt,segment,split\n"


def rgba(height: int = 48, width: int = 40) -> np.ndarray:
    """A random photo whose centre box is the product (alpha 255), with a soft rim (alpha 100) around it."""
    image = RNG.integers(0, 256, (height, width, 4), dtype=np.uint8)
    image[..., 3] = 0
    image[height // 4 - 1 : 3 * height // 4 + 1, width // 4 - 1 : 3 * width // 4 + 1, 3] = 100
    image[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4, 3] = 255
    return image


def png16(path: Path, height: int, width: int) -> None:
    """A 16-bit-per-channel RGB PNG, written by hand (Pillow cannot write one)."""
    pixels = RNG.integers(0, 65536, (height, width, 3), dtype=np.uint16).astype(">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    Image.fromarray(rgba()).save(tmp_path / "ok.png")
    Image.fromarray(rgba(37, 53)).save(tmp_path / "odd.png")
    Image.fromarray(rgba()[..., :3]).save(tmp_path / "rgb.png")
    mask = np.zeros((48, 40), dtype=np.uint8)
    mask[10:30, 10:30] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    Image.fromarray(np.zeros((48, 40), dtype=np.uint8)).save(tmp_path / "empty_mask.png")
    Image.fromarray(np.full((48, 40), 255, dtype=np.uint8)).save(tmp_path / "full_mask.png")
    Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(tmp_path / "small_mask.png")
    Image.fromarray(rgba(8, 8)).save(tmp_path / "tiny.png")
    Image.fromarray(RNG.integers(0, 65536, (48, 40), dtype=np.uint16)).save(tmp_path / "grey16.png")
    png16(tmp_path / "rgb16.png", 48, 40)
    Image.fromarray(rgba()[..., :3]).convert("CMYK").save(tmp_path / "cmyk.jpg")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "sub").mkdir()
    Image.fromarray(rgba()).save(tmp_path.parent / f"{tmp_path.name}_outside.png")
    return tmp_path


GOOD = "ok,p1,ok.png,,white marble tabletop,,train\n"
CASES = [
    ("dup,p1,ok.png,,oak floor,,\ndup,p2,ok.png,,oak floor,,\n", "request_id:duplicate",
     "row 3, column 'request_id': expected a unique id, got 'dup' (first in row 2)"),
    ("e,p1,ok.png,,,,\n", "prompt:empty", "row 2, column 'prompt': expected a non-empty string, got null"),
    ("e,p1,ok.png,,nike logo,,\n", "prompt:refused", "expected a prompt the guards allow, got 'nike logo' (blocked)"),
    ("m,p1,nowhere.png,,oak,,\n", "image:missing", "nowhere.png: image file not found"),
    ("m,p1,broken.png,,oak,,\n", "image:unreadable", "broken.png: cannot decode image"),
    ("m,p1,tiny.png,,oak,,\n", "image:size", "tiny.png: image is 8x8; photos need sides of at least 32 pixels"),
    ("m,p1,grey16.png,,oak,,\n", "image:unsupported", "Pillow mode 'I;16' has more than 8 bits per channel"),
    ("m,p1,rgb16.png,,oak,,\n", "image:unsupported", "rgb16.png: 16-bit-per-channel PNG; outputs are 8-bit"),
    ("m,p1,cmyk.jpg,,oak,,\n", "image:unsupported", "cmyk.jpg: CMYK images are not supported; convert it to sRGB"),
    ("m,p1,rgb.png,small_mask.png,oak,,\n", "mask:size", "mask is 20x20 but its photo is 40x48"),
    ("m,p1,rgb.png,empty_mask.png,oak,,\n", "mask:empty", "no product pixel (no alpha or mask value >= 128)"),
    ("m,p1,rgb.png,full_mask.png,oak,,\n", "mask:covers", "the product covers 100.0% of the photo"),
    ("m,p1,rgb.png,images/none.png,oak,,\n", "mask:missing", "images/none.png: mask file not found"),
    ("m,p1,rgb.png,grey16.png,oak,,\n", "mask:unsupported", "grey16.png: Pillow mode 'I;16' has more than 8 bits"),
    ("m,p1,rgb.png,,oak,,\n", "alpha:none", "the photo has no alpha channel and the row gives no mask"),
    ("m,p1,../{name}_outside.png,,oak,,\n", "image:outside", "expected a path inside the table's folder"),
    ("m,p1,ok.png,,oak,,test\n", "split:invalid", "column 'split': expected one of 'train', 'eval' (or empty)"),
]  # fmt: skip


def blocklist(prompts):
    return ["blocked" if "nike" in p else None for p in prompts]


@pytest.mark.parametrize(("rows", "reason", "message"), CASES, ids=[c[1] for c in CASES])
def test_bad_rows_are_rejected_with_their_message(folder: Path, rows: str, reason: str, message: str) -> None:
    path = folder / "requests.csv"
    path.write_text(HEADER + GOOD + rows.format(name=folder.name), encoding="utf-8")
    table = read_requests(path, guard=blocklist)
    assert table.read == 1 + rows.count("\n") == len(table) + table.rejects.num_rows
    assert reason in table.rejects.column("reason").to_pylist()
    assert any(message in m for m in table.problems()), table.problems()
    if reason == "image:outside":  # the same row is fine once outside paths are allowed
        allowed = read_requests(path, config=RequestTableConfig(allow_outside=True))
        assert allowed.rejects.num_rows == 0


def test_accepted_rows_record_hashes_sizes_and_a_stable_default_split(folder: Path) -> None:
    rows = [{"request_id": f"r{i}", "product_id": f"p{i % 7}", "image": "odd.png", "prompt": "oak"} for i in range(40)]
    pq.write_table(pa.Table.from_pylist(rows), folder / "requests.parquet")
    table = read_requests(folder / "requests.parquet")
    assert len(table) == 40 and table.rejects.num_rows == 0
    first = table.rows()[0]
    assert (first["height"], first["width"], first["orientation"], first["segment"]) == (37, 53, 1, "panel")
    assert len(first["image_sha256"]) == 64 and first["mask_sha256"] is None
    splits = {r["product_id"]: r["split"] for r in table.rows()}
    assert all(r["split"] == splits[r["product_id"]] for r in table.rows())  # one split per product
    again = read_requests(folder / "requests.parquet")
    assert again.accepted.column("split").equals(table.accepted.column("split"))


def test_jsonl_is_read_and_an_all_bad_table_is_refused(folder: Path) -> None:
    path = folder / "requests.jsonl"
    path.write_text('{"request_id": "a", "product_id": "p", "image": "rgb.png", "prompt": "oak"}\n', encoding="utf-8")
    with pytest.raises(LogValidationError, match="no request was accepted .1 read.:\n.*alpha channel"):
        require_requests(read_requests(path))
    with pytest.raises(InputUnreadableError, match="missing required column 'prompt'"):
        (folder / "bad.csv").write_text("request_id,product_id,image\na,p,ok.png\n", encoding="utf-8")
        read_requests(folder / "bad.csv")


def test_palette_photos_expand_exactly(tmp_path: Path) -> None:
    palette = Image.fromarray(rgba()[..., :3]).quantize(16)
    palette.save(tmp_path / "p.png")
    photo = decode_photo(tmp_path / "p.png")
    np.testing.assert_array_equal(photo.rgb, np.asarray(palette.convert("RGB")))
    assert photo.mode == "P" and photo.alpha is None


def test_exif_orientation_is_applied_and_recorded(tmp_path: Path) -> None:
    image = rgba(40, 60)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(image).save(tmp_path / "rotated.png", exif=exif)
    photo = decode_photo(tmp_path / "rotated.png")
    assert photo.orientation == 6 and photo.size == (60, 40)
    np.testing.assert_array_equal(photo.rgb, np.rot90(image[..., :3], k=-1))
    np.testing.assert_array_equal(photo.alpha, np.rot90(image[..., 3], k=-1))


def test_huge_photos_are_refused_before_decoding(tmp_path: Path) -> None:
    Image.fromarray(rgba(40, 300)).save(tmp_path / "wide.png")
    with pytest.raises(PhotoError, match="image is 300x40; photos may have sides of at most 256 pixels") as caught:
        decode_photo(tmp_path / "wide.png", PhotoLimits(max_side=256))
    assert caught.value.reason == "image:size" and caught.value.exit_code == 2


def test_a_malformed_csv_record_is_rejected_whole(folder: Path) -> None:
    path = folder / "requests.csv"
    path.write_text(HEADER + GOOD + "x,p,ok.png,,oak,,train,surplus\n", encoding="utf-8")
    table = read_requests(path)
    assert (table.read, len(table), table.rejects.num_rows) == (2, 1, 1)
    (reject,) = table.rejects.to_pylist()
    assert (
        reject["reason"] == "row:malformed" and reject["row"] == 2 and "expected 7 fields, got 8" in reject["problems"]
    )
