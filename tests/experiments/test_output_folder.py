"""Output folders: a used folder is refused, --overwrite empties only that folder and never what it must not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from experiments.output_folder import prepare_output_folder
from offline_data.errors import OutputExistsError, OutputPathError


def used(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "old.json").write_text("{}")
    (folder / "plots").mkdir()
    (folder / "plots" / "a.png").write_bytes(b"png")
    return folder


def test_new_and_empty_folders_are_used_and_a_used_one_is_refused(tmp_path: Path) -> None:
    assert prepare_output_folder(tmp_path / "a" / "b", overwrite=False).is_dir()  # created with its parents
    (tmp_path / "empty").mkdir()
    assert prepare_output_folder(tmp_path / "empty", overwrite=False) == tmp_path / "empty"
    with pytest.raises(OutputExistsError, match=r"used: output folder is not empty \(2 entries: old.json, plots\)"):
        prepare_output_folder(used(tmp_path / "used"), overwrite=False)
    assert (tmp_path / "used" / "old.json").is_file()  # refused: nothing touched
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match="the output folder is a file"):
        prepare_output_folder(tmp_path / "file", overwrite=True)


def test_overwrite_empties_the_folder_without_following_symlinks(tmp_path: Path) -> None:
    keep = used(tmp_path / "elsewhere")
    out = used(tmp_path / "out")
    os.symlink(keep, out / "link_to_folder")
    os.symlink(keep / "old.json", out / "link_to_file")
    assert prepare_output_folder(out, overwrite=True) == out
    assert list(out.iterdir()) == []
    assert sorted(p.name for p in keep.rglob("*")) == ["a.png", "old.json", "plots"]  # the links' targets stay


def test_overwrite_refuses_folders_it_must_not_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    logs = used(tmp_path / "logs")
    with pytest.raises(OutputExistsError, match="--overwrite would delete the input"):
        prepare_output_folder(logs, overwrite=True, inputs=[logs / "old.json"])
    with pytest.raises(OutputExistsError, match="--overwrite would delete the input"):
        prepare_output_folder(logs, overwrite=True, inputs=[logs])
    monkeypatch.chdir(logs / "plots")
    with pytest.raises(OutputExistsError, match="will not empty the root, home or working folder"):
        prepare_output_folder(logs, overwrite=True)  # a parent of the working folder
    os.symlink(logs, tmp_path / "alias")
    with pytest.raises(OutputExistsError, match="reached through a symlink"):
        prepare_output_folder(tmp_path / "alias", overwrite=True)
    assert (logs / "old.json").is_file() and (logs / "plots" / "a.png").is_file()
