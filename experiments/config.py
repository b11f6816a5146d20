"""Strict TOML configuration: frozen dataclasses, typed keys, did-you-mean suggestions, --set overrides.

Every component owns one frozen, keyword-only dataclass (``reward/config.py``, ``policy/config.py``, ...)
that validates itself in ``__post_init__`` by raising ``ValueError``. A command composes them into a root
dataclass whose fields are the TOML sections. This module turns TOML text into that root:

- precedence is defaults < file < profile < ``--set`` overrides, where the *profile* is the TOML file named by the
  environment variable ``BACKDROP_CONFIG_OVERRIDES`` (:func:`environment_profile`): one file for every command
  (e.g. ``experiments/configs/smoke.toml``, toy sizes to check a set-up in seconds), each command taking the keys
  its own config has and skipping the rest;
- an unknown key fails with a suggestion (``unknown key 'policy.lora.rnak' (did you mean 'rank'?)``);
- a value of the wrong type fails naming the key, the expected type and the value found;
- every float must be finite (TOML reads ``nan`` and ``inf`` as floats; no setting of backdrop means them) and
  no larger in magnitude than :data:`MAX_MAGNITUDE`; learning rates must lie in (0, :data:`MAX_LEARNING_RATE`];
- a ``ValueError`` from a component's ``__post_init__`` is re-raised naming the section it came from;
- :func:`dump_toml` writes the resolved config back out, so every run directory holds what it ran with.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from offline_data.errors import BackdropError

T = TypeVar("T")


UNSET_KEY = "_unset"
"""Reserved top-level key: a list of dotted keys whose value is None (TOML has no null). ``dump_toml`` writes it so
that a field set to None where its default is not None survives the round trip through ``config.toml``."""

_NONE = object()  # marks a key listed in `_unset` until it is coerced

MAX_MAGNITUDE = 1e12
"""Largest absolute value a float setting may take. The largest float default is 2,000 (the DPO beta); a number past
1e12 is a typo (``1e300``) whose products overflow float32 (max 3.4e38) mid-run."""

MAX_LEARNING_RATE = 1.0
"""Upper bound of every ``*learning_rate`` key. Every optimiser here is AdamW, whose step moves each weight by about
the learning rate whatever the gradient's scale: above 1 one step exceeds the weights' own magnitude, and the run
turns into NaN within an epoch."""


class ConfigError(BackdropError):
    """A configuration file, key or override is invalid; the message names the key and the value."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Where a run writes, how it is seeded and which hardware it uses (section ``[run]``)."""

    name: str = "run"
    """Run name; results go to ``<output_dir>/<name>/<timestamp>``."""
    output_dir: str = "runs"
    """Root folder for run directories, relative to the working directory."""
    seed: int = 0
    """Seeds python, numpy and torch, and every explicit generator derived from it."""
    device: str = "auto"
    """"auto" (CUDA if available, else CPU), "cpu", "cuda" or "cuda:N"."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype of frozen weights; trainable (LoRA) weights, optimiser state and log-probs stay float32."""
    threads: int = 0
    """torch intra-op threads; 0 keeps torch's default (all cores). Exact-match tests pin this."""
    tensorboard: bool = True
    """Also write TensorBoard event files next to metrics.jsonl (which is always written)."""
    mlflow: bool = False
    """Also log to a local MLflow file store under ``<output_dir>/mlruns`` (needs the mlflow extra)."""

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"name must be a non-empty folder name without '/', got {self.name!r}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0 = torch default), got {self.threads}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


# ----------------------------------------------------------------------------------------------------------
# Loading


ENVIRONMENT_PROFILE = "BACKDROP_CONFIG_OVERRIDES"
"""Environment variable naming a TOML profile applied to every command's config (module docstring)."""


def environment_profile(cls: type) -> dict[str, Any]:
    """The keys of the ``BACKDROP_CONFIG_OVERRIDES`` profile that ``cls`` has (nested tables), {} when unset.

    A profile serves every command, so a key the command's config does not have is skipped rather than refused
    (``trainer.epochs`` means nothing to ``backdrop simulate``); values are still checked by :func:`from_dict`.

    Raises:
        ConfigError: the file is missing or not TOML (named with the variable).
    """
    name = os.environ.get(ENVIRONMENT_PROFILE, "").strip()
    if not name:
        return {}
    path = Path(name)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{ENVIRONMENT_PROFILE}={name}: profile file not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{ENVIRONMENT_PROFILE}={name}: cannot read the profile: {exc}") from None
    return _keys_of(cls, data)


