"""Helpers shared by test modules (importable: tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import time
from typing import Any, NoReturn

import libvirt
import pytest

TEST_URI = "test:///default"
# Every domain a test creates is named so; the leak guards destroy what is left.
PREFIX = "hvtest-"
# This session's own prefix, for domains on a libvirtd other test sessions share
# (qemu:///system, the daemon's test driver): each session's leak guard destroys
# its own domains only. Through the environment, the processes a test starts
# (and a session they start) name theirs alike.
SESSION_PREFIX = os.environ.setdefault("HVTEST_SESSION_PREFIX",
                                       f"{PREFIX}{secrets.token_hex(3)}-")

# Hooks run as the hook user when the tests run as root: the interpreter of a
# Python hook must be one that user can execute (the venv's may live under
# /root, 0700), so Python hooks use the system's.
HOOK_PYTHON = "/usr/bin/python3" if os.geteuid() == 0 and os.path.exists(
    "/usr/bin/python3") else sys.executable


def code(reply: dict[str, Any]) -> int:
    """A verb reply's status code."""
    return int(reply["status"]["code"])


def live_xml(vm_id: str, uri: str = TEST_URI) -> str:
    """The domain's XML as libvirt has it now."""
    conn = libvirt.open(uri)
    try:
        return str(conn.lookupByUUIDString(vm_id).XMLDesc(0))
    finally:
        conn.close()


def domain_exists(vm_id: str, uri: str = TEST_URI) -> bool:
    conn = libvirt.open(uri)
    try:
        conn.lookupByUUIDString(vm_id)
        return True
    except libvirt.libvirtError:
        return False
    finally:
        conn.close()


def wait_for(predicate: Any, timeout: float = 10.0, step: float = 0.05) -> Any:
    """The predicate's first truthy value; AssertionError if none comes in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not met in time")


def deny_hook_listing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every hook directory unreadable to discovery.

    Running as root, chmod 000 would not stop a read: the engine's `os` is
    replaced for discovery only, as if the hooks directory were mode 000 to
    it: an event directory can be neither listed nor stat'ed (and a real chmod
    changes a directory's ctime, so no cached listing of it is used: the mock
    makes no listing old enough to be trusted).
    """
    from hookvisor.hooks import discovery

    monkeypatch.setattr(discovery, "RACY_WINDOW_NS", 1 << 62)

    class DeniedOs:
        def __getattr__(self, name: str) -> object:
            return getattr(os, name)

        @staticmethod
        def scandir(path: object) -> object:
            raise PermissionError(13, "Permission denied")

        @staticmethod
        def stat(path: object, *args: object, **kwargs: object) -> object:
            raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(discovery, "os", DeniedOs())


def unavailable(message: str) -> NoReturn:
    """Skip the test for want of `message`'s resource; fail it under CI=true, where
    everything the tests need is set up (scripts/test.sh) and a skip would hide that."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def destroy_leftovers(uri: str, prefix: str = PREFIX) -> list[str]:
    """Destroy (and undefine) the `prefix` domains on `uri`; their names."""
    conn = libvirt.open(uri)
    try:
        names = []
        for dom in conn.listAllDomains():
            if not dom.name().startswith(prefix):
                continue
            names.append(dom.name())
            # Asked before destroy: a destroyed transient domain no longer exists.
            with contextlib.suppress(libvirt.libvirtError):
                persistent = dom.isPersistent()
                if dom.isActive():
                    dom.destroy()
                if persistent:
                    dom.undefine()
        return names
    finally:
        conn.close()


def assert_no_leftovers(uri: str, prefix: str = PREFIX) -> None:
    """The leak guard after a test: `prefix` domains left on `uri` are destroyed, and fail it."""
    leaked = destroy_leftovers(uri, prefix)
    assert not leaked, f"test left domains behind on {uri}: {leaked}"
