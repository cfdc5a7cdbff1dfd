"""The libvirt adapter on the test driver (in-process, no daemon)."""

from __future__ import annotations

import threading
import uuid

import libvirt
import pytest

from hookvisor.virt import domain_xml as dx
from hookvisor.virt.host import EVENT_STOPPED, Host, HostError, choose_domain_type
from hookvisor.virt.spec import VmSpec


def test_domain_type_choice() -> None:
    assert choose_domain_type("Test", "kvm") == "test"
    assert choose_domain_type("QEMU", "qemu") == "qemu"
    assert choose_domain_type("QEMU", "auto") in ("kvm", "qemu")


def test_start_paused_events_stats_destroy() -> None:
    host = Host("test:///default")
    assert host.domain_type == "test"
    stopped = threading.Event()
    vm_id = str(uuid.uuid4())

    def on_event(uid: str, event: int, _detail: int) -> None:
        if uid == vm_id and event == EVENT_STOPPED:
            stopped.set()

    host.on_lifecycle(on_event)
    try:
        xml = dx.build(VmSpec(vm_id, "hvtest-host", 64, 1), host.domain_type)
        live = host.start(xml, paused=True)
        assert dx.identity(live) == (vm_id, "hvtest-host")
        assert host.state(vm_id)[0] == 3  # VIR_DOMAIN_PAUSED
        assert vm_id in {d.uuid for d in host.active_domains()}
        assert vm_id in host.all_stats()
        host.resume(vm_id)
        assert host.state(vm_id)[0] == 1
        host.destroy(vm_id)
        assert stopped.wait(5)
        with pytest.raises(HostError) as err:
            host.state(vm_id)
        assert err.value.no_domain
    finally:
        host.close()


def test_bad_xml_is_a_host_error() -> None:
    host = Host("test:///default")
    try:
        with pytest.raises(HostError):
            host.start("<domain type='test'><name>hvtest-bad</name></domain>", paused=False)
    finally:
        host.close()


def test_kept_handles_follow_the_uuid_and_events_are_filtered() -> None:
    host = Host("test:///default")
    other = libvirt.open("test:///default")  # same in-process driver, behind the host's back
    vm_id = str(uuid.uuid4())
    seen: list[int] = []
    two_stops = threading.Event()

    def on_event(uid: str, event: int, _detail: int) -> None:
        if uid == vm_id:
            seen.append(event)
            if len(seen) == 2:
                two_stops.set()

    host.on_lifecycle(on_event, events=(EVENT_STOPPED,))
    try:
        xml = dx.build(VmSpec(vm_id, "hvtest-handle", 64, 1), host.domain_type)
        host.start(xml, paused=False, uuid=vm_id)
        other.lookupByUUIDString(vm_id).destroy()
        with pytest.raises(HostError) as err:
            host.state(vm_id)
        assert err.value.no_domain
        other.createXML(xml, 0)  # the same UUID again: the kept handle reaches it
        assert host.state(vm_id)[0] == 1
        host.destroy(vm_id)
        with pytest.raises(HostError) as err:
            host.destroy(vm_id)
        assert err.value.no_domain
        assert two_stops.wait(5)
        assert seen == [EVENT_STOPPED, EVENT_STOPPED]  # no STARTED: not asked for
    finally:
        host.close()
        other.close()


def test_a_start_that_fails_after_createxml_leaves_no_domain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fault injection on one call: the domain is real, only its XML read fails."""
    host = Host("test:///default")
    vm_id = str(uuid.uuid4())

    def broken(self: libvirt.virDomain, flags: int = 0) -> str:
        raise libvirt.libvirtError("injected: XMLDesc failed")

    try:
        xml = dx.build(VmSpec(vm_id, "hvtest-halfstart", 64, 1), host.domain_type)
        with monkeypatch.context() as m:
            m.setattr(libvirt.virDomain, "XMLDesc", broken)
            with pytest.raises(HostError):
                host.start(xml, paused=False, uuid=vm_id)
        conn = libvirt.open("test:///default")
        try:
            with pytest.raises(libvirt.libvirtError):
                conn.lookupByUUIDString(vm_id)
        finally:
            conn.close()
    finally:
        host.close()
