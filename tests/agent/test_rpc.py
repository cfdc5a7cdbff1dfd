"""The XML-RPC adapter's pure helpers."""

from __future__ import annotations

import inspect
from enum import IntEnum

import pytest

from hookvisor.rpc.xmlrpc import _arity, parse_listen, xmlrpc_safe


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


def test_arity_agrees_with_bind() -> None:
    # The dispatcher asks inspect.bind only for counts outside the arity.
    def f(a: int, b: int = 0, *, c: int = 0) -> None: ...
    def g(a: int, *rest: int) -> None: ...
    def h(*, a: int) -> None: ...

    for func in (f, g, h):
        sig = inspect.signature(func)
        low, high = _arity(sig)
        for n in range(4):
            try:
                sig.bind(*range(n))
                binds = True
            except TypeError:
                binds = False
            assert binds == (low <= n <= high), (func.__name__, n)
