"""setupNetworks with its hooks, property checks, lock, connectivity check and persistence,
on a namespace of the test's own (the agent's `net_netns`)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from net_support import Namespace

from hookvisor.agent.hookcalls import HookCalls
from hookvisor.agent.network import NetworkService
from hookvisor.errors import Code, VdsmError
from hookvisor.hooks.records import RunRecords
from hookvisor.hooks.runner import HookRunner, RunnerConfig
from hookvisor.net.persist import NetStore
from hookvisor.props.registry import PropertyRegistry

NET1 = {"nic": "eth1", "ipaddr": "10.0.0.2", "prefix": 24}


class Harness:
    def __init__(self, dirs: Any, ns: Namespace) -> None:
        self.dirs = dirs  # conftest's AgentDirs: hooks/, run/, state/
        self.ns = ns
        self.records = RunRecords(dirs.state / "hookruns.sqlite")
        self.props = PropertyRegistry(dirs.state / "properties.sqlite", "4.8")
        self.store = NetStore(dirs.state / "net")
        self.service = self.make()

    def make(self, lock_wait: float = 30.0) -> NetworkService:
        runner = HookRunner(RunnerConfig(hooks_dir=self.dirs.hooks, run_dir=self.dirs.run),
                            self.records)
        return NetworkService(HookCalls(runner), self.props, self.store, self.ns.name,
                              lock_wait)

    def hook(self, event: str, name: str, body: str) -> None:
        self.dirs.hook(event, name, body, python=True)

    def runs(self, event: str) -> list[Any]:
        return self.records.query(event=event)

    def state(self) -> dict[str, Any]:
        return self.ns.netlink().state().comparable()


@pytest.fixture
def h(dirs: Any, ns: Namespace) -> Iterator[Harness]:
    ns.veth("eth1")
    ns.veth("eth2")
    harness = Harness(dirs, ns)
    yield harness
    harness.records.close()
    harness.props.close()


def test_setup_applies_and_after_hook_sees_the_request(h: Harness) -> None:
    h.hook("after_network_setup", "10_dump", """
        import os, sys
        sys.stdout.write(open(os.environ["_hook_json"]).read())
    """)
    h.service.setup({"net1": NET1}, {}, {})
    state = h.ns.netlink().state()
    assert state.slaves_of("net1") == ["eth1"]
    [run] = h.runs("after_network_setup")
    assert json.loads(run.stdout) == {"request": {"networks": {"net1": NET1}, "bondings": {},
                                                  "options": {}}}
    assert not h.runs("after_network_setup_fail")
    assert h.store.running().networks["net1"].nic == "eth1"


def test_a_before_hook_that_adds_an_mtu_changes_what_is_applied(h: Harness) -> None:
    h.hook("before_network_setup", "10_mtu", """
        import json, os
        path = os.environ["_hook_json"]
        data = json.load(open(path))
        data["request"]["networks"]["net1"]["mtu"] = 1400
        json.dump(data, open(path, "w"))
    """)
    h.service.setup({"net1": NET1}, {}, {})
    state = h.ns.netlink().state()
    assert state.link("net1").mtu == 1400  # type: ignore[union-attr]
    assert state.link("eth1").mtu == 1400  # type: ignore[union-attr]


def test_a_vetoing_before_hook_leaves_the_namespace_unchanged(h: Harness) -> None:
    h.hook("before_network_setup", "10_no", """
        import sys
        sys.stderr.write("not on this host\\n")
        sys.exit(2)
    """)
    before = h.state()
    with pytest.raises(VdsmError) as e:
        h.service.setup({"net1": NET1}, {}, {})
    assert e.value.code == Code.HOOK_ERROR and "not on this host" in e.value.message
    assert h.state() == before
    assert h.store.running().networks == {}


def test_a_hook_cannot_sneak_in_a_malformed_request(h: Harness) -> None:
    h.hook("before_network_setup", "10_bad", """
        import json, os
        path = os.environ["_hook_json"]
        data = json.load(open(path))
        data["request"]["networks"]["net1"]["vlan"] = 5000
        json.dump(data, open(path, "w"))
    """)
    before = h.state()
    with pytest.raises(VdsmError, match=r"before_network_setup.*vlan: 5000 is out of range"):
        h.service.setup({"net1": NET1}, {}, {})
    assert h.state() == before


def test_a_failure_runs_the_fail_hook_and_names_the_step(h: Harness) -> None:
    h.hook("after_network_setup_fail", "10_seen", "print('failed')\n")
    h.ns.run("sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1")
    before = h.state()
    with pytest.raises(VdsmError, match="step 'add address fd00::2/64 to net1' failed"):
        h.service.setup({"net1": {**NET1, "ipv6addr": "fd00::2/64"}}, {}, {})
    assert h.state() == before
    assert [r.stdout for r in h.runs("after_network_setup_fail")] == ["failed\n"]
    assert not h.runs("after_network_setup")


def test_an_unknown_nic_is_refused_naming_the_network(h: Harness) -> None:
    with pytest.raises(VdsmError, match="network net1: nic eth7 does not exist on the host"):
        h.service.setup({"net1": {"nic": "eth7"}}, {}, {})


def test_network_custom_properties_are_checked_before_any_hook(h: Harness) -> None:
    h.props.set("UserDefinedNetworkCustomProperties", "bridge_opts=^[a-z_=0-9 ]+$")
    h.hook("before_network_setup", "10_seen", "print('ran')\n")
    with pytest.raises(VdsmError, match=r"network net1: .*bridge_opts") as e:
        h.service.setup({"net1": {**NET1, "custom": {"bridge_opts": "$(reboot)"}}}, {}, {})
    assert e.value.code == Code.GENERAL
    assert not h.runs("before_network_setup")
    with pytest.raises(VdsmError, match=r"network net1: .*nope"):
        h.service.setup({"net1": {**NET1, "custom": {"nope": "x"}}}, {}, {})
    h.service.setup({"net1": {**NET1, "custom": {"bridge_opts": "stp_state=0"}}}, {}, {})
    assert h.runs("before_network_setup")


def test_one_setup_at_a_time(h: Harness) -> None:
    h.hook("before_network_setup", "10_slow", """
        import time
        time.sleep(1.5)
    """)
    service = h.make(lock_wait=0.2)
    errors: list[Exception] = []

    def first() -> None:
        try:
            service.setup({"net1": NET1}, {}, {})
        except Exception as e:
            errors.append(e)

    t = threading.Thread(target=first)
    t.start()
    try:
        # Until the first holds the lock (its hook is running).
        deadline = time.monotonic() + 10
        while not service._lock.locked() and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(VdsmError, match="setupNetworks: a network setup is in progress"):
            service.setup({"net2": {"nic": "eth2"}}, {}, {})
    finally:
        t.join()  # before the namespace goes
    assert not errors
    assert h.ns.netlink().state().link("net2") is None


def test_connectivity_check_rolls_back_when_no_client_comes(h: Harness) -> None:
    before = h.state()
    with pytest.raises(VdsmError, match=r"connectivity check failed.*rolled back"):
        h.service.setup({"net1": NET1}, {},
                        {"connectivityCheck": True, "connectivityTimeout": 1})
    assert h.state() == before
    assert h.store.running().networks == {}


def test_connectivity_check_keeps_the_setup_when_a_client_comes(h: Harness) -> None:
    stop = threading.Event()

    def client() -> None:
        while not stop.wait(0.05):
            h.service.touch()

    t = threading.Thread(target=client)
    t.start()
    try:
        h.service.setup({"net1": NET1}, {},
                        {"connectivityCheck": "true", "connectivityTimeout": 30})
    finally:
        stop.set()
        t.join()
    assert h.ns.netlink().state().slaves_of("net1") == ["eth1"]


def test_an_unconfirmed_setup_is_rolled_back_at_the_next_start(h: Harness) -> None:
    h.service.setup({"safe": {"nic": "eth2", "ipaddr": "10.2.0.2", "prefix": 24}}, {}, {})
    h.service.set_safe()
    saved = h.state()
    h.service.setup({"net1": NET1, "safe": {"remove": True}}, {}, {})
    assert h.state() != saved
    h.make().restore()  # what the agent does when it starts
    assert h.state() == saved
    assert set(h.store.running().networks) == {"safe"}


def test_a_saved_setup_comes_back_after_the_kernel_lost_it(h: Harness) -> None:
    h.service.setup({"net1": {**NET1, "mtu": 1400}}, {}, {"commitOnSuccess": True})
    saved = h.state()
    nl = h.ns.netlink()
    nl.delete_link("net1")  # as after a reboot: the bridge is gone, the NIC released
    nl.set_mtu("eth1", 1500)
    h.make().restore()
    assert h.state() == saved


def test_stored_setups_are_written_atomically(h: Harness) -> None:
    h.service.setup({"net1": NET1}, {}, {})
    files = sorted(p.name for p in (h.dirs.state / "net").iterdir())
    assert files == ["running.json"]
    h.service.set_safe()
    assert sorted(p.name for p in (h.dirs.state / "net").iterdir()) == ["running.json", "safe.json"]
    assert json.loads((h.dirs.state / "net" / "safe.json").read_text())["networks"]["net1"]["nic"] \
        == "eth1"
