"""Parsing untrusted XML-RPC and marshalling replies, without a server."""

from __future__ import annotations

import xmlrpc.client

import pytest

from hookvisor.rpc.wire import (
    MESSAGE_CAP,
    Limits,
    RequestError,
    marshal_reply,
    parse_request,
    status,
    xml_text,
)


def test_parses_what_xmlrpc_client_sends() -> None:
    params = ({"vmId": "a", "devices": [{"type": "disk", "readonly": True}], "n": None},
              "s", -3, 2.5, [], {})
    body = xmlrpc.client.dumps(params, "create", allow_none=True).encode()
    assert parse_request(body, Limits()) == ("create", params)


def test_untyped_value_is_a_string_and_i8_within_bounds_an_int() -> None:
    body = (b"<methodCall><methodName>x</methodName><params><param><value>plain</value>"
            b"</param><param><value><i8>-9000000000</i8></value></param></params></methodCall>")
    assert parse_request(body, Limits()) == ("x", ("plain", -9000000000))


@pytest.mark.parametrize(("body", "message"), [
    (b"<methodCall><methodName>x</methodName><params><param><value><struct><member><name>a"
     b"</name><value><array><data><value><int>12345</int></value></data></array></value>"
     b"</member></struct></value></param></params></methodCall>",
     "params[0].a[0]: integer of 5 digits, more than max_int_digits=4"),
    (b"<methodCall><methodName>x</methodName><params><param><value>"
     + b"<array><data><value>" * 5 + b"</value></data></array>" * 5
     + b"</value></param></params></methodCall>", "nested deeper than max_nesting=4"),
    (b"<methodCall><methodName>x</methodName><params><param><value><string>123456789"
     b"</string></value></param></params></methodCall>", "string longer than"),
    (b"<methodCall><params/></methodCall>", "no <methodName>"),
    (b"<methodResponse/>", "not an XML-RPC call"),
    (b"<methodCall><methodName>x</methodName><params><param><value><struct><value>"
     b"<int>1</int></value></struct></value></param></params></methodCall>",
     "<value> directly in a <struct>"),
    # pyexpat asks Python's codecs for an encoding expat does not know: an unknown
    # name raised LookupError, a multi-byte codec ValueError, and the server
    # dropped the connection with a traceback instead of answering.
    (b'<?xml version="1.0" encoding="EBCDIC"?><methodCall/>', "encoding"),
    (b'<?xml version="1.0" encoding="shift_jis"?><methodCall/>', "encoding"),
    (b'<?xml version="1.0" encoding="utf-7"?><methodCall/>', "encoding"),
])
def test_refusals_name_the_parameter(body: bytes, message: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_request(body, Limits(max_nesting=4, max_string_bytes=8, max_int_digits=4))
    assert message in str(caught.value)


def test_cpython_int_limit_is_never_reached() -> None:
    body = (b"<methodCall><methodName>x</methodName><params><param><value><int>"
            + b"1" * 10**5 + b"</int></value></param></params></methodCall>")
    with pytest.raises(RequestError, match="100000 digits"):
        parse_request(body, Limits(max_string_bytes=10**6))


def test_xml_text_escapes_what_xml_cannot_carry() -> None:
    assert xml_text("ok\t\n\r") == "ok\t\n\r"
    assert xml_text("\x1b[31m\x00\udc80\ufffe") == "\\x1b[31m\\x00\\udc80\\ufffe"


def test_reply_with_control_characters_is_valid_xml() -> None:
    data = marshal_reply("x", {**status(0, "Done"), "out": "\x1b[0m\x00",
                               "k\x01": ["\ud800"]}, Limits())
    reply = xmlrpc.client.loads(data)[0][0]
    assert reply["out"] == "\\x1b[0m\\x00"
    assert reply["k\\x01"] == ["\\ud800"]


def test_reply_over_the_bound_is_an_error_naming_the_verb() -> None:
    data = marshal_reply("getHookRuns", {**status(0, "Done"), "hookRuns": ["x" * 5000]},
                         Limits(max_reply_bytes=4096))
    reply = xmlrpc.client.loads(data)[0][0]
    assert reply["status"]["code"] == 100
    assert reply["status"]["message"].startswith("getHookRuns: reply of ")
    assert "max_reply_bytes=4096" in reply["status"]["message"]


def test_a_long_message_is_cut_and_marked() -> None:
    data = marshal_reply("destroy", status(1, "v" * (MESSAGE_CAP * 3)), Limits())
    message = xmlrpc.client.loads(data)[0][0]["status"]["message"]
    assert len(message) < MESSAGE_CAP + 100
    assert message.endswith(f"[{MESSAGE_CAP * 2} more characters cut]")