def _keys_of(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` restricted to the (nested) fields of the dataclass ``cls``."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kept: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            continue
        default = _field_default(fields[key])
        if dataclasses.is_dataclass(default) and isinstance(value, Mapping):
            inner = _keys_of(type(default), value)
            if inner:
                kept[key] = inner
        else:
            kept[key] = value
    return kept


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    profile: Mapping[str, Any] | None = None,
) -> T:
    """Build ``cls`` from its defaults, then the TOML file at ``path``, then ``profile`` (a nested table, e.g.
    :func:`environment_profile`), then ``--set`` overrides.

    Raises:
        ConfigError: unreadable file, TOML syntax error, unknown key, wrong type, bad override syntax, or a
            value rejected by a component's ``__post_init__``.
    """
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read config file: {exc}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
        except RecursionError:
            raise ConfigError(f"{path}: invalid TOML: arrays or tables nested too deeply to parse") from None
    if profile:
        data = _deep_merge(data, profile)
        source = f"{source} + the {ENVIRONMENT_PROFILE} profile"  # a bad value may come from either
    for text in overrides:
        keys, value = parse_override(text)
        _set_nested(data, keys, value, text)
    return from_dict(cls, data, source=source)


def from_dict(cls: type[T], data: Mapping[str, Any], *, source: str = "<dict>", prefix: str = "") -> T:
    """Build the dataclass ``cls`` from a nested mapping, strictly (see module docstring)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or '<root>'}' must be a table, got {_show(data)}")
    if not prefix and UNSET_KEY in data:
        data = _apply_unset(data, source)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise ConfigError(f"{source}: unknown key '{prefix}{key}'{_suggest(key, fields)}")
    kwargs = {}
    for name, value in data.items():
        default = _field_default(fields[name])
        if dataclasses.is_dataclass(default) and isinstance(value, Mapping):
            # A partial table overrides the field's own default instance, not the section class's defaults:
            # `run: RunConfig = RunConfig(name="ope")` keeps name="ope" when the file only sets [run] seed.
            value = _deep_merge(_plain(default, none=_NONE), value)
        kwargs[name] = _coerce(value, hints[name], f"{prefix}{name}", source)
    try:
        return cls(**kwargs)
    except ValueError as exc:
        where = prefix.rstrip(".") or cls.__name__
        raise ConfigError(f"{source}: {where}: {exc}") from None


def _apply_unset(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    data = dict(data)
    keys = data.pop(UNSET_KEY)
    if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
        raise ConfigError(f"{source}: '{UNSET_KEY}' must be a list of dotted keys, got {_show(keys)}")
    for dotted in keys:
        node = data
        parts = _split_key(dotted)
        for part in parts[:-1]:
            child = node.get(part)
            child = dict(child) if isinstance(child, Mapping) else {}
            node[part] = child
            node = child
        node[parts[-1]] = _NONE
    return data


def _split_key(dotted: str) -> list[str]:
    """Split ``a."b.c".d`` into ``["a", "b.c", "d"]`` (TOML's quoting of keys that contain dots)."""
    parts = re.findall(r'"([^"]*)"|([^."]+)', dotted)
    return [quoted or bare for quoted, bare in parts]


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=VALUE``; VALUE is read as a TOML value, or as a bare string if it is not one.

    ``policy.lora.rank=16`` gives 16, ``run.name=exp1`` gives "exp1", ``reward.heads=["click","dwell"]`` a list.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not sep or not key or any(not p or not p.replace("_", "").replace("-", "").isalnum() for p in parts):
        raise ConfigError(f"bad --set {text!r}: expected KEY=VALUE with a dotted key, e.g. --set policy.lora.rank=16")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    except RecursionError:
        raise ConfigError(f"bad --set {key}=...: the value nests arrays too deeply to parse") from None
    return parts, value


def _set_nested(data: dict[str, Any], keys: list[str], value: Any, text: str) -> None:
    node = data
    for i, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"bad --set {text!r}: '{'.'.join(keys[: i + 1])}' is a value, not a section")
        node = child
    node[keys[-1]] = value


def _suggest(key: str, candidates: Mapping[str, Any] | Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (valid keys: {', '.join(sorted(candidates))})"


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_type_name(args[0])}"
        return f"list of {len(args)} values ({', '.join(_type_name(a) for a in args)})"
    if origin is dict:
        k, v = typing.get_args(tp)
        return f"table of {_type_name(k)} -> {_type_name(v)}"
    if tp is type(None):
        return "nothing (omit the key)"
    if dataclasses.is_dataclass(tp):
        return f"table [{tp.__name__}]"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against annotation ``tp``; convert lists to tuples and tables to dataclasses."""
    origin = typing.get_origin(tp)
    if value is _NONE:
        if origin in (types.UnionType, typing.Union) and type(None) in typing.get_args(tp):
            return None
        raise ConfigError(f"{source}: key '{key}' is listed in '{UNSET_KEY}' but expects {_type_name(tp)}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        _check_number(value, key, source)
    fail = ConfigError(f"{source}: key '{key}' expects {_type_name(tp)}, got {_show(value)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise fail
        return from_dict(tp, value, source=source, prefix=f"{key}.")
    if origin in (types.UnionType, typing.Union):
        tables = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        if isinstance(value, Mapping) and len(tables) == 1:
            # `section: X | None`: a table is meant for X, so X's own error is the useful one.
            return _coerce(value, tables[0], key, source)
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError:
                continue
        raise fail
    if origin is Literal:
        allowed = typing.get_args(tp)
        if any(value == a and type(value) is type(a) for a in allowed):
            return value
        close = _suggest(str(value), [str(a) for a in allowed]) if isinstance(value, str) else ""
        raise ConfigError(f"{source}: key '{key}' expects {_type_name(tp)}, got {_show(value)}{close}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise fail
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value))
        if len(value) != len(args):
            raise fail
        return tuple(_coerce(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise fail
        kt, vt = typing.get_args(tp)
        return {_coerce(k, kt, key, source): _coerce(v, vt, f"{key}.{k}", source) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise fail
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail
    if tp is Path:
        if isinstance(value, str):
            return Path(value)
        raise fail
    raise TypeError(f"config key '{key}': unsupported annotation {tp!r}")


def _check_number(value: int | float, key: str, source: str) -> None:
    """Refuse NaN, infinities, floats past :data:`MAX_MAGNITUDE` and learning rates outside their range (integers
    are exact: counts and seeds keep their full range)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{source}: key '{key}' must be a finite number, got {value}")
    if isinstance(value, float) and abs(value) > MAX_MAGNITUDE:
        raise ConfigError(f"{source}: key '{key}' must be at most {MAX_MAGNITUDE:g} in magnitude, got {value:g}")
    if key.rsplit(".", 1)[-1].endswith("learning_rate") and not 0 < value <= MAX_LEARNING_RATE:
        raise ConfigError(
            f"{source}: key '{key}' must be in (0, {MAX_LEARNING_RATE:g}] (an AdamW step moves every weight by about "
            f"the learning rate), got {value:g}"
        )


# ----------------------------------------------------------------------------------------------------------
# Writing


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain TOML-compatible data (tuples become lists, paths strings, None keys omitted)."""
    return _plain(config, none=None)


def _plain(value: Any, *, none: Any) -> Any:
    """Plain data; None values are dropped (``none=None``) or replaced by the ``none`` marker."""
    if dataclasses.is_dataclass(value):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, dict):
        items = {str(k): _plain(v, none=none) for k, v in value.items() if v is not None or none is not None}
        return {k: (none if v is None else v) for k, v in items.items()}
    if isinstance(value, tuple | list):
        return [_plain(v, none=none) for v in value]
    if isinstance(value, Path):
        return str(value)
    return none if value is None else value


def _none_paths(data: Mapping[str, Any], marker: Any, prefix: str = "") -> list[str]:
    paths = []
    for key, value in data.items():
        part = f'"{key}"' if "." in key else key
        if value is marker:
            paths.append(f"{prefix}{part}")
        elif isinstance(value, Mapping):
            paths.extend(_none_paths(value, marker, f"{prefix}{part}."))
    return paths


def dump_toml(config: Any) -> str:
    """Serialise a config dataclass (or nested dict) to TOML that :func:`load_config` reads back unchanged.

    Keys whose value is None are listed in the top-level ``_unset`` array (TOML has no null).
    """
    marked = _plain(config, none=_NONE)
    unset = _none_paths(marked, _NONE)
    data = _plain(config, none=None)
    lines: list[str] = []
    if unset:
        lines.append(f"{UNSET_KEY} = {_toml_value(unset)}  # keys whose value is None")
    _emit_table(data, [], lines)
    return "\n".join(lines).strip() + "\n"


def _emit_table(data: Mapping[str, Any], path: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    if path and (scalars or not tables):
        lines.append("")
        lines.append("[" + ".".join(_toml_key(p) for p in path) + "]")
    for key, value in scalars.items():
        lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in tables.items():
        _emit_table(value, [*path, key], lines)


def _toml_key(key: str) -> str:
    if key and all(c.isalnum() or c in "_-" for c in key):
        return key
    return _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")
