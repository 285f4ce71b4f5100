"""Checking options typed by hand (``--options``, ``--model-kwargs``, keyword arguments) against what they
configure: every key must be a field (or parameter), every value of its declared type, and a mistake is a
``TypeError`` that names the key and the type wanted."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

_NAMES = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    type(None): "null",
    dict: "an object ({...})",
    list: "a list",
    tuple: "a list",
}


def describe(hint: Any) -> str:
    """``int | None`` → ``"an integer or null"``: a type hint in the words of JSON."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(hint))
    if origin in (tuple, list):
        args = typing.get_args(hint)
        if args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} ({', '.join(describe(a) for a in args)})"
        return "a list"
    if hint is Any:
        return "any value"
    return _NAMES.get(origin or hint, getattr(hint, "__name__", str(hint)))


def matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` (as JSON or Python gives it) is of type ``hint``. JSON booleans are no integers;
    an integer is a number; a list stands for a tuple."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        args = typing.get_args(hint)
        if not args:
            return True
        if args[-1] is Ellipsis or origin is list:
            return all(matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args))
    if origin is dict or hint is dict:
        return isinstance(value, Mapping)
    try:
        return isinstance(value, origin or hint)
    except TypeError:  # a hint isinstance cannot check: accept, the consumer validates
        return True


def check_keywords(options: Mapping[str, Any], hints: Mapping[str, Any], owner: str) -> None:
    """``TypeError`` naming ``owner`` and the key unless every key of ``options`` is in ``hints`` (name → type)
    and its value matches (:func:`matches`)."""
    bad = sorted(set(options) - set(hints))
    if bad:
        raise TypeError(
            f"{owner} has no option{'s' if len(bad) > 1 else ''} {', '.join(map(repr, bad))}; its options: "
            f"{', '.join(sorted(hints))}"
        )
    for key, value in options.items():
        if not matches(value, hints[key]):
            raise TypeError(
                f"{owner}: option {key!r} must be {describe(hints[key])}, got {value!r:.60} ({json_name(value)})"
            )


def check_dataclass_options(cls: type, options: Mapping[str, Any], owner: str) -> None:
    """:func:`check_keywords` against the fields of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    check_keywords(options, {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}, owner)


def parameter_hints(fn: Any, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Name → type hint of ``fn``'s keyword parameters (for classes: of ``__init__``), less ``exclude``."""
    target = fn.__init__ if isinstance(fn, type) else fn
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: check the names only
        hints = {}
    params = inspect.signature(target).parameters
    return {
        n: hints.get(n, Any)
        for n, p in params.items()
        if n not in ("self", *exclude) and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def parse_json_object(text: str | None, flag: str) -> dict[str, Any]:
    """The JSON object typed after ``flag`` (``{}`` when absent); ``ValueError`` naming ``flag`` when it is not
    valid JSON or not an object."""
    if text is None or not text.strip():
        return {}
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{flag}: not valid JSON ({e.msg} at character {e.pos}): {text!r:.80}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{flag} must be a JSON object such as '{{\"key\": 1}}', got {json_name(obj)}: {text!r:.80}")
    return obj


def check_positive(obj: Any, *names: str, allow_zero: bool = False) -> None:
    """``ValueError`` naming the field unless each of ``obj``'s attributes ``names`` (skipping ``None``) is a
    finite number > 0 (>= 0 with ``allow_zero``)."""
    for name in names:
        v = getattr(obj, name)
        if v is None:
            continue
        ok = (
            isinstance(v, (int, float))
            and not isinstance(v, bool)
            and math.isfinite(v)
            and (v >= 0 if allow_zero else v > 0)
        )
        if not ok:
            raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {v!r}")


def json_name(value: Any) -> str:
    """What JSON calls ``value``'s type, with its article: ``"a list"``, ``"an integer"``, ``"null"``."""
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        type(None): "null",
        dict: "an object",
        list: "a list",
        tuple: "a list",
    }.get(type(value), type(value).__name__)


__all__ = [
    "describe",
    "matches",
    "check_keywords",
    "check_dataclass_options",
    "parameter_hints",
    "parse_json_object",
    "check_positive",
    "json_name",
]
