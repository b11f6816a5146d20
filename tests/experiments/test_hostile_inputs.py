"""Hostile inputs and a hostile environment end in a named error with its own exit code, never exit 70.

Each case lays out its input under a fresh folder, runs ``backdrop`` in-process and checks the exit code and
the one-line message (the exit-code table is in ``offline_data/errors.py``). Faults the test cannot cause as
root (a read-only folder, a full disk) are raised by a patched ``Path`` method with the errno the operating
system would give.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from experiments.cli import main
from offline_data.errors import (
    DiskFullError,
    InputMissingError,
    OutputPathError,
    PermissionDeniedError,
    StorageError,
    environment_error,
)

SMALL_WORLD = [
    "--set", "world.products=6", "--set", "world.variants_per_product=2", "--set", "logging.requests=60",
    "--set", "annotators.pairs=20", "--no-progress",
]  # fmt: skip
SAMPLE = ["rollout", "sample", "--prompts", "warm oak table", "--n", "1", "--steps", "2", "--no-progress"]
DEEP = "[" * 3000 + "]" * 3000


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small simulated world (logs + images), shared read-only by the cases."""
    out = tmp_path_factory.mktemp("hostile") / "world"
    assert main(["simulate", "--out", str(out), *SMALL_WORLD]) == 0
    return out


class Case(NamedTuple):
    name: str
    setup: Callable[[Path, Path, pytest.MonkeyPatch], list[str]]
    """(tmp, world, monkeypatch) -> argv; lays out the hostile input first."""
    code: int
    message: str
    """Regular expression the error output (or, for exit 1, the printed problems) must contain."""


# ------------------------------------------------------------------------------------------------------
# Set-ups


def _file(tmp: Path, name: str = "file") -> Path:
    path = tmp / name
    path.write_text("not a folder\n")
    return path


def _full_folder(tmp: Path) -> Path:
    folder = tmp / "earlier"
    folder.mkdir()
    (folder / "old.json").write_text("{}\n")
    return folder


def _impressions_jsonl(tmp: Path, world: Path, edit: Callable[[list[str]], None]) -> Path:
    """The world's impressions as JSON Lines in ``tmp/logs``, lines changed by ``edit``."""
    rows = pq.read_table(world / "impressions.parquet").slice(0, 8).to_pylist()
    lines = [json.dumps(row, default=str) for row in rows]
    edit(lines)
    path = tmp / "logs" / "impressions.jsonl"
    path.parent.mkdir()
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _deep_line(lines: list[str], index: int) -> None:
    """Line ``index`` with its segment nested 3,000 arrays deep (Arrow refuses it, so Python's json parses it)."""
    record = json.loads(lines[index])
    record["segment"] = "@"
    lines[index] = json.dumps(record).replace('"@"', DEEP)


def _part_folder(tmp: Path, world: Path, hostile: Callable[[Path], None]) -> Path:
    folder = tmp / "impressions"
    folder.mkdir()
    (folder / "part-0000.parquet").write_bytes((world / "impressions.parquet").read_bytes())
    hostile(folder)
    return folder


