"""Checks the data a script of a modifying event left behind.

The data must still parse, keep its root element, and for a domain keep its
`<uuid>` and `<name>` (the VDSM documentation's own warning: never change the
UUID; the agent tracks the VM by both). The baseline is taken once from the
chain's input, so a chain of N scripts parses the input once, plus each output
that actually differs from what the script was given.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from hookvisor.hooks.catalogue import Payload


@dataclass(frozen=True)
class Baseline:
    payload: Payload
    root: str | None = None  # XML root tag, namespaced as {ns}tag
    uuid: str | None = None
    name: str | None = None


def _child_text(root: ET.Element, tag: str) -> str | None:
    child = root.find(tag)
    return None if child is None else (child.text or "").strip()


def _norm(tag: str, value: str | None) -> str | None:
    # The same UUID spelt in another case or without dashes is the same UUID.
    if tag == "uuid" and value is not None:
        return value.lower().replace("-", "")
    return value


def _parse_xml(data: bytes) -> ET.Element:
    return ET.fromstring(data)


def baseline(payload: Payload, data: bytes) -> Baseline | None:
    """What the chain's input looks like; None if the input itself does not parse."""
    try:
        if payload.is_xml:
            root = _parse_xml(data)
            if payload is Payload.DOMAIN:
                return Baseline(payload, root.tag, _child_text(root, "uuid"),
                                _child_text(root, "name"))
            return Baseline(payload, root.tag)
        if payload is Payload.JSON:
            json.loads(data)
        return Baseline(payload)
    except (ET.ParseError, ValueError, RecursionError):
        return None


# Caps, stats and network setups are a few levels deep.
MAX_JSON_DEPTH = 64


def _json_deeper_than(obj: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def check(payload: Payload, base: Baseline | None, data: bytes | None) -> str | None:
    """Why `data` is not acceptable output, or None if it is."""
    if payload is Payload.NONE:
        return None
    if data is None:
        return "removed the data file"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"left data that is not UTF-8 ({e.reason} at byte {e.start})"
    if payload is Payload.JSON:
        try:
            obj = json.loads(data)
        except ValueError as e:
            return f"left data that is not valid JSON: {e}"
        except RecursionError:  # [[[[...]]]]: the decoder recurses per level
            return f"left JSON nested too deeply (more than {MAX_JSON_DEPTH} levels)"
        if _json_deeper_than(obj, MAX_JSON_DEPTH):
            # What uses it (a reply's marshaller, a client's parser) recurses per level.
            return f"left JSON nested too deeply (more than {MAX_JSON_DEPTH} levels)"
        return None
    try:
        root = _parse_xml(data)
    except ET.ParseError as e:
        return f"left data that is not well-formed XML: {e}"
    if base is None:
        return None
    if root.tag != base.root:
        return f"changed the root element from <{base.root}> to <{root.tag}>"
    if payload is Payload.DOMAIN:
        for tag, old in (("uuid", base.uuid), ("name", base.name)):
            new = _child_text(root, tag)
            if _norm(tag, new) != _norm(tag, old):
                return f"changed the domain <{tag}> from {old!r} to {new!r}"
    return None
