"""XML-RPC on the wire, for input nobody vouches for.

`parse_request` reads a methodCall with expat and bounds as it goes: nesting
of arrays and structs, the length of every string and name, the digits of
every integer. It never recurses (5000 levels of nesting cost nothing) and
refuses a DOCTYPE (no entity can expand). What it refuses is a
`RequestError` whose message names the parameter by its path
(`params[0].devices[3].path`), for a VDSM status reply; never a Fault.
xmlrpc.client.loads is not used on untrusted input: it recurses, has no
bound, and CPython's own int limit (4300 digits) surfaces as a ValueError.

`marshal_reply` makes every text valid XML (control characters other than
tab, newline and CR, lone surrogates and U+FFFE/U+FFFF become visible
escapes such as `\\x1b`, `\\u0000`, `\\udc80`) and bounds the reply size.
"""

from __future__ import annotations

import base64
import binascii
import re
import xmlrpc.client
from dataclasses import dataclass
from typing import Any
from xml.parsers import expat

from hookvisor.errors import Code


class RequestError(Exception):
    """A request the agent will not take; the message says why, for the client."""


@dataclass(frozen=True)
class Limits:
    max_nesting: int = 32
    max_string_bytes: int = 4 * 1024 * 1024
    max_int_digits: int = 20
    max_reply_bytes: int = 32 * 1024 * 1024


# A status message is one line for a human: past this it is cut (with a mark),
# so a client-supplied value quoted in an error never travels back whole.
MESSAGE_CAP = 64 * 1024

_SCALARS = frozenset({"string", "int", "i4", "i8", "i1", "i2", "boolean", "double",
                      "dateTime.iso8601", "base64", "nil", "ex:nil"})
_INTS = frozenset({"int", "i4", "i8", "i1", "i2"})
_DOUBLE_MAX_CHARS = 400


class _Frame:
    __slots__ = ("items", "kind", "name", "value")

    def __init__(self, kind: str) -> None:
        self.kind = kind  # params | array | struct | member
        self.items: Any = [] if kind in ("params", "array") else {}
        self.name: str | None = None
        self.value: Any = _NOVALUE


_NOVALUE: Any = object()


class _Parser:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.frames: list[_Frame] = []
        self.containers = 0
        self.data: list[str] = []
        self.data_len = 0
        self.value: Any = _NOVALUE  # the typed value just closed, for </value>
        self.in_value = False
        self.method: str | None = None
        self.params: list[Any] | None = None
        self.seen_root = False
        self.depth = 0

    # -- paths, for messages --------------------------------------------------
    def path(self) -> str:
        parts: list[str] = []
        for f in self.frames:
            if f.kind == "params":
                parts.append(f"params[{len(f.items)}]")
            elif f.kind == "array":
                parts.append(f"[{len(f.items)}]")
            elif f.kind == "member":
                name = f.name if f.name is not None else "?"
                parts.append("." + (name if len(name) <= 64 else name[:64] + "..."))
        return "".join(parts) or "request"

    def fail(self, what: str) -> None:
        raise RequestError(f"{self.path()}: {what}")

    # -- expat handlers -------------------------------------------------------
    def start(self, tag: str, _attrs: dict[str, str]) -> None:
        self.depth += 1
        # Four elements per level of value nesting (value, array, data, value...).
        if self.depth > 4 * self.limits.max_nesting + 8:
            self.fail(f"nested deeper than max_nesting={self.limits.max_nesting}")
        self.data.clear()
        self.data_len = 0
        if not self.seen_root:
            if tag != "methodCall":
                raise RequestError(f"not an XML-RPC call: root element <{tag[:40]}>")
            self.seen_root = True
            return
        if tag == "value":
            self.in_value = True
            self.value = _NOVALUE
        elif tag in ("array", "struct"):
            self.containers += 1
            if self.containers > self.limits.max_nesting:
                self.fail(f"nested deeper than max_nesting={self.limits.max_nesting}")
            self.frames.append(_Frame(tag))
            self.in_value = False
        elif tag == "member":
            if not self.frames or self.frames[-1].kind != "struct":
                self.fail("<member> outside a <struct>")
            self.frames.append(_Frame("member"))
        elif tag == "params":
            if self.params is not None or self.frames:
                self.fail("<params> twice or misplaced")
            frame = _Frame("params")
            self.params = frame.items
            self.frames.append(frame)
        elif tag in _SCALARS:
            self.in_value = False
        elif tag not in ("methodName", "name", "data", "param"):
            self.fail(f"unknown element <{tag[:40]}>")

    def chars(self, text: str) -> None:
        self.data_len += len(text)
        if self.data_len > self.limits.max_string_bytes:
            self.fail(f"string longer than max_string_bytes={self.limits.max_string_bytes}")
        self.data.append(text)

    def end(self, tag: str) -> None:
        self.depth -= 1
        text = "".join(self.data) if self.data else ""
        self.data.clear()
        self.data_len = 0
        if tag == "value":
            value = self.value if self.value is not _NOVALUE else text
            self.value = _NOVALUE
            self._put(value)
        elif tag in ("array", "struct"):
            frame = self.frames.pop()
            self.containers -= 1
            self.value = frame.items
        elif tag == "member":
            member = self.frames.pop()
            if member.name is None or member.value is _NOVALUE:
                self.fail("<member> without a <name> and a <value>")
            self.frames[-1].items[member.name] = member.value
        elif tag == "name":
            if not self.frames or self.frames[-1].kind != "member":
                self.fail("<name> outside a <member>")
            self.frames[-1].name = text
        elif tag == "methodName":
            self.method = text.strip()
        elif tag == "params":
            self.frames.pop()
        elif tag in _SCALARS:
            self.value = self._scalar(tag, text)

    def _put(self, value: Any) -> None:
        if not self.frames:
            self.fail("<value> outside <params>")
        frame = self.frames[-1]
        if frame.kind in ("params", "array"):
            frame.items.append(value)
        elif frame.kind == "member":
            frame.value = value
        else:
            self.fail("<value> directly in a <struct>")

    def _scalar(self, tag: str, text: str) -> Any:
        if tag == "string":
            return text
        if tag in _INTS:
            digits = text.strip()
            sign = digits[:1] in ("-", "+")
            if len(digits) - sign > self.limits.max_int_digits:
                self.fail(f"integer of {len(digits) - sign} digits, more than "
                          f"max_int_digits={self.limits.max_int_digits}")
            if not digits[sign:].isdigit() or not digits[sign:].isascii():
                self.fail(f"<{tag}> is not an integer: {digits[:40]!r}")
            return int(digits)
        if tag == "boolean":
            if text.strip() not in ("0", "1"):
                self.fail(f"<boolean> must be 0 or 1, got {text.strip()[:40]!r}")
            return text.strip() == "1"
        if tag == "double":
            if len(text) > _DOUBLE_MAX_CHARS:
                self.fail(f"<double> of {len(text)} characters")
            try:
                return float(text.strip())
            except ValueError:
                self.fail(f"<double> is not a number: {text.strip()[:40]!r}")
        if tag == "base64":
            try:
                return base64.b64decode(text.encode("ascii", "replace"))
            except (binascii.Error, ValueError):
                self.fail("<base64> is not base64")
        if tag in ("nil", "ex:nil"):
            return None
        return text  # dateTime.iso8601: VDSM's verbs take none; kept as its text