def _validate_parts(hostile: Callable[[Path], object]) -> Callable[..., list[str]]:
    """A ``data validate`` set-up of an impressions part folder with one good part, then ``hostile(folder)``."""

    def setup(tmp: Path, world: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
        return ["data", "validate", "--impressions", str(_part_folder(tmp, world, hostile)), "--out", str(tmp / "v")]

    return setup


def _validate_jsonl(edit: Callable[[list[str]], None]) -> Callable[..., list[str]]:
    """A ``data validate`` set-up of impressions as JSON Lines, its lines changed by ``edit``."""

    def setup(tmp: Path, world: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
        path = _impressions_jsonl(tmp, world, edit)
        return ["data", "validate", "--impressions", str(path), "--out", str(tmp / "v")]

    return setup


def _set_value(index: int, column: str, value: str) -> Callable[[list[str]], None]:
    def edit(lines: list[str]) -> None:
        lines[index] = json.dumps({**json.loads(lines[index]), column: value})

    return edit


def _asset_outside(tmp: Path, world: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The world's assets table with row 2's path leading out of the logs folder, validated with --check-files."""
    table = pq.read_table(world / "assets.parquet")
    paths = table.column("path").to_pylist()
    paths[1] = "../" * 12 + "etc/hostname"
    logs = tmp / "logs"
    logs.mkdir()
    pq.write_table(
        table.set_column(table.schema.get_field_index("path"), "path", pa.array(paths)), logs / "assets.parquet"
    )
    return ["data", "validate", "--assets", str(logs / "assets.parquet"), "--check-files", "--out", str(tmp / "v")]


def _space(tmp: Path, target: str) -> str:
    """A sweep space file naming ``target`` (the policy train space otherwise)."""
    shipped = Path(__file__).resolve().parents[2] / "experiments" / "configs" / "policy_train_space.toml"
    path = tmp / "space.toml"
    path.write_text(shipped.read_text().replace('target = "policy train"', f"target = {json.dumps(target)}"))
    return str(path)


def _sample(tmp: Path, *args: str) -> list[str]:
    """``rollout sample`` of one image in 2 steps into ``tmp/out``, with ``args``."""
    return [*SAMPLE, "--out", str(tmp / "out"), *args]


def _photo(tmp: Path, height: int, width: int, product: tuple[slice, slice] | None = None) -> str:
    rgba = np.zeros((height, width, 4), dtype=np.uint8)
    rgba[product or (slice(0, height // 2), slice(0, width // 2))] = 255
    path = tmp / f"photo_{height}x{width}.png"
    Image.fromarray(rgba).save(path)
    return str(path)


def _raise_on(monkeypatch: pytest.MonkeyPatch, method: str, name: str, error: OSError) -> None:
    """Make ``Path.<method>`` raise ``error`` for paths whose file name is ``name`` (others work as usual)."""
    original = getattr(Path, method)

    def patched(self: Path, *args: object, **kwargs: object) -> object:
        if self.name == name:
            raise type(error)(error.errno, error.strerror, str(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, method, patched)


def _validate(tmp: Path, world: Path, *extra: str) -> list[str]:
    return ["data", "validate", str(world), "--out", str(tmp / "validated"), *extra]


def _validate_with_fault(method: str, name: str, error: OSError) -> Callable[..., list[str]]:
    """A ``data validate`` set-up in which ``Path.<method>`` on ``name`` fails with ``error``."""

    def setup(tmp: Path, world: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
        _raise_on(monkeypatch, method, name, error)
        return _validate(tmp, world)

    return setup


def _deep_toml(tmp: Path) -> str:
    path = tmp / "deep.toml"
    path.write_text(f"seed = {DEEP}\n")
    return str(path)


def _lora_nope(tmp: Path, world: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import experiments.policy_runs.train

    # The reward model is not what this case is about: a stand-in that scores every image 0.
    monkeypatch.setattr(experiments.policy_runs.train, "load_reward_model", lambda *a, **k: lambda images, requests: 0)
    (tmp / "reward").mkdir()
    return [
        "policy", "train", "--reward", str(tmp / "reward"), "--no-progress",
        "--set", 'policy.lora.target_modules=["nope"]', "--set", f"run.output_dir={tmp / 'runs'}",
    ]  # fmt: skip


CASES = [
    # Output folders: never mixed, never created under a file, never emptied when they hold an input.
    Case("out under a regular file", lambda t, w, m: _validate(t, w, "--out", str(_file(t) / "v")), 73,
         r"file/v: a part of this path is a regular file, not a folder"),
    Case("out is a regular file", lambda t, w, m: _validate(t, w, "--out", str(_file(t))), 73,
         r"file: the output folder is a file"),
    Case("validate into a used folder", lambda t, w, m: _validate(t, w, "--out", str(_full_folder(t))), 73,
         r"earlier: output folder is not empty \(1 entries: old.json\); pass --overwrite"),
    Case("--overwrite of the folder holding the input",
         lambda t, w, m: ["data", "validate", "--impressions", str(_part_folder(t, w, lambda f: None)), "--out",
                          str(t), "--overwrite"], 73, r"--overwrite would delete the input"),
    Case("split into a used folder",
         lambda t, w, m: ["data", "split", str(w), "--out", str(_full_folder(t))], 73, "output folder is not empty"),
    Case("rollout into a used folder",
         lambda t, w, m: [*SAMPLE, "--products", "studio:box", "--out", str(_full_folder(t))], 73,
         "output folder is not empty"),
    Case("reward eval into a used folder",
         lambda t, w, m: ["reward", "eval", str(t), "--data", str(w), "--out", str(_full_folder(t))], 73,
         "output folder is not empty"),
    Case("simulate into a used folder",
         lambda t, w, m: ["simulate", "--out", str(_full_folder(t)), *SMALL_WORLD], 73, "output folder is not empty"),
    # The machine refuses: permissions, a full disk, an I/O error, a path that vanished.
    Case("read-only output folder",
         _validate_with_fault("mkdir", "validated", PermissionError(errno.EACCES, "Permission denied")), 77,
         r"validated: permission denied \(Permission denied\)"),
    Case("read-only filesystem", _validate_with_fault("mkdir", "validated", OSError(errno.EROFS, "Read-only")), 77,
         r"validated: permission denied \(Read-only\)"),
    Case("disk full", _validate_with_fault("write_text", "environment.json", OSError(errno.ENOSPC, "No space")), 74,
         r"environment.json: no space left on the device"),
    Case("device I/O error", _validate_with_fault("write_text", "environment.json", OSError(errno.EIO, "I/O error")),
         74, r"environment.json: I/O error"),
    Case("input vanished mid-run", _validate_with_fault("write_text", "config.toml", FileNotFoundError(2, "gone")),
         66, r"config.toml: not found \(gone\)"),
    Case("a number too large for the computation", lambda t, w, m: _validate(t, w, "--batch-rows", str(10**20)),
         65, r"a number overflowed \(Python int too large to convert to C long\)"),
    # Photos the model cannot take.
    Case("--native on a photo above --max-native-side",
         lambda t, w, m: _sample(t, "--native", "--max-native-side", "48", "--products", _photo(t, 64, 80)),
         2, r"the photo is 80x64; --native paints photos with sides up to 48 pixels"),
    Case("--native on a 2x2 photo",
         lambda t, w, m: _sample(t, "--native", "--products", _photo(t, 2, 2, (slice(0, 1), slice(0, 1)))),
         2, r"image is 2x2; photos need sides of at least 32 pixels"),
    Case("a 4x4 photo (nothing a latent grid could paint)",
         lambda t, w, m: _sample(t, "--products", _photo(t, 4, 4)), 2,
         r"image is 4x4; photos need sides of at least 32 pixels"),
    Case("a product photo that is not an image",
         lambda t, w, m: _sample(t, "--products", str(_file(t, "photo.png"))), 2, r"photo.png: cannot decode image"),
    Case("a seed past int64", lambda t, w, m: _sample(t, "--products", "studio:box", "--seed", str(10**20)), 2,
         r"--seed must be in \[0, 2\*\*62\)"),
    Case("more steps than the schedule has", lambda t, w, m: _sample(t, "--products", "studio:box", "--steps", "5000"),
         2, r"--steps 5000: the model's schedule has 1000 timesteps"),
    # Configs.
    Case("LoRA on modules the UNet lacks", _lora_nope, 2,
         r"policy.lora.target_modules=\['nope'\]: no such module in the UNet"),
    Case("--set value nested 3,000 deep", lambda t, w, m: ["simulate", "--out", str(t / "w"), "--set", f"seed={DEEP}"],
         2, r"bad --set seed=...: the value nests arrays too deeply"),
    Case("config file nested 3,000 deep",
         lambda t, w, m: ["simulate", "--out", str(t / "w"), "--config", _deep_toml(t), "--no-progress"], 2,
         r"deep.toml: invalid TOML: arrays or tables nested too deeply"),
    Case("unknown config key", lambda t, w, m: ["simulate", "--out", str(t / "w"), "--set", "world.prodcts=3"], 2,
         r"unknown key 'world.prodcts'"),
    # Contained inputs.
    Case("a sweep space importing a module",
         lambda t, w, m: ["sweep", "--space", _space(t, "os:system"), "--set", f"run.output_dir={t}"], 2,
         r"sweep target 'os:system': a space file names a registered target, never a module to import"),
    Case("an id with a NUL", _validate_jsonl(_set_value(2, "event_id", "e\x00x")), 1,
         r"row 3, column 'event_id': expected non-empty string without control characters .*, got 'e\\x00x'"),
    Case("an id with a terminal escape", _validate_jsonl(_set_value(3, "product_id", "p\x1b[2J")), 1,
         r"row 4, column 'product_id': expected non-empty string without control characters .*, got 'p\\x1b\[2J'"),
    Case("a timestamp without a zone", _validate_jsonl(_set_value(1, "shown_at", "2024-03-01T10:00:00")), 1,
         r"row 2, column 'shown_at': expected an ISO-8601 timestamp with a zone .* --assume-timezone ZONE"),
    Case("an asset path leaving the logs folder", _asset_outside, 1,
         r"row 2, column 'path': expected a path inside .*logs \(--allow-outside-assets reads others\), got '\.\./"),
    # Log tables.
    Case("JSON line 1 nested 3,000 deep", _validate_jsonl(lambda lines: _deep_line(lines, 0)), 2,
         r"impressions.jsonl: not JSON Lines: line 1 nests arrays or objects too deeply"),
    Case("a later JSON line nested 3,000 deep", _validate_jsonl(lambda lines: _deep_line(lines, 4)), 1,
         r"row 5: nests arrays or objects too deeply"),
    Case("a part 'file' that is a folder", _validate_parts(lambda f: (f / "part-0001.parquet").mkdir()), 2,
         r"part-0001.parquet: expected a part file of the impressions table, found a folder"),
    Case("a part 'file' that is a symlink loop",
         _validate_parts(lambda f: os.symlink(f / "part-0001.parquet", f / "part-0001.parquet")), 2,
         r"part-0001.parquet: expected a part file of the impressions table, found a symlink loop"),
    Case("a part 'file' that is a broken symlink",
         _validate_parts(lambda f: os.symlink(f / "gone", f / "part-0001.parquet")), 2, r"found a broken symlink"),
    Case("a table of unknown format", lambda t, w, m: ["data", "validate", "--impressions", str(_file(t, "x.txt"))],
         2, r"x.txt: cannot tell the format of the impressions table"),
    Case("a logs folder that does not exist", lambda t, w, m: ["data", "validate", str(t / "nope")], 2,
         r"nope: folder not found"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_input_is_a_named_error(
    case: Case, world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = case.setup(tmp_path, world, monkeypatch)
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == case.code, err
    assert code != 70 and "internal error" not in err and "Traceback" not in err
    if code == 1:  # rows rejected: the problems are printed, the run succeeds
        assert re.search(case.message, out), out
    else:
        assert re.search(case.message, err), err
        # One line says what went wrong (library warnings or the run's log may come before it).
        assert err.splitlines()[-1].startswith("backdrop: error: ") and err.count("backdrop: error") == 1, err


def test_the_table_has_at_least_25_cases_and_several_codes() -> None:
    assert len(CASES) >= 25
    assert {1, 2, 65, 66, 73, 74, 77} <= {case.code for case in CASES}


@pytest.mark.parametrize(
    ("error", "named", "code"),
    [
        (PermissionError(errno.EACCES, "Permission denied", "/x"), PermissionDeniedError, 77),
        (OSError(errno.EROFS, "Read-only file system", "/x"), PermissionDeniedError, 77),
        (OSError(errno.ENOSPC, "No space left on device", "/x"), DiskFullError, 74),
        (OSError(errno.EDQUOT, "Disk quota exceeded", "/x"), DiskFullError, 74),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/x"), OutputPathError, 73),
        (FileExistsError(errno.EEXIST, "File exists", "/x"), OutputPathError, 73),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/x"), InputMissingError, 66),
        (OSError(errno.EIO, "Input/output error", "/x"), StorageError, 74),
    ],
)
def test_every_os_error_becomes_a_named_one_line_error(error: OSError, named: type, code: int) -> None:
    result = environment_error(error)
    assert type(result) is named and result.exit_code == code
    assert str(result).startswith("/x: ") and error.strerror in str(result) and "\n" not in str(result)
