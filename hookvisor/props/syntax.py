"""engine-config's text forms of custom-property definitions: parse and format.

Two forms, one per kind of key:

- properties  `name=REGEX;name2=REGEX2`   (UserDefinedVMProperties,
  UserDefinedNetworkCustomProperties)
- devices     `{type=interface;prop={speed=^([0-9]{1,5})$;duplex=^(full|half)$}}`,
  several groups joined by `;` (CustomDeviceProperties)

Only the shape is checked here; what a name or a regex may be is `checks.py`'s
business, so that every problem of a definition can be reported at once.

As in the engine, `;` always separates: a regex cannot contain it (write
`\\x3b` instead). Braces inside a regex are fine: a device group ends at the
first `}}` followed by `;{type=` or by the end of the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from hookvisor.props.errors import DefinitionError


class Kind(Enum):
    VM = "vm"
    DEVICE = "device"
    NETWORK = "network"


@dataclass(frozen=True)
class KeyInfo:
    name: str
    kind: Kind
    description: str


KEYS: dict[str, KeyInfo] = {
    info.name: info
    for info in (
        KeyInfo("UserDefinedVMProperties", Kind.VM,
                "VM custom properties a hook may get: name=REGEX;name2=REGEX2"),
        KeyInfo("CustomDeviceProperties", Kind.DEVICE,
                "device custom properties per device type: "
                "{type=TYPE;prop={name=REGEX;...}};{type=...}"),
        KeyInfo("UserDefinedNetworkCustomProperties", Kind.NETWORK,
                "host network custom properties: name=REGEX;name2=REGEX2"),
    )
}


@dataclass(frozen=True)
class PropertyDef:
    """One `name=REGEX` as written; not yet checked."""

    name: str
    regex: str


@dataclass(frozen=True)
class DeviceGroup:
    """One `{type=TYPE;prop={...}}` group as written; not yet checked."""

    type: str
    props: tuple[PropertyDef, ...]


_SEP = ";"
_GROUP_OPEN = "{type="
_PROP_OPEN = ";prop={"
# The first `}}` that is followed by the next group or the end closes a group;
# a regex's own `{1,5}` or `\}` never is.
_GROUP_CLOSE = re.compile(r"\}\}(?=;\{type=|\Z)")


def parse_properties(text: str, key: str = "UserDefinedVMProperties") -> tuple[PropertyDef, ...]:
    """`name=REGEX;...` -> definitions in order; duplicates are kept for the checks."""
    defs, problems = split_properties(text, key)
    if problems:
        raise DefinitionError(problems)
    return defs


def format_properties(defs: tuple[PropertyDef, ...] | list[PropertyDef]) -> str:
    for d in defs:
        _refuse_unrepresentable(d)
    return _SEP.join(f"{d.name}={d.regex}" for d in defs)


def parse_devices(text: str, key: str = "CustomDeviceProperties") -> tuple[DeviceGroup, ...]:
    """`{type=T;prop={...}};...` -> groups in order; duplicates are kept for the checks."""
    groups, problems = split_devices(text, key)
    if problems:
        raise DefinitionError(problems)
    return groups


def split_devices(text: str, key: str) -> tuple[tuple[DeviceGroup, ...], list[str]]:
    """The groups that could be read, and the problems; for reporting all at once."""
    groups: list[DeviceGroup] = []
    problems: list[str] = []
    if text.endswith("}};"):
        problems.append(f"{key}: a stray ';' at the end")
        text = text[:-1]
    pos = 0
    while pos < len(text):
        where = f"{key}: device group {len(groups) + 1} (at character {pos + 1})"
        if not text.startswith(_GROUP_OPEN, pos):
            problems.append(f"{where}: expected '{_GROUP_OPEN}', found {text[pos:pos + 20]!r}")
            break
        type_start = pos + len(_GROUP_OPEN)
        type_end = text.find(_SEP, type_start)
        if type_end < 0 or not text.startswith(_PROP_OPEN, type_end):
            problems.append(f"{where}: expected '{_PROP_OPEN}' after the device type")
            break
        body_start = type_end + len(_PROP_OPEN)
        close = _GROUP_CLOSE.search(text, body_start)
        if close is None:
            problems.append(f"{where}: no closing '}}}}' before the end or the next group")
            break
        dev_type = text[type_start:type_end]
        props, group_problems = split_properties(
            text[body_start:close.start()], f"{key}: device type {dev_type!r}"
        )
        problems.extend(group_problems)
        groups.append(DeviceGroup(dev_type, props))
        pos = close.end()
        if pos < len(text):
            # The close pattern's lookahead guarantees `;{type=` here.
            pos += len(_SEP)
    return tuple(groups), problems


def format_devices(groups: tuple[DeviceGroup, ...] | list[DeviceGroup]) -> str:
    parts = []
    for g in groups:
        if _SEP in g.type or "{" in g.type or "}" in g.type:
            raise ValueError(f"device type {g.type!r} cannot be written in engine-config syntax")
        parts.append(f"{_GROUP_OPEN}{g.type}{_PROP_OPEN}{format_properties(g.props)}}}}}")
    text = _SEP.join(parts)
    # A regex holding `}};{type=` would end its group early; refuse rather than
    # write text that reads back as something else.
    if parse_devices(text) != tuple(groups):
        raise ValueError("device properties cannot be written unambiguously in "
                         "engine-config syntax (a regex contains '}};{type=')")
    return text


def split_properties(text: str, where: str) -> tuple[tuple[PropertyDef, ...], list[str]]:
    """The definitions that could be read, and the problems of the others."""
    if text == "":
        return (), []
    defs: list[PropertyDef] = []
    problems: list[str] = []
    for index, item in enumerate(text.split(_SEP), start=1):
        name, sep, regex = item.partition("=")
        if item == "":
            problems.append(f"{where}: definition {index} is empty (a stray ';'?)")
        elif not sep:
            problems.append(f"{where}: definition {index} {item[:60]!r} is not NAME=REGEX")
        else:
            defs.append(PropertyDef(name, regex))
    return tuple(defs), problems


def _refuse_unrepresentable(d: PropertyDef) -> None:
    if _SEP in d.name or "=" in d.name or _SEP in d.regex:
        raise ValueError(f"property {d.name!r}={d.regex!r} cannot be written in "
                         "engine-config syntax (';' in the name or regex, or '=' in the name)")
