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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn
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
    # Handlers are looked up per tag in a dict, and the text of an element is
    # joined only where it is used: this runs for every element of every request.
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.max_string = limits.max_string_bytes
        # Four elements per level of value nesting (value, array, data, value...).
        self.max_depth = 4 * limits.max_nesting + 8
        self.frames: list[_Frame] = []
        self.containers = 0
        self.data: list[str] = []
        self.data_len = 0
        self.value: Any = _NOVALUE  # the typed value just closed, for </value>
        self.method: str | None = None
        self.params: list[Any] | None = None
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

    def fail(self, what: str) -> NoReturn:
        raise RequestError(f"{self.path()}: {what}")

    # -- expat handlers -------------------------------------------------------
    def start(self, tag: str, _attrs: dict[str, str]) -> None:
        self.depth += 1
        if self.depth > self.max_depth:
            self.fail(f"nested deeper than max_nesting={self.limits.max_nesting}")
        if self.data:
            self.data = []
        self.data_len = 0
        if self.depth == 1 and tag != "methodCall":
            raise RequestError(f"not an XML-RPC call: root element <{tag[:40]}>")
        try:
            handler = _START[tag]
        except KeyError:
            self.fail(f"unknown element <{tag[:40]}>")
        if handler is not None:
            handler(self, tag)

    def _s_value(self, _tag: str) -> None:
        self.value = _NOVALUE

    def _s_container(self, tag: str) -> None:
        self.containers += 1
        if self.containers > self.limits.max_nesting:
            self.fail(f"nested deeper than max_nesting={self.limits.max_nesting}")
        self.frames.append(_Frame(tag))

    def _s_member(self, _tag: str) -> None:
        if not self.frames or self.frames[-1].kind != "struct":
            self.fail("<member> outside a <struct>")
        self.frames.append(_Frame("member"))

    def _s_params(self, _tag: str) -> None:
        if self.params is not None or self.frames:
            self.fail("<params> twice or misplaced")
        frame = _Frame("params")
        self.params = frame.items
        self.frames.append(frame)

    def chars(self, text: str) -> None:
        self.data_len += len(text)
        if self.data_len > self.max_string:
            self.fail(f"string longer than max_string_bytes={self.max_string}")
        self.data.append(text)

    def end(self, tag: str) -> None:
        self.depth -= 1
        handler = _END.get(tag)
        if handler is not None:
            handler(self, tag)
        if self.data:
            self.data = []
        self.data_len = 0

    def text(self) -> str:
        data = self.data
        return data[0] if len(data) == 1 else "".join(data)

    def _e_value(self, _tag: str) -> None:
        value = self.value
        if value is _NOVALUE:
            value = self.text()
        self.value = _NOVALUE
        if not self.frames:
            self.fail("<value> outside <params>")
        frame = self.frames[-1]
        kind = frame.kind
        if kind == "member":
            frame.value = value
        elif kind == "struct":
            self.fail("<value> directly in a <struct>")
        else:
            frame.items.append(value)

    def _e_container(self, _tag: str) -> None:
        frame = self.frames.pop()
        self.containers -= 1
        self.value = frame.items

    def _e_member(self, _tag: str) -> None:
        member = self.frames.pop()
        if member.name is None or member.value is _NOVALUE:
            self.fail("<member> without a <name> and a <value>")
        self.frames[-1].items[member.name] = member.value

    def _e_name(self, _tag: str) -> None:
        if not self.frames or self.frames[-1].kind != "member":
            self.fail("<name> outside a <member>")
        self.frames[-1].name = self.text()

    def _e_method(self, _tag: str) -> None:
        self.method = self.text().strip()

    def _e_params(self, _tag: str) -> None:
        self.frames.pop()

    def _e_string(self, _tag: str) -> None:
        self.value = self.text()

    def _e_int(self, tag: str) -> None:
        digits = self.text().strip()
        sign = digits[:1] in ("-", "+")
        if len(digits) - sign > self.limits.max_int_digits:
            self.fail(f"integer of {len(digits) - sign} digits, more than "
                      f"max_int_digits={self.limits.max_int_digits}")
        if not digits[sign:].isdigit() or not digits[sign:].isascii():
            self.fail(f"<{tag}> is not an integer: {digits[:40]!r}")
        self.value = int(digits)

    def _e_bool(self, _tag: str) -> None:
        text = self.text().strip()
        if text not in ("0", "1"):
            self.fail(f"<boolean> must be 0 or 1, got {text[:40]!r}")
        self.value = text == "1"

    def _e_double(self, _tag: str) -> None:
        text = self.text().strip()
        if len(text) > _DOUBLE_MAX_CHARS:
            self.fail(f"<double> of {len(text)} characters")
        try:
            self.value = float(text)
        except ValueError:
            self.fail(f"<double> is not a number: {text[:40]!r}")

    def _e_base64(self, _tag: str) -> None:
        try:
            self.value = base64.b64decode(self.text().encode("ascii", "replace"))
        except (binascii.Error, ValueError):
            self.fail("<base64> is not base64")

    def _e_nil(self, _tag: str) -> None:
        self.value = None


_Handler = Callable[[_Parser, str], None]
_START: dict[str, _Handler | None] = {
    "value": _Parser._s_value, "array": _Parser._s_container, "struct": _Parser._s_container,
    "member": _Parser._s_member, "params": _Parser._s_params,
    **dict.fromkeys(("methodCall", "methodName", "name", "data", "param", *_SCALARS)),
}
_END: dict[str, _Handler] = {
    "value": _Parser._e_value, "array": _Parser._e_container,
    "struct": _Parser._e_container, "member": _Parser._e_member, "name": _Parser._e_name,
    "methodName": _Parser._e_method, "params": _Parser._e_params,
    "string": _Parser._e_string, "boolean": _Parser._e_bool, "double": _Parser._e_double,
    "base64": _Parser._e_base64, "nil": _Parser._e_nil, "ex:nil": _Parser._e_nil,
    # VDSM's verbs take no dates: kept as their text.
    "dateTime.iso8601": _Parser._e_string,
    **dict.fromkeys(_INTS, _Parser._e_int),
}


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
    except (LookupError, ValueError) as e:
        # An encoding expat does not know goes to Python's codecs: an unknown
        # name (LookupError), a multi-byte codec or bytes it cannot decode.
        raise RequestError(f"unsupported encoding: {e}") from None
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
