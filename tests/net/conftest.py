"""A network namespace per test, with veth pairs standing for the host's NICs.

Nothing here touches the machine's own interfaces: every link is created inside
a namespace named `hvtest-...`, and the namespace is deleted whatever happens.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from net_support import Namespace, require_root
from pyroute2 import netns

# VLANs and bonds need a kernel this machine lacks: test_vlan_bond.py runs inside the
# tiny guest (test_guest.py sets HOOKVISOR_IN_GUEST=1 there) and is not even collected
# elsewhere, rather than counted as skips.
collect_ignore = [] if os.environ.get("HOOKVISOR_IN_GUEST") == "1" else ["test_vlan_bond.py"]


@pytest.fixture
def ns() -> Iterator[Namespace]:
    require_root()
    name = f"hvtest-{uuid.uuid4().hex[:8]}"
    netns.create(name)
    space = None
    try:
        space = Namespace(name)
        yield space
    finally:
        if space is not None:
            space.close()
        netns.remove(name)
