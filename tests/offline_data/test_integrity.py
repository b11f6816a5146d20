"""Verified weights: SHA256SUMS beside the weights, refusals that name the file, the expected and the found digest."""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from offline_data.integrity import (
    CHECKSUMS_FILE,
    WeightIntegrityError,
    require_finite_weights,
    rewrite_checksums,
    verify_weights,
    write_checksums,
)


def weights_folder(root: Path) -> Path:
    folder = root / "model"
    (folder / "sub").mkdir(parents=True)
    save_file({"w": torch.arange(6.0)}, str(folder / "a.safetensors"))
    save_file({"v": torch.ones(3)}, str(folder / "sub" / "b.safetensors"))
    (folder / "config.json").write_text("{}")
    return folder


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) - 3] ^= 0x01  # a byte of the tensor data (the header is at the front)
    path.write_bytes(bytes(data))


def test_sums_are_sha256sum_lines_of_every_weight_file_sorted(tmp_path: Path) -> None:
    folder = weights_folder(tmp_path)
    text = write_checksums(folder).read_text()
    digests = {
        n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in ("a.safetensors", "sub/b.safetensors")
    }
    assert text == "".join(f"{digests[n]}  {n}\n" for n in sorted(digests))  # what `sha256sum -c` reads
    assert verify_weights(folder, required=True) is True


def test_a_flipped_byte_is_refused_naming_file_expected_and_found(tmp_path: Path) -> None:
    folder = weights_folder(tmp_path)
    write_checksums(folder)
    expected = hashlib.sha256((folder / "sub" / "b.safetensors").read_bytes()).hexdigest()
    flip_byte(folder / "sub" / "b.safetensors")
    found = hashlib.sha256((folder / "sub" / "b.safetensors").read_bytes()).hexdigest()
    with pytest.raises(WeightIntegrityError) as info:
        verify_weights(folder, required=False)
    assert str(info.value).startswith(
        f"{folder / 'sub' / 'b.safetensors'}: SHA-256 mismatch: expected {expected} (listed in "
        f"{folder / CHECKSUMS_FILE}), found {found}; the file changed"
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("missing", "sub/b.safetensors: listed in"),
        ("extra", "c.safetensors: weight file not listed in"),
        ("malformed", "line 1: expected '<64 hex digits>  <file>', got 'not a sum'"),
        ("outside", "line 1: '../x.safetensors' is outside the folder"),
    ],
)
def test_bad_checksum_lists_are_named(tmp_path: Path, change: str, message: str) -> None:
    folder = weights_folder(tmp_path)
    write_checksums(folder)
    if change == "missing":
        (folder / "sub" / "b.safetensors").unlink()
    elif change == "extra":
        save_file({"x": torch.ones(1)}, str(folder / "c.safetensors"))
    elif change == "malformed":
        (folder / CHECKSUMS_FILE).write_text("not a sum\n")
    else:
        (folder / CHECKSUMS_FILE).write_text(f"{'0' * 64}  ../x.safetensors\n")
    with pytest.raises(WeightIntegrityError) as info:
        verify_weights(folder, required=False)
    assert message in str(info.value)


def test_a_folder_without_sums_is_refused_when_required_else_loaded_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = weights_folder(tmp_path)
    with pytest.raises(WeightIntegrityError, match="reward model was written by backdrop but has no SHA256SUMS"):
        verify_weights(folder, required=True, what="reward model")
    with caplog.at_level(logging.WARNING):
        assert verify_weights(folder, required=False, what="base model") is False
    assert "base model has no SHA256SUMS: loading unverified weights" in caplog.text


def test_a_component_added_with_its_own_list_is_covered(tmp_path: Path) -> None:
    folder = weights_folder(tmp_path)
    write_checksums(folder)
    (folder / "decoder").mkdir()
    save_file({"d": torch.ones(2)}, str(folder / "decoder" / "d.safetensors"))
    with pytest.raises(WeightIntegrityError, match="decoder/d.safetensors: weight file not listed"):
        verify_weights(folder, required=True)
    write_checksums(folder / "decoder")  # what save_component does: the component is checked when it is loaded
    assert verify_weights(folder, required=True)


def test_rewrite_checksums_follows_changed_weights(tmp_path: Path) -> None:
    folder = weights_folder(tmp_path)
    write_checksums(folder)
    write_checksums(folder / "sub")
    save_file({"v": torch.zeros(3)}, str(folder / "sub" / "b.safetensors"))  # e.g. stored again as float16
    assert [p.parent for p in rewrite_checksums(folder)] == [folder / "sub", folder]  # deepest first
    assert verify_weights(folder / "sub", required=True) and verify_weights(folder, required=True)


def test_non_finite_weights_are_refused_by_tensor_name() -> None:
    require_finite_weights({"ok": torch.ones(2), "step": torch.tensor([3])}, "here")
    with pytest.raises(WeightIntegrityError, match=r"^f.safetensors: tensor 'bad' has 2 NaN/infinite value\(s\) of 3"):
        require_finite_weights({"ok": torch.ones(2), "bad": torch.tensor([1.0, math.nan, math.inf])}, "f.safetensors")
