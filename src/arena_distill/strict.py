"""Typed settings from config nodes: the machinery under ``arena_distill.settings``.

:func:`build` turns a config node (an OmegaConf ``DictConfig`` or a plain mapping) into a
dataclass: a key the dataclass does not declare is refused with its full path and the nearest
declared key (:func:`nearest_key`), interpolations are resolved, values are checked against the
field's type (``bool``, ``int``, ``float``, ``str``, optional, unions, lists, tuples, nested
dataclasses, open ``dict``), and nested blocks become their dataclasses. :func:`check_keys`
does the key check alone, without resolving anything (a value still ``???`` or interpolated
is checked when it is built).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar, Union

from omegaconf import DictConfig, ListConfig, OmegaConf

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key the code does not read, a value of the wrong type, or a missing value."""


def _initials(key: str) -> str:
    return "".join(w[0] for w in re.split(r"[_\W]+", key.lower()) if w)


def nearest_key(key: str, known: list[str]) -> str | None:
    """The known key a typo most likely meant: an abbreviation (``learning_rate`` → ``lr``),
    a close spelling, or a key contained in the typo (or containing it)."""
    k = key.lower()
    for cand in known:
        c = cand.lower()
        if len(c) > 1 and (c == _initials(k) or _initials(c) == k):
            return cand
    close = difflib.get_close_matches(k, [c.lower() for c in known], n=1, cutoff=0.6)
    if close:
        return next(c for c in known if c.lower() == close[0])
    inside = [c for c in known if len(c) > 2 and (c.lower() in k or k in c.lower())]
    if inside:
        return max(inside, key=len)
    close = difflib.get_close_matches(k, [c.lower() for c in known], n=1, cutoff=0.4)
    return next((c for c in known if c.lower() == close[0]), None) if close else None


def unknown_key(path: str, key: str, known: list[str]) -> ConfigError:
    where = f"{path}.{key}" if path else str(key)
    guess = nearest_key(str(key), known)
    hint = f"did you mean {guess}?" if guess else f"known keys: {', '.join(sorted(known))}"
    return ConfigError(f"{where}: unknown key; {hint}")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _node_keys(node: Any) -> list[str]:
    if isinstance(node, DictConfig):
        return [str(k) for k in node.keys()]
    return [str(k) for k in dict(node).keys()]


def _get_raw(node: Any, key: str) -> Any:
    """A child without resolving interpolations (``???`` and ``${...}`` stay as they are)."""
    if isinstance(node, DictConfig):
        return node._get_node(key)
    return dict(node)[key]


def _is_missing_or_interp(value: Any) -> bool:
    from omegaconf import Node

    if isinstance(value, Node):
        return value._is_missing() or value._is_interpolation()
    return False


def _value(value: Any) -> Any:
    from omegaconf import Node

    if isinstance(value, Node) and not isinstance(value, (DictConfig, ListConfig)):
        return value._value()
    return value


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return typing.get_args(tp)
    return None


def check_keys(node: Any, tp: Any, path: str) -> None:
    """Refuse keys of ``node`` (and of its sub-blocks) that ``tp`` does not declare.

    Values are not resolved: a missing (``???``) or interpolated value is checked when it is
    built (:func:`build`)."""
    value = _value(node)
    if value is None or _is_missing_or_interp(node):
        return
    args = _union_args(tp)
    if args is not None:
        for arg in args:
            if arg is type(None):
                continue
            if _is_dataclass_type(arg) and _is_mapping(value):
                return check_keys(value, arg, path)
            if typing.get_origin(arg) is list and _is_sequence(value):
                return check_keys(value, arg, path)
        return
    if _is_dataclass_type(tp):
        if not _is_mapping(value):
            return
        hints = _hints(tp)
        known = list(hints)
        for key in _node_keys(value):
            if key not in hints:
                raise unknown_key(path, key, known)
            check_keys(_get_raw(value, key), hints[key], f"{path}.{key}" if path else key)
        return
    if typing.get_origin(tp) is list and _is_sequence(value):
        (item,) = typing.get_args(tp) or (Any,)
        for i, v in enumerate(value):
            raw = value._get_node(i) if isinstance(value, ListConfig) else v
            check_keys(raw, item, f"{path}[{i}]")


def _is_mapping(value: Any) -> bool:
    return isinstance(value, (DictConfig, Mapping))


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (ListConfig, list, tuple))


def _container(node: Any) -> dict:
    if OmegaConf.is_config(node):
        try:
            return OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
        except Exception as exc:  # omegaconf's MissingMandatoryValue, InterpolationResolutionError
            raise ConfigError(str(exc).splitlines()[0]) from None
    return dict(node)


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """``value`` checked against ``tp`` (and nested dataclasses built)."""
    if tp is Any:
        return value
    args = _union_args(tp)
    if args is not None:
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{path}: a value is required")
        errors = []
        # dataclasses and containers before scalars, so a mapping builds its block
        for arg in sorted(args, key=lambda a: not (_is_dataclass_type(a) or typing.get_origin(a))):
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as exc:
                errors.append(str(exc))
        if len(errors) == 1:
            raise ConfigError(errors[0])
        raise ConfigError(f"{path}: {value!r} fits no type of {tp}")
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a block of keys, got {value!r}")
        return build(tp, value, path)
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        items = typing.get_args(tp)
        if origin is tuple and items and items[-1] is not Ellipsis:
            if len(items) != len(value):
                raise ConfigError(f"{path}: expected {len(items)} values, got {value!r}")
            pairs = enumerate(zip(items, value, strict=True))
            return tuple(_coerce(v, t, f"{path}[{i}]") for i, (t, v) in pairs)
        item = items[0] if items else Any
        out = [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if tp is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{path}: expected null, got {value!r}")
        return None
    if value is None:
        raise ConfigError(f"{path}: a value is required")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def build(cls: type[T], node: Any, path: str = "") -> T:
    """The dataclass ``cls`` from a config node or mapping: unknown keys refused (with the
    nearest known key), interpolations resolved, types checked, nested blocks built."""
    if dataclasses.is_dataclass(node) and isinstance(node, cls):
        return node
    check_keys(node, cls, path)
    data = _container(node)
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{path}.{f.name}" if path else f.name
        if f.name in data:
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: a value is required")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    """A settings object as plain JSON-able data (tuples as lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(obj))


def narrow(obj: Any, cls: type[T]) -> T:
    """``obj``'s fields that ``cls`` declares, as a ``cls`` (a stage block's settings without
    its paths, say: ``cls`` a base class of ``type(obj)``)."""
    return cls(**{f.name: getattr(obj, f.name) for f in dataclasses.fields(cls)})
