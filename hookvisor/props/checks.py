"""The checks of SPEC §3: at definition time (compile) and at use time (check).

Pure functions over text and dicts; the registry adds the store around them.

Regex dialect: Python's `re`, compiled with `re.ASCII` so that `\\d`, `\\w`,
`\\s` and `(?i)` mean what they mean in Java's default dialect (the engine's):
ASCII only. Without it `^\\d+$` would let Arabic-Indic digits through.
A value must match in full (`re.fullmatch`), as Java's `matches()` does.
"""

from __future__ import annotations

import re
import reprlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from hookvisor.names import reserved_reason
from hookvisor.props.errors import DefinitionError, shorten
from hookvisor.props.syntax import (
    KEYS,
    Kind,
    PropertyDef,
    format_devices,
    format_properties,
    split_devices,
    split_properties,
)

# Bounds the time one fullmatch may take for well-behaved patterns, and what
# we hand to a hook's environment. Counted in UTF-8 bytes, as execve sees it.
MAX_VALUE_BYTES = 4096

# Device type names as VDSM uses them (interface, disk, video, hostdev, ...).
_DEVICE_TYPE_RE = re.compile(r"[A-Za-z0-9_.-]+")

_NO_MATCH = "does not match"

_short_repr = reprlib.Repr()
_short_repr.maxstring = 60
_short_repr.maxother = 60


@dataclass(frozen=True)
class Rule:
    name: str
    regex: str
    pattern: re.Pattern[str] = field(compare=False, repr=False)


@dataclass(frozen=True)
class CompiledValue:
    """One key's value for one version, checked and compiled.

    `props` is used by the VM and network keys, `devices` by CustomDeviceProperties.
    """

    key: str
    text: str
    props: Mapping[str, Rule] = field(default_factory=dict)
    devices: Mapping[str, Mapping[str, Rule]] = field(default_factory=dict)


def key_info_or_raise(key: str) -> Kind:
    info = KEYS.get(key)
    if info is None:
        raise DefinitionError([f"unknown key {key!r}; known keys: {', '.join(KEYS)}"])
    return info.kind


@lru_cache(maxsize=128)
def compile_value(key: str, text: str) -> CompiledValue:
    """Parse and check a definition; raise DefinitionError listing every problem.

    Cached by text: the registry re-reads the stored text on every check (so a
    new value is seen at once) but compiles each distinct text only once.
    `text` of the result is the canonical form, what the store keeps.
    """
    kind = key_info_or_raise(key)
    if kind is Kind.DEVICE:
        groups, problems = split_devices(text, key)
        devices: dict[str, Mapping[str, Rule]] = {}
        for index, group in enumerate(groups, start=1):
            where = f"{key}: device type {group.type!r}"
            if group.type == "":
                problems.append(f"{key}: device group {index}: empty device type")
            elif not _DEVICE_TYPE_RE.fullmatch(group.type):
                problems.append(f"{where}: not a valid device type name ([A-Za-z0-9_.-]+)")
            elif group.type in devices:
                problems.append(f"{where}: defined twice; put all its properties in one group")
            devices[group.type] = _compile_defs(group.props, where, problems)
        if problems:
            raise DefinitionError(problems)
        return CompiledValue(key, format_devices(groups), devices=devices)
    defs, problems = split_properties(text, key)
    props = _compile_defs(defs, key, problems)
    if problems:
        raise DefinitionError(problems)
    return CompiledValue(key, format_properties(defs), props=props)


def _compile_defs(
    defs: tuple[PropertyDef, ...], where: str, problems: list[str]
) -> dict[str, Rule]:
    rules: dict[str, Rule] = {}
    seen: set[str] = set()
    for d in defs:
        if d.name in seen:
            problems.append(f"{where}: property {d.name!r} is defined twice")
            continue
        seen.add(d.name)
        reason = reserved_reason(d.name)
        if reason is not None:
            problems.append(f"{where}: property {d.name!r}: {reason}")
            continue
        try:
            with warnings.catch_warnings():
                # re warns (FutureWarning) of a regex whose meaning may change:
                # `[[`, `&&`, `--`, `||` in a set. That is also Java's set
                # intersection syntax, which Python would read differently;
                # refuse rather than check values against something else.
                warnings.simplefilter("error", FutureWarning)
                pattern = re.compile(d.regex, re.ASCII)
        except FutureWarning as e:
            problems.append(f"{where}: property {d.name!r}: regex {shorten(d.regex)} "
                            f"is ambiguous in Python's re ({e}); escape the character")
            continue
        # Anything compile raises (re.error, OverflowError for huge repeat
        # counts, RecursionError for deep nesting) means the same thing.
        except Exception as e:
            problems.append(f"{where}: property {d.name!r}: regex {shorten(d.regex)} "
                            f"does not compile: {e}")
            continue
        rules[d.name] = Rule(d.name, d.regex, pattern)
    return rules


def check_values(
    rules: Mapping[str, Rule], props: object, what: str, undefined: str
) -> list[str]:
    """Every problem of `props` ({name: value}) against `rules`, in the order given.

    `what` names the owner in messages ("VM", "interface device"); `undefined`
    says where a name would have to be defined. Never raises: a request from
    outside may hold anything.
    """
    if not isinstance(props, Mapping):
        return [f"{what} custom properties must be a mapping of name to value, "
                f"got {type(props).__name__}"]
    problems: list[str] = []
    for name, value in props.items():
        if not isinstance(name, str):
            problems.append(f"{what} custom property name {_safe_repr(name)} is not a string")
            continue
        rule = rules.get(name)
        if rule is None:
            problems.append(
                f"{what} custom property {shorten(name)} (value {_describe(value)}) is not "
                f"defined {undefined}; defined: {', '.join(rules) or 'none'}"
            )
            continue
        problem = _value_problem(value, rule.pattern)
        if problem is None:
            continue
        expected = (f"does not match {rule.regex}" if problem == _NO_MATCH
                    else f"{problem}; expected a string matching {rule.regex}")
        problems.append(f"{what} custom property {name!r}: value {_describe(value)} {expected}")
    return problems


def _value_problem(value: object, pattern: re.Pattern[str]) -> str | None:
    if not isinstance(value, str):
        return f"is of type {type(value).__name__}, not a string"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid text (it holds a lone surrogate)"
    if size > MAX_VALUE_BYTES:
        return f"is {size} bytes long, over the limit of {MAX_VALUE_BYTES}"
    # An environment variable cannot hold a NUL: the hook could never see it.
    if "\0" in value:
        return "contains a NUL character"
    if pattern.fullmatch(value) is None:
        return _NO_MATCH
    return None


def _describe(value: object) -> str:
    if isinstance(value, str):
        return shorten(value)
    return _safe_repr(value)


def _safe_repr(value: object) -> str:
    try:
        return _short_repr.repr(value)
    # A hostile object's __repr__ must not turn a refusal into a crash.
    except Exception:
        return f"<{type(value).__name__}>"
