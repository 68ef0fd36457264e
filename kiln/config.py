"""Typed configs: nested dataclasses loaded from TOML/JSON, overridden by dotted options.

One loader serves every part of Kiln (pipeline stages, the trainer under torchrun,
benchmarks), so a config file means the same thing everywhere:

    cfg = load_config(PipelineConfig, "configs/demo.toml", ["pretrain.optim.lr=3e-4"])

A wrong key, a wrong type or a missing file is a `KilnError` naming the key and
the file, never a silent default. Fields whose metadata says
``affects_output=False`` (worker counts, progress bars) are left out of
`canonical_dict`, so changing them never invalidates a cached artifact.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from kiln.errors import KilnError

T = TypeVar("T")

# Field metadata marking settings that change how fast a stage runs but never what it writes.
RUNTIME_ONLY = {"affects_output": False}


def runtime_field(default: Any) -> Any:
    """A dataclass field excluded from artifact keys (e.g. number of workers)."""
    return dataclasses.field(default=default, metadata=RUNTIME_ONLY)


# Field metadata marking a file path or URL (or a list of them): `from_dict` rejects control characters in it.
PATH = {"path": True}


def path_field(default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field holding a path or URL, or a list of them (checked by `check_path_text` on load)."""
    return dataclasses.field(default=default, metadata=PATH)


def check_path_text(value: str, what: str) -> None:
    """Raise a `KilnError` naming `what` if the path or URL `value` holds a control character (NUL, newline...).

    The OS would refuse it later with a bare ``ValueError: embedded null byte``, or worse, take it.
    """
    bad = next((c for c in value if ord(c) < 0x20 or ord(c) == 0x7F), None)
    if bad is not None:
        name = "a NUL character" if bad == "\0" else f"control character U+{ord(bad):04X}"
        raise KilnError(f"{what} contains {name} ({value!r}); remove it: a path or URL may not hold control characters")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a TOML or JSON config file into a dict, with a one-line error on failure."""
    p = Path(path)
    if not p.is_file():
        raise KilnError(f"{p}: config file not found; pass an existing .toml file (see configs/)")
    try:
        if p.suffix == ".json":
            return json.loads(p.read_text(encoding="utf-8"))
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise KilnError(f"{p}: not valid {p.suffix.lstrip('.') or 'TOML'}: {exc}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and a TOML-typed value (bare words stay strings)."""
    if "=" not in text:
        raise KilnError(f"override {text!r}: expected KEY=VALUE, e.g. pretrain.optim.lr=3e-4")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of `data` with each ``dotted.key=value`` override set."""
    out = json.loads(json.dumps(data))
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise KilnError(f"override {text!r}: {part!r} is not a section")
        node[path[-1]] = value
    return out


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    data: Mapping[str, Any] | None = None,
) -> T:
    """Build `cls` from a file (or a dict) plus dotted overrides, checking every key and type."""
    raw: dict[str, Any] = dict(data or {})
    where = "config"
    if path is not None:
        raw = read_config_file(path)
        where = str(path)
    raw = apply_overrides(raw, overrides)
    return from_dict(cls, raw, where=where)


def from_dict(cls: type[T], data: Mapping[str, Any], *, where: str = "config", prefix: str = "") -> T:
    """Recursively turn a mapping into dataclass `cls`; unknown keys and bad types raise KilnError."""
    if not isinstance(data, Mapping):
        raise KilnError(f"{where}: [{prefix or cls.__name__}] must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise KilnError(f"{where}: unknown key {key!r}; valid keys here: {', '.join(sorted(fields))}")
    kwargs = {
        name: _coerce(hints[name], value, where=where, key=f"{prefix}{name}")
        for name, value in data.items()
    }
    for name, value in kwargs.items():
        if fields[name].metadata.get("path"):
            for i, item in enumerate(value if isinstance(value, (list, tuple)) else [value]):
                if isinstance(item, str):
                    key = f"{prefix}{name}[{i}]" if isinstance(value, (list, tuple)) else f"{prefix}{name}"
                    check_path_text(item, f"{where}: {key!r}")
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field without default is missing
        raise KilnError(f"{where}: {prefix or cls.__name__}: {exc}") from None


def _coerce(tp: Any, value: Any, *, where: str, key: str) -> Any:
    """Check `value` against annotation `tp`, converting only lossless cases (int → float, list → tuple)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where=where, key=key)
            except KilnError as exc:
                errors.append(str(exc))
        raise KilnError(errors[-1] if errors else f"{where}: {key!r} may not be null")
    if origin is typing.Literal:
        if value not in args:
            raise KilnError(f"{where}: {key!r} must be one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where=where, prefix=f"{key}.")  # type: ignore[arg-type]
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise KilnError(f"{where}: {key!r} must be a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_coerce(item_tp, v, where=where, key=f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise KilnError(f"{where}: {key!r} must be a table, got {value!r}")
        val_tp = args[1] if args else Any
        return {str(k): _coerce(val_tp, v, where=where, key=f"{key}.{k}") for k, v in value.items()}
    return _coerce_scalar(tp, value, where=where, key=key)


def _coerce_scalar(tp: Any, value: Any, *, where: str, key: str) -> Any:
    if isinstance(value, str) and "\0" in value:  # valid in no setting; the OS calls it "embedded null byte"
        raise KilnError(f"{where}: {key!r} contains a NUL character ({value!r}); remove it")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is type(None) and value is None:
        return None
    if isinstance(tp, type) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    name = getattr(tp, "__name__", str(tp))
    raise KilnError(f"{where}: {key!r} must be {name}, got {value!r}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """All fields of a (nested) dataclass as plain JSON-able data."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def canonical_dict(cfg: Any) -> Any:
    """The fields that determine a stage's output: runtime-only fields dropped, recursively."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {
            f.name: canonical_dict(getattr(cfg, f.name))
            for f in dataclasses.fields(cfg)
            if f.metadata.get("affects_output", True)
        }
    if isinstance(cfg, (list, tuple)):
        return [canonical_dict(v) for v in cfg]
    if isinstance(cfg, Mapping):
        return {str(k): canonical_dict(v) for k, v in cfg.items()}
    return cfg


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces): the text that artifact keys hash."""
    return json.dumps(canonical_dict(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
