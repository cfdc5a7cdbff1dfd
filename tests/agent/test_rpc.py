"""The XML-RPC adapter's pure helpers."""

from __future__ import annotations

from enum import IntEnum

import pytest

from hookvisor.rpc.xmlrpc import parse_listen, xmlrpc_safe


def test_xmlrpc_safe_guards_32_bit_ints() -> None:
    class E(IntEnum):
        A = 3

    value = {"big": 2**40, "small": -5, 1: (2**31, None, True), "e": E.A, "f": 1.5}
    assert xmlrpc_safe(value) == {"big": str(2**40), "small": -5, "1": [str(2**31), None, True],
                                  "e": 3, "f": 1.5}
    assert parse_listen("[::1]:54321") == ("::1", 54321)
    assert parse_listen(":80") == ("0.0.0.0", 80)
    with pytest.raises(ValueError):
        parse_listen("localhost")
