"""Losing libvirtd and getting it back, with a real remote connection cut for real.

The agent talks to libvirtd's test driver (`test+unix:///default`) through a
Unix-socket relay this test owns: cutting the relay closes the connection the
way a dying libvirtd does (EOF on the socket, libvirt's close callback), and
reconnects fail until the relay listens again. The shared libvirtd itself is
never touched here (tests/agent/test_qemu_reconnect.py restarts it).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from pathlib import Path
from typing import Any

import libvirt
import pytest
from support import SESSION_PREFIX, wait_for

from hookvisor.agent.core import Agent
from hookvisor.agent.hookcalls import HookCalls
from hookvisor.agent.lifecycle import metadata_of
from hookvisor.agent.vm import Vm
from hookvisor.errors import Code, VdsmError
from hookvisor.hooks.runner import HookRunner, RunnerConfig
from hookvisor.props.registry import PropertyRegistry
from hookvisor.virt import domain_xml as dx
from hookvisor.virt.host import EVENT_STOPPED, Host, HostError
from hookvisor.virt.spec import VmSpec

pytestmark = pytest.mark.libvirtd

LIBVIRT_SOCK = "/run/libvirt/libvirt-sock"


class Relay:
    """Unix socket -> libvirtd's socket, byte for byte; cut() drops every connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.listen()

    def listen(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(LIBVIRT_SOCK)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Refuse new connections and close the open ones, both ends."""
        assert self._listener is not None
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._listener = None
        self.path.unlink()
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        if self._listener is not None:
            self.cut()


@pytest.fixture
def relay(tmp_path: Path) -> Any:
    """A relay to the system libvirtd (needs it: skipped, or failed under CI=true).

    Not the qemu_system fixture: nothing runs on qemu:///system here, and its
    leak guard would sweep the guests of tests running beside this one.
    """
    try:
        libvirt.open(f"test+unix:///default?socket={LIBVIRT_SOCK}").close()
    except libvirt.libvirtError as e:
        message = f"libvirtd not reachable (scripts/libvirtd.sh start): {e}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    r = Relay(tmp_path / "relay.sock")
    yield r
    r.close()


def uri_of(relay: Relay) -> str:
    return f"test+unix:///default?socket={relay.path}"


def start_domain(conn: Any, name: str, vm: Vm | None = None) -> str:
    """A running test-driver domain (with the agent's metadata when `vm` is given)."""
    vm_id = vm.vm_id if vm is not None else str(uuid.uuid4())
    xml = dx.build(VmSpec(vm_id, name, 64, 1), "test", "x86_64",
                   metadata_of(vm) if vm is not None else None)
    conn.createXML(xml, 0)
    return vm_id


def cleanup(uri: str) -> None:
    conn = libvirt.open(uri)
    try:
        for dom in conn.listAllDomains():
            if dom.name().startswith(SESSION_PREFIX):
                with contextlib.suppress(libvirt.libvirtError):
                    dom.destroy()
    finally:
        conn.close()


def test_host_reconnects_and_keeps_its_event_callbacks(relay: Relay) -> None:
    changes: list[bool] = []
    stopped = threading.Event()
    host = Host(uri_of(relay), reconnect_min=0.05, reconnect_max=0.2)
    host.on_connection(changes.append)
    vm_id = str(uuid.uuid4())
    host.on_lifecycle(lambda uid, event, _d: uid == vm_id and event == EVENT_STOPPED
                      and stopped.set())  # type: ignore[func-returns-value]
    try:
        assert host.connection().connected
        assert host.driver.lower() == "test"
        relay.cut()
        # At once, whether or not the close callback has run yet: a call on the
        # dead connection is a HostError that says so.
        with pytest.raises(HostError) as err:
            host.active_domains()
        assert err.value.disconnected and "lost" in str(err.value)
        wait_for(lambda: not host.connected)
        state = host.connection()
        assert not state.connected and state.cause and state.reconnects == 0
        with pytest.raises(HostError) as err:
            host.active_domains()
        assert err.value.disconnected
        assert f"libvirt connection to {host.uri} lost" in str(err.value)
        assert str(err.value).endswith("reconnecting")
        # Reconnect attempts fail while the relay is down, and say why.
        wait_for(lambda: host.connection().last_error != state.cause)
        assert not host.connected
        relay.listen()
        wait_for(lambda: host.connected)
        assert host.connection().reconnects == 1
        assert changes == [False, True]
        # The lifecycle callback was registered again on the new connection.
        xml = dx.build(VmSpec(vm_id, f"{SESSION_PREFIX}reconnect", 64, 1), host.domain_type)
        host.start(xml, paused=False, uuid=vm_id)
        host.destroy(vm_id)
        assert stopped.wait(10)
    finally:
        host.close()
        cleanup(f"test+unix:///default?socket={LIBVIRT_SOCK}")


def test_close_stops_a_reconnect_loop(relay: Relay) -> None:
    host = Host(uri_of(relay), reconnect_min=30, reconnect_max=60)
    relay.cut()
    wait_for(lambda: not host.connected)
    # The loop sleeps 30 s before its next attempt: close() must not wait for it.
    closed = threading.Thread(target=host.close)
    closed.start()
    closed.join(10)
    assert not closed.is_alive()


def test_sigterm_while_reconnecting(relay: Relay, dirs: Any, serve_process: Any) -> None:
    dirs.hook("after_vdsm_stop", "50_mark", f"touch {dirs.root}/stopped\n")
    config = dirs.root / "hookvisor.toml"
    config.write_text("reconnect_min = 300\nreconnect_max = 600\n")
    agent = serve_process(uri_of(relay), ["--config", str(config)])
    relay.cut()
    wait_for(lambda: agent.api.getVdsStats()["info"]["libvirt"]["connected"] is False)
    assert agent.api.list()["status"]["code"] == Code.UNAVAIL
    # A loop that did not wait on the stop would sleep 300 s: far past this guard.
    assert agent.stop(timeout=60) == 0
    assert (dirs.root / "stopped").exists()


@pytest.fixture
def agent_on(relay: Relay, dirs: Any) -> Any:
    dirs.hook("after_vm_destroy", "50_log", f'echo "$vmId" >> {dirs.root}/destroyed.log\n')
    runner = HookRunner(RunnerConfig(hooks_dir=dirs.hooks, run_dir=dirs.run))
    props = PropertyRegistry(dirs.state / "properties.sqlite", "4.8")
    host = Host(uri_of(relay), reconnect_min=0.05, reconnect_max=0.2)
    agent = Agent(host, HookCalls(runner), props, dirs.run, "4.8")
    agent.recover()
    yield agent
    agent.close()
    props.close()
    cleanup(f"test+unix:///default?socket={LIBVIRT_SOCK}")


def vm_params(name: str) -> dict[str, Any]:
    return {"vmId": str(uuid.uuid4()), "vmName": f"{SESSION_PREFIX}{name}-{uuid.uuid4().hex[:6]}",
            "memSize": 64, "smp": 1}


def test_agent_gates_verbs_then_reconciles(agent_on: Agent, relay: Relay, dirs: Any) -> None:
    agent = agent_on
    direct = libvirt.open(f"test+unix:///default?socket={LIBVIRT_SOCK}")
    try:
        dies, lives = vm_params("dies"), vm_params("lives")
        agent.create(dies)
        agent.create(lives)
        agent.pause(lives["vmId"])
        relay.cut()
        wait_for(lambda: not agent.ctx.host.connected)
        with pytest.raises(VdsmError) as err:
            agent.check_ready()
        assert err.value.code == Code.UNAVAIL
        assert f"libvirt connection to {agent.ctx.host.uri} lost" in err.value.message
        info = agent.get_vds_stats()["libvirt"]
        assert info["connected"] is False and info["cause"]
        # Behind the agent's back: one VM dies, one is resumed, one of ours appears.
        direct.lookupByUUIDString(dies["vmId"]).destroy()
        direct.lookupByUUIDString(lives["vmId"]).resume()
        orphan = Vm(str(uuid.uuid4()), f"{SESSION_PREFIX}orphan", {"memSize": 64}, {"tag": "x"}, {})
        start_domain(direct, orphan.name, orphan)
        relay.listen()
        wait_for(lambda: _ready(agent))
        by_id = {v["vmId"]: v for v in agent.list_vms(True)}
        assert by_id[dies["vmId"]]["status"] == "Down"
        assert "libvirt connection was lost" in by_id[dies["vmId"]]["exitMessage"]
        assert by_id[lives["vmId"]]["status"] == "Up"
        assert by_id[orphan.vm_id]["status"] == "Up"
        assert by_id[orphan.vm_id]["custom"] == {"tag": "x"}
        log = (dirs.root / "destroyed.log").read_text().split()
        assert log == [dies["vmId"]]
        stats = agent.get_vds_stats()["libvirt"]
        assert stats["connected"] is True and stats["reconnects"] == 1
        for vm_id in (dies["vmId"], lives["vmId"], orphan.vm_id):
            agent.destroy(vm_id)
        # A Down VM's destroy runs no hook again: still exactly once.
        log = (dirs.root / "destroyed.log").read_text().split()
        assert log.count(dies["vmId"]) == 1
        assert sorted(log) == sorted([dies["vmId"], lives["vmId"], orphan.vm_id])
    finally:
        direct.close()


def test_stats_during_the_loss_are_unavail_not_unexpected(agent_on: Agent,
                                                          relay: Relay) -> None:
    agent = agent_on
    agent.create(vm_params("stats"))
    relay.cut()
    wait_for(lambda: not agent.ctx.host.connected)
    for call in (agent.get_all_vm_stats, agent.get_vds_capabilities):
        with pytest.raises(VdsmError) as err:
            call()
        assert err.value.code == Code.UNAVAIL, call
        assert "lost" in err.value.message
    relay.listen()
    wait_for(lambda: _ready(agent))
    assert len(agent.get_all_vm_stats()) == 1
    assert agent.get_vds_capabilities()["driver"].lower() == "test"
    for vm in agent.list_vms():
        agent.destroy(vm["vmId"])


def _ready(agent: Agent) -> bool:
    try:
        agent.check_ready()
    except VdsmError:
        return False
    return True
