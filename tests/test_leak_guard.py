"""The leak guard of a libvirtd other test sessions share: this session's domains only."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import libvirt
import pytest
from support import PREFIX, SESSION_PREFIX, TEST_URI, assert_no_leftovers

from hookvisor.virt import domain_xml as dx
from hookvisor.virt.spec import VmSpec


def test_the_guard_destroys_this_sessions_domains_and_no_others() -> None:
    assert SESSION_PREFIX.startswith(PREFIX) and SESSION_PREFIX != PREFIX
    # test:///default is this process's own: it stands in for the shared daemon.
    conn = libvirt.open(TEST_URI)
    other = f"{PREFIX}0ther0-vm"  # a session of another prefix
    mine = f"{SESSION_PREFIX}vm"
    try:
        for name in (other, mine):
            conn.createXML(dx.build(VmSpec(str(uuid.uuid4()), name, 64, 1), "test"), 0)
        with pytest.raises(AssertionError, match="left domains behind") as err:
            assert_no_leftovers(TEST_URI, SESSION_PREFIX)
        assert mine in str(err.value) and other not in str(err.value)
        names = [d.name() for d in conn.listAllDomains()]
        assert other in names and mine not in names
    finally:
        for dom in conn.listAllDomains():
            if dom.name() in (other, mine):
                dom.destroy()
        conn.close()


def test_processes_a_test_starts_share_the_prefix() -> None:
    assert os.environ["HVTEST_SESSION_PREFIX"] == SESSION_PREFIX
    child = subprocess.run([sys.executable, "-c", "import support; print(support.SESSION_PREFIX)"],
                           capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": os.path.dirname(__file__)})
    assert child.stdout.strip() == SESSION_PREFIX, child.stderr
