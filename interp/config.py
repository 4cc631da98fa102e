"""Build frozen dataclass configs from plain dicts (YAML), refusing unknown keys.

Experiments and analyses declare their parameters as `@dataclass(frozen=True, kw_only=True)` classes;
`config_from_dict` turns a parsed YAML mapping into one, naming the valid keys when a key is misspelt
instead of dropping it silently. Values are checked against the field annotations, with a few YAML-friendly
coercions: list -> tuple, int -> float, `"1e-3"` -> 1e-3 (YAML 1.1 reads it as a string), dict -> dataclass.
"""

from __future__ import annotations

import dataclasses
import enum
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from interp.suggest import did_you_mean

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key or value that does not fit the dataclass it is meant for."""


def _suggest(name: str, valid: list[str]) -> str:
    return f"{did_you_mean(name, valid)} Valid keys: {', '.join(valid) if valid else '(none)'}."


def config_from_dict(cls: type[T], data: Mapping[str, Any], *, where: str = "") -> T:
    """Build dataclass `cls` from `data`; raise `ConfigError` on unknown or missing keys or mistyped values.

    `where` prefixes error messages (e.g. the experiment kind or the parent key of a nested config).
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"config_from_dict needs a dataclass type, got {cls!r}")
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{where or cls.__name__}: expected a mapping of keys to values, got {type(data).__name__}"
        )
    prefix = f"{where}: " if where else ""
    fields = [f for f in dataclasses.fields(cls) if f.init]
    valid = [f.name for f in fields]
    for key in data:
        if key not in valid:
            raise ConfigError(f"{prefix}unknown key {key!r} for {cls.__name__}.{_suggest(str(key), valid)}")
    missing = [
        f.name
        for f in fields
        if f.name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{prefix}missing required key(s) {', '.join(missing)} for {cls.__name__}")
    hints = _type_hints(cls)
    kwargs = {k: _coerce(v, hints.get(k, Any), f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def _type_hints(cls: type) -> dict[str, Any]:
    """Resolved field annotations; where a name cannot be resolved (a class defined inside a function), that
    field's values go unchecked rather than failing."""
    try:
        return typing.get_type_hints(cls)
    except NameError:
        hints = {}
        module_globals = vars(sys.modules[cls.__module__]) if cls.__module__ in sys.modules else {}
        for f in dataclasses.fields(cls):
            try:
                hints[f.name] = typing.get_type_hints(
                    type("_", (), {"__annotations__": {"x": f.type}}), globalns=module_globals
                )["x"]
            except NameError:
                hints[f.name] = Any
        return hints


def config_to_dict(config: Any) -> dict[str, Any]:
    """The inverse of `config_from_dict`: a dict of YAML-safe values (tuples -> lists, enums -> values)."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"config_to_dict needs a dataclass instance, got {config!r}")
    return {f.name: _plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against the annotation `hint`, applying the YAML-friendly coercions."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or isinstance(hint, (str, TypeVar)):
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} fits none of {_type_name(hint)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(repr(a) for a in args)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            items = [_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))]
        else:
            item_hint = args[0] if args else Any
            items = [_coerce(v, item_hint, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_hint, val_hint = args if args else (Any, Any)
        return {_coerce(k, key_hint, where): _coerce(v, val_hint, f"{where}.{k}") for k, v in value.items()}
    if isinstance(hint, type):
        return _coerce_to_class(value, hint, where)
    return value


def _coerce_to_class(value: Any, hint: type, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        return config_from_dict(hint, value, where=where)
    if issubclass(hint, enum.Enum):
        try:
            return value if isinstance(value, hint) else hint(value)
        except ValueError:
            raise ConfigError(
                f"{where}: {value!r} is not one of {', '.join(repr(m.value) for m in hint)}"
            ) from None
    if hint is float:
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    if hint is Path and isinstance(value, str):
        return Path(value)
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected int, got bool {value!r}")
    if not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value
