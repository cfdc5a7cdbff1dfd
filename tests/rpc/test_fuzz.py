"""Random params to every verb of the table, through a real client: every reply is
a status struct, never a Fault, and the agent answers afterwards."""

from __future__ import annotations

import xmlrpc.client
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hookvisor.rpc.verbs import NOT_BUILT, verb_table


class _AnyAgent:
    """Stands in for an Agent when only the verb names are wanted."""

    def __getattr__(self, name: str) -> Any:
        return lambda *a: None


VERBS = sorted(set(verb_table(_AnyAgent())) | NOT_BUILT)  # type: ignore[arg-type]

# What an XML-RPC client can send: no surrogates (not encodable), ints of 32 bits.
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
scalars = (st.none() | st.booleans() | st.integers(-(2**31), 2**31 - 1) | text
           | st.floats(allow_nan=False, allow_infinity=False))
keys = st.sampled_from(["vmId", "vmName", "memSize", "smp", "custom", "devices", "xml",
                        "type", "device", "path", "limit", "failed", "event", "nic",
                        "drive", "macAddr", "launchPaused"]) | text
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(keys, inner, max_size=4), max_leaves=20)


@pytest.fixture(scope="module")
def fuzz_agent(module_agent: Any) -> Any:
    return module_agent


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(verb=st.sampled_from(VERBS), params=st.lists(values, max_size=3))
def test_random_params_get_a_status_struct(fuzz_agent: Any, verb: str,
                                           params: list[Any]) -> None:
    api = fuzz_agent.api
    try:
        reply = getattr(api, verb)(*params)
    except xmlrpc.client.Fault as e:  # pragma: no cover - the failure it looks for
        raise AssertionError(f"{verb}{tuple(params)!r}: a Fault: {e}") from None
    assert isinstance(reply, dict), reply
    status = reply["status"]
    assert isinstance(status["code"], int) and isinstance(status["message"], str)
    assert "Traceback" not in status["message"]
    assert api.getVdsStats()["status"]["code"] == 0


def test_the_agent_still_answers_after_the_fuzzing(fuzz_agent: Any) -> None:
    assert fuzz_agent.api.list()["status"]["code"] == 0
    assert fuzz_agent.proc.poll() is None
