"""bench/api.py's cut-down agents (bench/api_floor.py) do what the breakdown says they do.

The breakdown splits the agent's create+destroy into transport, libvirt calls
and verb work by subtracting these agents' times: that holds only if they
answer exactly as the agent does, and the libvirt one really makes its calls.
"""

from __future__ import annotations

import uuid

import pytest
from support import TEST_URI

from bench.api import Agent, create_params


@pytest.mark.parametrize("floor", ["libvirt", "transport"])
def test_a_cut_down_agent_answers_as_the_agent(floor: str) -> None:
    agent = Agent(TEST_URI, floor=floor)
    try:
        first = str(uuid.uuid4())
        created = agent.call("create", create_params(0, first))  # a real create
        assert created["vmList"]["vmId"] == first
        destroyed = agent.call("destroy", first)
        vm_id = str(uuid.uuid4())
        assert agent.call("create", create_params(1, vm_id)) == created
        assert agent.call("destroy", vm_id) == destroyed
        never_created = str(uuid.uuid4())
        if floor == "libvirt":
            # destroy asks libvirt: a domain the cut-down create made is found,
            # one it did not make is not.
            with pytest.raises(SystemExit, match="destroy failed"):
                agent.call("destroy", never_created)
        else:
            assert agent.call("destroy", never_created) == destroyed
    finally:
        agent.close()