def parse_request(body: bytes, limits: Limits) -> tuple[str, tuple[Any, ...]]:
    """(method, params) of a methodCall, or RequestError naming what is wrong."""
    state = _Parser(limits)
    parser = expat.ParserCreate()
    parser.buffer_text = True

    def no_doctype(*_args: Any) -> None:
        raise RequestError("a DOCTYPE is not allowed in a request")

    parser.StartDoctypeDeclHandler = no_doctype
    parser.EntityDeclHandler = no_doctype
    parser.StartElementHandler = state.start
    parser.EndElementHandler = state.end
    parser.CharacterDataHandler = state.chars
    try:
        parser.Parse(body, True)
    except expat.ExpatError as e:
        raise RequestError(f"malformed XML: {e}") from None
    except RecursionError:  # not reached (nothing recurses); kept as a last guard
        raise RequestError("request nested too deeply") from None
    if not state.method:
        raise RequestError("no <methodName> in the request")
    if len(state.method) > 256 or not state.method.isprintable():
        raise RequestError("bad <methodName>")
    return state.method, tuple(state.params or ())


# -- replies ------------------------------------------------------------------

# Characters XML 1.0 cannot carry, and lone surrogates (not encodable in UTF-8).
_BAD_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def _escape_char(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def xml_text(text: str) -> str:
    """`text` with every character XML cannot carry made a visible escape."""
    return _BAD_XML.sub(_escape_char, text) if _BAD_XML.search(text) else text


def status(code: Code | int, message: str) -> dict[str, Any]:
    return {"status": {"code": int(code), "message": message}}


def _cap_message(reply: dict[str, Any]) -> None:
    st = reply.get("status")
    if isinstance(st, dict):
        msg = st.get("message")
        if isinstance(msg, str) and len(msg) > MESSAGE_CAP:
            st["message"] = (msg[:MESSAGE_CAP]
                             + f" ... [{len(msg) - MESSAGE_CAP} more characters cut]")


def marshal_reply(method: str, reply: dict[str, Any], limits: Limits) -> bytes:
    """The methodResponse bytes: valid XML always, never over max_reply_bytes."""
    _cap_message(reply)
    try:
        text = xmlrpc.client.dumps((reply,), methodresponse=True, allow_none=True)
    except (TypeError, OverflowError, ValueError) as e:
        text = xmlrpc.client.dumps(
            (status(Code.UNEXPECTED, f"{method}: reply cannot be sent: {e}"),),
            methodresponse=True, allow_none=True)
    text = xml_text(text)
    data = text.encode("utf-8")
    if len(data) > limits.max_reply_bytes:
        data = xmlrpc.client.dumps(
            (status(Code.GENERAL, f"{xml_text(method[:80])}: reply of {len(data)} bytes exceeds "
                    f"max_reply_bytes={limits.max_reply_bytes}; ask for less"),),
            methodresponse=True, allow_none=True).encode("utf-8")
    return data
