"""Build frozen dataclass configs from plain dicts (YAML), refusing unknown keys and bad values.

Experiments and analyses declare their parameters as `@dataclass(frozen=True, kw_only=True)` classes;
`config_from_dict` turns a parsed YAML mapping into one, naming the valid keys when a key is misspelt
instead of dropping it silently. Values are checked against the field annotations, with a few YAML-friendly
coercions: list -> tuple, int -> float, `"1e-3"` -> 1e-3 (YAML 1.1 reads it as a string), dict -> dataclass.

A field declares its valid values with it: `n_prompts: int = param(32, check=positive)`,
`backend: str = param("tl", check=one_of(BACKENDS))`; the checks run when the config is read, before any model
loads, and a failure names the key, the value and what is valid. `load_yaml` reads YAML as `yaml.safe_load`
does but refuses duplicate keys.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

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
    for f in fields:
        value = kwargs[f.name] if f.name in kwargs else _default(f)
        _run_checks(f, value, f"{where}.{f.name}" if where else f.name)
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


def field_defaults(cls: type) -> dict[str, Any]:
    """The default of every field of dataclass `cls` that has one, as YAML-safe values (as `config_to_dict`)."""
    return {f.name: _plain(_default(f)) for f in dataclasses.fields(cls) if _has_default(f)}


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


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


# ------------------------------------------------------------------------------------------- declared checks
Check = Callable[[Any], "str | None"]  # a problem with the value ("must be > 0"), or None when it is valid


def param(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Any = dataclasses.MISSING,
    check: Check | Sequence[Check] = (),
) -> Any:
    """A dataclass field with its valid values declared: `check`s run when the config is read."""
    checks = (check,) if callable(check) else tuple(check)
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"checks": checks})


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _run_checks(f: dataclasses.Field, value: Any, where: str) -> None:
    for check in f.metadata.get("checks", ()):
        problem = check(value)
        if problem:
            raise ConfigError(f"{where}: {value!r} {problem}")


def check_fields(config: Any, *, where: str = "") -> None:
    """Run the declared checks of every field of a config instance; raise `ConfigError` at the first problem."""
    for f in dataclasses.fields(config):
        _run_checks(f, getattr(config, f.name), f"{where}.{f.name}" if where else f.name)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive(value: Any) -> str | None:
    """A count or size above 0."""
    return None if value is None or (_number(value) and value > 0) else "must be > 0"


def non_negative(value: Any) -> str | None:
    """0 or more (seeds, offsets)."""
    return None if value is None or (_number(value) and value >= 0) else "must be >= 0"


def at_least(low: float) -> Check:
    """`low` or more."""

    def check(value: Any) -> str | None:
        return None if value is None or (_number(value) and value >= low) else f"must be >= {low:g}"

    return check


def in_range(low: float, high: float, *, open_low: bool = False, open_high: bool = False) -> Check:
    """Within [low, high] (or open at either end)."""
    left, right = "(" if open_low else "[", ")" if open_high else "]"

    def check(value: Any) -> str | None:
        if value is None:
            return None
        ok = _number(value) and (value > low if open_low else value >= low)
        ok = ok and (value < high if open_high else value <= high)
        return None if ok else f"must lie in {left}{low:g}, {high:g}{right}"

    return check


def one_of(choices: Iterable[Any] | Callable[[], Iterable[Any]]) -> Check:
    """One of `choices` (a callable is asked on each check, so registries can be read lazily)."""

    def check(value: Any) -> str | None:
        valid = list(choices() if callable(choices) else choices)
        if value is None or value in valid:
            return None
        shown = (
            f"{valid[0]!r}..{valid[-1]!r}"
            if isinstance(choices, range)
            else ", ".join(repr(v) for v in valid)
        )
        hint = did_you_mean(value, [str(v) for v in valid]) if isinstance(value, str) else ""
        return f"is not valid.{hint} Valid: {shown}"

    return check


def each(*checks: Check) -> Check:
    """Every item of a list passes `checks`."""

    def check(value: Any) -> str | None:
        for i, item in enumerate(value or ()):
            for c in checks:
                problem = c(item)
                if problem:
                    return f"has item [{i}] = {item!r} that {problem}"
        return None

    check.item_checks = checks  # type: ignore[attr-defined]  # read by `model_fields`
    return check


def non_empty(value: Any) -> str | None:
    """At least one item."""
    return None if value is None or len(value) > 0 else "must not be empty"


def names_a_model(check: Check) -> Check:
    """Mark `check` as one that validates a model name (so `model_fields` finds the fields that use it)."""
    check.names_a_model = True  # type: ignore[attr-defined]
    return check


def model_fields(cls: type) -> list[str]:
    """The fields of config class `cls` that hold model names (or lists of them): those declared with a check
    marked by `names_a_model`, such as `model_name`, directly or inside `each`."""

    def names(check: Any) -> bool:
        return getattr(check, "names_a_model", False) or any(map(names, getattr(check, "item_checks", ())))

    return [f.name for f in dataclasses.fields(cls) if any(map(names, f.metadata.get("checks", ())))]


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


@names_a_model
def model_name(value: Any) -> str | None:
    """A model that can resolve: a built zoo organism, an existing checkpoint folder, or a hub-id-shaped name."""
    from interp import zoo_location

    if value is None:
        return None
    name = str(value)
    if zoo_location.is_zoo_name(name):
        if zoo_location.is_built(name):
            return None
        built = zoo_location.built_names()
        return (
            f"is not a built zoo entry.{did_you_mean(name, built)} Built: {', '.join(built) or '(none)'}"
            f" (build with `interp zoo build --only {name}`)"
        )
    path = Path(name).expanduser()
    if path.exists():
        return None if (path / "config.json").is_file() else "is a folder without config.json (no checkpoint)"
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        return "is not an existing checkpoint folder"
    if not _HUB_ID.match(name):
        return (
            "is neither a zoo name (organism/...), an existing checkpoint folder nor a hub id "
            "like 'gpt2' or 'meta-llama/Llama-3.1-8B'"
        )
    return None


# ------------------------------------------------------------------------------------------------ YAML
class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key repeated in one mapping (YAML itself keeps the last silently)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            line = key_node.start_mark.line + 1
            raise ConfigError(
                f"duplicate key {key!r} in {key_node.start_mark.name} (line {seen[key]} and line {line}): "
                "each key may appear once"
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_yaml(text: str, *, source: str = "<config>") -> Any:
    """Parse YAML like `yaml.safe_load` (no Python objects), refusing duplicate keys."""
    loader = _UniqueKeyLoader(text)
    loader.name = source
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
