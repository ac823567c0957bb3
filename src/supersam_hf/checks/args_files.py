"""Typed argument files: a .json / .yaml file of argument names to values, read into an arguments dataclass with
every value's type checked (a mistyped value is one error naming the field and the expected type)."""

from __future__ import annotations

import dataclasses
import difflib
import enum
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ..errors import SupersamError

T = TypeVar("T")


def strict_dataclass_from_dict(cls: type[T], data: Mapping[str, Any], source: str) -> T:
    """Build dataclass `cls` from a JSON/YAML mapping, refusing unknown keys and values of the wrong type.

    `HfArgumentParser.parse_dict(..., allow_extra_keys=False)` refuses unknown keys but passes `"max_steps": "ten"`
    through; this names the field and the expected type instead. Ints are exact (no bool, no float); floats accept
    ints; `Optional`, unions, `Literal`, enums (by value), `list`/`tuple`/`dict` and their item types are checked.
    """
    if not isinstance(data, Mapping):
        raise SupersamError(f"{source} must hold a mapping of argument names to values, got a {type(data).__name__}.")
    fields = {field.name: field for field in dataclasses.fields(cls) if field.init}
    unknown = [key for key in data if key not in fields]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), fields, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SupersamError(
            f"{source}: unknown argument {unknown[0]!r}{hint}; valid arguments: {', '.join(sorted(fields))}."
        )
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        expected = hints.get(key, Any)
        if not _has_type(value, expected):
            raise SupersamError(
                f"{source}: argument {key!r} must be {_type_name(expected)}, got {value!r} "
                f"({type(value).__name__}); fix the value in the file."
            )
    return cls(**{key: _coerce(value, hints.get(key, Any)) for key, value in data.items()})


def _has_type(value: Any, expected: Any) -> bool:
    """Whether a JSON/YAML value fits a dataclass annotation (unknown annotations accept anything)."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if expected is Any or expected is object:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, arg) for arg in args)
    if expected is type(None):
        return value is None
    if origin is typing.Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if isinstance(expected, type) and issubclass(expected, enum.Enum):
        return isinstance(value, expected) or value in [member.value for member in expected]
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected in (str, Path):
        return isinstance(value, str)
    if origin in (list, tuple, Sequence) or expected in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        item_types = [arg for arg in args if arg is not Ellipsis] or [Any]
        return all(_has_type(item, item_types[0] if len(item_types) == 1 else Any) for item in value)
    if origin in (dict, Mapping) or expected is dict:
        return isinstance(value, Mapping)
    return True  # another class: its own __init__ / __post_init__ validates what the file gives


def _coerce(value: Any, expected: Any) -> Any:
    """JSON has no tuples, paths or enums: convert lists, strings and numbers to what the (checked) field says."""
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(expected) if arg is not type(None)]
        if value is None or len(options) != 1:
            return value
        expected = options[0]
    if isinstance(expected, type) and issubclass(expected, enum.Enum) and not isinstance(value, expected):
        member = expected(value)
        return member.value if isinstance(member, str) else member  # str enums stay plain strings, as parsed flags are
    if expected is float and isinstance(value, int):
        return float(value)
    if expected is Path and isinstance(value, str):
        return Path(value)
    if (typing.get_origin(expected) is tuple or expected is tuple) and isinstance(value, list):
        return tuple(value)
    return value


def _type_name(expected: Any) -> str:
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in args)
    if expected is type(None):
        return "null"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if isinstance(expected, type) and issubclass(expected, enum.Enum):
        return "one of " + ", ".join(repr(member.value) for member in expected)
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", Path: "a path string"}
    if expected in names:
        return names[expected]
    if origin in (list, tuple, Sequence) or expected in (list, tuple):
        items = [arg for arg in args if arg is not Ellipsis]
        plural = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}
        item = items[0] if len(items) == 1 else Any
        return "a list" + (f" of {plural.get(item) or _type_name(item)}" if item is not Any else "")
    return getattr(expected, "__name__", str(expected))


def read_args_file(path: str | Path) -> dict[str, Any]:
    """The mapping of argument names to values in a .json or .yaml/.yml file; ValueError / FileNotFoundError naming
    the file when it is missing, unreadable or not a mapping (an empty YAML file is an empty mapping)."""
    from ..outputs import read_json_file

    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        if not path.is_file():
            raise FileNotFoundError(f"arguments file {path} does not exist.")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            reason = " ".join(str(error).split())
            raise SupersamError(f"arguments file {path} is not valid YAML ({reason}); fix the file.") from error
    else:
        data = read_json_file(path, what="arguments file", remedy="fix the file")
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise SupersamError(f"arguments file {path} must hold a mapping of argument names to values, got a "
                         f"{type(data).__name__}.")
    return dict(data)


def load_args_file(cls: type[T], path: str | Path) -> T:
    """Arguments dataclass `cls` from a .json or .yaml/.yml file, strictly typed (see `strict_dataclass_from_dict`)."""
    return strict_dataclass_from_dict(cls, read_args_file(path), source=str(path))
