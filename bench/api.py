"""What the agent adds beyond libvirt and the protocol.

Side by side in one run, on test:///default:
  (a) direct libvirt-python calls,
  (b) a bare threaded XML-RPC server (stdlib, HTTP/1.1 keep-alive) that answers
      with canned replies of the same shape and size as the agent's (captured
      from the agent itself),
  (c) the agent (`hookvisor serve`, no hooks installed) through XML-RPC.
For create+destroy of N VMs and for getAllVmStats over M VMs the figure is
c / (a + b): 1.0 means the agent costs exactly libvirt plus the protocol.
For create+destroy (a) is a minimal domain; beside the figure, not in it, the
same with (a) doing the libvirt calls the agent makes (its hot-plug-ready
domain XML, the live XML read back), so that libvirt's share can be told apart.
With --floor-rounds (default 5), also beside it: the agent's time split into
transport, libvirt calls and its own verb work, by two cut-down agents
(bench/api_floor.py: only the libvirt calls; no libvirt either).
Rounds alternate a, b, c so that drift of the machine hits all three alike.
Twice: over plain TCP (the agent with --insecure on loopback), and over
mutual TLS with keep-alive (a lab PKI; the bare server over the same TLS).
The cost of one TLS handshake (a new client connection's first call, less a
call on a kept connection) is printed too.

On qemu:///system (when reachable), one real diskless guest start+destroy
through the agent over the same with direct libvirt: the direct guest is the
XML the agent builds for those params, without its metadata, and the two live
XMLs are compared so that a difference between the guests is said.

With --live-rounds (default 5), bench/live_ops.py: NIC plug+unplug, disk
plug+unplug and save+restore on the tiny booting guest, agent over libvirt.
With --hookpoint-rounds (default 3), bench/hookpoints.py: hotplugMemory,
setNumberOfCpus, setTicket, hostdevListByCaps against the same libvirt calls.

The last line is the worst ratio: `api_overhead_ratio=X.XX`.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

import libvirt

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Pki:
    """A lab PKI (hookvisor.pki): the agent's host certificate and a client's."""

    def __init__(self, root: Path) -> None:
        from hookvisor import pki

        self.root = root
        pki.init(root)
        client = pki.issue_client(root, root / "client", "bench")
        self.ca = root / "certs" / "cacert.pem"
        self.cert, self.key = client.cert, client.key

    def client_context(self) -> ssl.SSLContext:
        from hookvisor.rpc.client import client_tls_context

        return client_tls_context(self.ca, self.cert, self.key)


def make_proxy(port: int, tls: Pki | None) -> xmlrpc.client.ServerProxy:
    """A keep-alive client: plain HTTP, or mutual TLS with the lab's client certificate."""
    if tls is None:
        return xmlrpc.client.ServerProxy(f"http://127.0.0.1:{port}/", allow_none=True)
    from hookvisor.rpc.client import Address, proxy

    return proxy(Address(hostport=f"127.0.0.1:{port}"), tls=tls.client_context())


def wait_for(port: int, proc: subprocess.Popen[bytes], tls: Pki | None = None,
             verb: str = "getVdsStats") -> None:
    proxy = make_proxy(port, tls)
    for _ in range(300):
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            reply = getattr(proxy, verb)()
            if reply.get("status", {}).get("code") == 0:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("server did not come up")


def domain_xml(name: str, vm_id: str, dom_type: str) -> str:
    return (f"<domain type='{dom_type}'><name>{name}</name><uuid>{vm_id}</uuid>"
            "<memory unit='MiB'>64</memory><vcpu>1</vcpu>"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices/></domain>")


def agent_like_xml(name: str, vm_id: str, dom_type: str) -> str:
    """The XML the agent hands libvirt for create_params (no hooks), without its metadata.

    Built by the agent's own builder, so a device the agent adds from the params
    is in the direct guest too: both sides start the same guest.
    """
    from hookvisor.virt.domain_xml import build
    from hookvisor.virt.spec import VmSpec
    return build(VmSpec(vm_id, name, 64, 1), dom_type, platform.machine() or "x86_64")


def comparable(live: str) -> str:
    """A live domain XML without what differs between two starts of one guest."""
    live = re.sub(r"<metadata\b.*?</metadata>\s*", "", live, flags=re.S)
    live = re.sub(r"<(name|uuid)>[^<]*</\1>", "", live)
    live = re.sub(r" id='\d+'", "", live)
    return re.sub(r"<(label|imagelabel)>[^<]*</\1>", "", live)


def create_params(i: int, vm_id: str) -> dict[str, Any]:
    return {"vmId": vm_id, "vmName": f"bench-{i}", "memSize": 64, "smp": 1, "devices": []}


# -- (b) the bare server ------------------------------------------------------

class _ThreadedServer(ThreadingMixIn, SimpleXMLRPCServer):
    daemon_threads = True
    tls: ssl.SSLContext | None = None

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True)
        return sock, addr


class _QuietHandler(SimpleXMLRPCRequestHandler):
    # Keep-alive, as the agent: a client pays one connection (and handshake) in all.
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_bare(port: int, canned_file: str, pki_dir: str | None) -> None:
    """Answers each verb with the agent's own reply, so payloads match in size."""
    loaded: Any = xmlrpc.client.loads(Path(canned_file).read_text())[0][0]
    canned: dict[str, Any] = loaded
    server = _ThreadedServer(("127.0.0.1", port), requestHandler=_QuietHandler,
                             allow_none=True, logRequests=False)
    if pki_dir:
        # The agent's own server context: same protocol, ciphers and client check.
        from hookvisor.config import Settings
        from hookvisor.rpc.server import server_tls_context

        server.tls = server_tls_context(Settings(pki_dir=Path(pki_dir)))
    for verb, reply in canned.items():
        server.register_function((lambda r: lambda *a: r)(reply), verb)
    server.serve_forever()


# -- runs -------------------------------------------------------------------

def timed(func: Callable[[], None]) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


class Agent:
    """`hookvisor serve` on `uri`; `floor` runs it cut down by bench/api_floor.py."""

    def __init__(self, uri: str, tls: Pki | None = None,
                 extra: list[str] | None = None, floor: str | None = None) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="hv-bench-"))
        (self.tmp / "hooks").mkdir()
        self.port = free_port()
        self.tls = tls
        transport = ["--pki-dir", str(tls.root)] if tls else ["--insecure"]
        launch = (["-m", "hookvisor.cli.main"] if floor is None
                  else [str(ROOT / "bench" / "api_floor.py"), floor])
        # Settings come from the flags alone, not from a developer's environment.
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKVISOR_")}
        if floor is not None:
            env["PYTHONPATH"] = str(ROOT)  # a script: this checkout's code, as -m from ROOT
        self.proc = subprocess.Popen(
            [PYTHON, *launch, "serve", "--libvirt-uri", uri,
             "--listen", f"127.0.0.1:{self.port}", *transport,
             "--hooks-dir", str(self.tmp / "hooks"),
             "--state-dir", str(self.tmp / "state"), "--run-dir", str(self.tmp / "run"),
             *(extra or [])],
            stdout=subprocess.DEVNULL, stderr=open(self.tmp / "agent.log", "wb"),  # noqa: SIM115
            cwd=ROOT,
            env=env,
        )
        # `list` is gated: Done once recovery is over and VM verbs are served.
        wait_for(self.port, self.proc, tls, verb="list")
        self.proxy = make_proxy(self.port, tls)

    def call(self, verb: str, *args: Any) -> dict[str, Any]:
        reply: dict[str, Any] = getattr(self.proxy, verb)(*args)
        if reply["status"]["code"] != 0:
            raise SystemExit(f"agent {verb} failed: {reply['status']}")
        return reply

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


class Bare:
    def __init__(self, canned: dict[str, Any], tls: Pki | None = None) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="hv-bench-bare-"))
        path = self.tmp / "canned.xml"
        path.write_text(xmlrpc.client.dumps((canned,), allow_none=True))
        self.port = free_port()
        self.proc = subprocess.Popen([PYTHON, __file__, "--bare-server", str(self.port),
                                      str(path), str(tls.root) if tls else ""], cwd=ROOT)
        wait_for(self.port, self.proc, tls)
        self.proxy = make_proxy(self.port, tls)

    def call(self, verb: str, *args: Any) -> Any:
        return getattr(self.proxy, verb)(*args)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def pairs_through(call: Callable[..., Any], n: int) -> Callable[[], None]:
    """n create+destroy pairs through `call(verb, *args)` (an agent or the bare server)."""
    def run() -> None:
        for i in range(n):
            v = str(uuid.uuid4())
            call("create", create_params(i, v))
            call("destroy", v)
    return run


def pairs_direct(conn: libvirt.virConnect, n: int) -> Callable[[], None]:
    """n create+destroy pairs of a minimal domain, straight to libvirt."""
    def run() -> None:
        for i in range(n):
            conn.createXML(domain_xml(f"bench-d-{i}", str(uuid.uuid4()), "test")).destroy()
    return run


def bench_test_driver(n_create: int, n_stats: int, rounds: int,
                      tls: Pki | None = None) -> list[float]:
    conn = libvirt.open("test:///default")
    agent = Agent("test:///default", tls)
    try:
        # Capture the agent's replies, to make the bare server's payloads alike.
        vm_id = str(uuid.uuid4())
        create_reply = agent.call("create", create_params(0, vm_id))
        destroy_reply = agent.call("destroy", vm_id)
        # Populate M VMs in the agent and in direct libvirt for the stats figure.
        stats_ids = [str(uuid.uuid4()) for _ in range(n_stats)]
        for i, v in enumerate(stats_ids):
            agent.call("create", create_params(100_000 + i, v))
        stats_reply = agent.call("getAllVmStats")
        direct_doms = [conn.createXML(domain_xml(f"bench-stats-{i}", v, "test"))
                       for i, v in enumerate(stats_ids)]
        bare = Bare({"create": create_reply, "destroy": destroy_reply,
                     "getAllVmStats": stats_reply, "getVdsStats": {"status": {"code": 0}}},
                    tls)
        try:
            results: dict[str, list[float]] = {k: [] for k in
                                               ("ca", "cl", "cb", "cc", "sa", "sb", "sc")}

            def direct_like_create() -> None:
                # What the agent itself asks of libvirt per pair: its own domain
                # (hot-plug ready: maxMemory, a NUMA cell, ...), its live XML read
                # back, then destroy. Shown beside the ratio, not in it.
                for i in range(n_create):
                    v = str(uuid.uuid4())
                    dom = conn.createXML(agent_like_xml(f"bench-l-{i}", v, "test"))
                    dom.XMLDesc(0)
                    dom.destroy()

            direct_create = pairs_direct(conn, n_create)
            bare_create = pairs_through(bare.call, n_create)
            agent_create = pairs_through(agent.call, n_create)

            def direct_stats() -> None:
                conn.getAllDomainStats()

            def bare_stats() -> None:
                bare.proxy.getAllVmStats()

            def agent_stats() -> None:
                agent.call("getAllVmStats")

            for _ in range(rounds):
                results["ca"].append(timed(direct_create))
                results["cl"].append(timed(direct_like_create))
                results["cb"].append(timed(bare_create))
                results["cc"].append(timed(agent_create))
                for _ in range(5):
                    results["sa"].append(timed(direct_stats))
                    results["sb"].append(timed(bare_stats))
                    results["sc"].append(timed(agent_stats))
        finally:
            bare.close()
        for d in direct_doms:
            d.destroy()
    finally:
        agent.close()
        conn.close()
    med = {k: statistics.median(v) for k, v in results.items()}
    create_ratio = med["cc"] / (med["ca"] + med["cb"])
    stats_ratio = med["sc"] / (med["sa"] + med["sb"])
    over = "mutual TLS" if tls else "plain TCP"
    print(f"[{over}] create+destroy x{n_create}: libvirt {med['ca']*1000:.1f} ms, "
          f"bare xmlrpc {med['cb']*1000:.1f} ms, agent {med['cc']*1000:.1f} ms "
          f"-> ratio {create_ratio:.2f}")
    print(f"[{over}]   (the same with libvirt doing the agent's own calls, its domain XML "
          f"and the live XML read back: libvirt {med['cl']*1000:.1f} ms -> ratio "
          f"{med['cc'] / (med['cl'] + med['cb']):.2f}; not the figure above)")
    print(f"[{over}] getAllVmStats over {n_stats} VMs: libvirt {med['sa']*1000:.1f} ms, "
          f"bare xmlrpc {med['sb']*1000:.1f} ms, agent {med['sc']*1000:.1f} ms "
          f"-> ratio {stats_ratio:.2f}")
    return [create_ratio, stats_ratio]


def bench_floor(n_create: int, rounds: int) -> None:
    """Where the agent's create+destroy time goes, over plain TCP: beside the figure.

    Beside the agent itself, two cut-down agents (bench/api_floor.py) on the same
    server: one that only makes the libvirt calls, one that makes none. Their
    differences split the agent's time into transport, libvirt and verb work, and
    the cut-down ones say what ratio an agent doing no work of its own would get.
    """
    conn = libvirt.open("test:///default")
    agents: dict[str, Agent] = {}
    try:
        for name, floor in (("agent", None), ("libvirt only", "libvirt"),
                            ("transport only", "transport")):
            agents[name] = Agent("test:///default", floor=floor)
        replies = {}
        for agent in agents.values():  # each one's first pair is real: its canned replies
            vm_id = str(uuid.uuid4())
            replies["create"] = agent.call("create", create_params(0, vm_id))
            replies["destroy"] = agent.call("destroy", vm_id)
        bare = Bare({**replies, "getVdsStats": {"status": {"code": 0}}})

        runs: dict[str, Callable[[], None]] = {
            "direct": pairs_direct(conn, n_create),
            "bare": pairs_through(bare.call, n_create),
            **{name: pairs_through(agent.call, n_create) for name, agent in agents.items()},
        }
        try:
            times: dict[str, list[float]] = {name: [] for name in runs}
            for r in range(rounds):
                # Each round in the other order: drift of the machine hits all alike.
                for name in (list(runs) if r % 2 == 0 else list(reversed(runs))):
                    times[name].append(timed(runs[name]))
        finally:
            bare.close()
    finally:
        for agent in agents.values():
            agent.close()
        conn.close()
    us = {name: statistics.median(t) / n_create * 1e6 for name, t in times.items()}
    base = us["direct"] + us["bare"]
    print(f"[plain TCP] where the agent's create+destroy goes, per pair: "
          f"{us['agent']:.0f} us = transport {us['transport only']:.0f} "
          f"(bare server {us['bare']:.0f}) + libvirt calls "
          f"{us['libvirt only'] - us['transport only']:.0f} (direct {us['direct']:.0f}) "
          f"+ verb work {us['agent'] - us['libvirt only']:.0f}")
    print(f"[plain TCP]   an agent doing only the libvirt calls: ratio "
          f"{us['libvirt only'] / base:.2f}; no libvirt either: {us['transport only'] / base:.2f}; "
          f"the agent in this run: {us['agent'] / base:.2f} (not the figure above)")


def bench_handshake(tls: Pki, n: int = 100) -> None:
    """One TLS handshake: a new connection's first call, less a call on a kept one."""
    agent = Agent("test:///default", tls)
    try:
        kept = make_proxy(agent.port, tls)
        kept.getVdsStats()
        ctx = tls.client_context()
        from hookvisor.rpc.client import Address, proxy

        def fresh() -> None:
            for _ in range(n):
                p = proxy(Address(hostport=f"127.0.0.1:{agent.port}"), tls=ctx)
                p.getVdsStats()
                p("close")()

        def reuse() -> None:
            for _ in range(n):
                kept.getVdsStats()

        new = statistics.median(timed(fresh) for _ in range(3)) / n
        old = statistics.median(timed(reuse) for _ in range(3)) / n
    finally:
        agent.close()
    print(f"TLS handshake (mutual, EC P-256): {(new - old)*1000:.2f} ms per connection "
          f"(first call {new*1000:.2f} ms, call on a kept connection {old*1000:.2f} ms)")


def qemu_reachable() -> bool:
    try:
        libvirt.open("qemu:///system").close()
        return True
    except libvirt.libvirtError:
        return False


def bench_qemu(rounds: int) -> list[float]:
    conn = libvirt.open("qemu:///system")
    agent = Agent("qemu:///system")
    dom_type = "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "qemu"
    direct: list[float] = []
    through: list[float] = []
    lives: dict[str, str] = {}

    def run_direct(i: int) -> None:
        v = str(uuid.uuid4())
        xml = agent_like_xml(f"hvbench-direct-{i}", v, dom_type)
        start = time.perf_counter()
        dom = conn.createXML(xml)
        direct.append(time.perf_counter() - start)
        lives.setdefault("direct", dom.XMLDesc(0))
        dom.destroy()

    def run_agent(i: int) -> None:
        v = str(uuid.uuid4())
        start = time.perf_counter()
        agent.call("create", {**create_params(i, v), "vmName": f"hvbench-agent-{i}"})
        through.append(time.perf_counter() - start)
        if "agent" not in lives:
            lives["agent"] = conn.lookupByUUIDString(v).XMLDesc(0)
        agent.call("destroy", v)

    try:
        for i in range(rounds):
            # Each side goes first every other round: what a destroy leaves
            # libvirtd doing weighs on both alike.
            for run in ((run_direct, run_agent) if i % 2 == 0 else (run_agent, run_direct)):
                run(i)
    finally:
        agent.close()
        conn.close()
    if comparable(lives.get("direct", "")) != comparable(lives.get("agent", "")):
        print("note: the agent's guest and the direct one differ beyond name, uuid and "
              "metadata; the qemu figure compares unlike guests")
    ratio = statistics.median(through) / statistics.median(direct)
    print(f"qemu:///system guest start: libvirt {statistics.median(direct)*1000:.0f} ms, "
          f"agent {statistics.median(through)*1000:.0f} ms -> ratio {ratio:.2f}")
    return [ratio]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bare-server", nargs=3, metavar=("PORT", "CANNED", "PKI"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--create", type=int, default=200, help="VMs created+destroyed")
    parser.add_argument("--stats-vms", type=int, default=1000, help="VMs for getAllVmStats")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--floor-rounds", type=int, default=5,
                        help="rounds of the create+destroy breakdown (bench/api_floor.py); "
                        "0 skips it")
    parser.add_argument("--qemu-rounds", type=int, default=5)
    parser.add_argument("--live-rounds", type=int, default=5,
                        help="rounds of NIC/disk plug+unplug and save+restore on the tiny "
                        "guest (bench/live_ops.py); 0 skips them")
    parser.add_argument("--hookpoint-rounds", type=int, default=3,
                        help="rounds of hotplugMemory, setNumberOfCpus, setTicket and "
                        "hostdevListByCaps on the tiny guest (bench/hookpoints.py); 0 skips")
    args = parser.parse_args()
    if args.bare_server:
        serve_bare(int(args.bare_server[0]), args.bare_server[1], args.bare_server[2] or None)
        return
    ratios = bench_test_driver(args.create, args.stats_vms, args.rounds)
    if args.floor_rounds > 0:
        bench_floor(args.create, args.floor_rounds)
    pki_root = Path(tempfile.mkdtemp(prefix="hv-bench-pki-"))
    try:
        tls = Pki(pki_root)
        ratios += bench_test_driver(args.create, args.stats_vms, args.rounds, tls)
        bench_handshake(tls)
    finally:
        shutil.rmtree(pki_root, ignore_errors=True)
    if args.qemu_rounds > 0 and qemu_reachable():
        ratios += bench_qemu(args.qemu_rounds)
    if args.live_rounds > 0 and qemu_reachable():
        from live_ops import bench_live

        ratios += bench_live(args.live_rounds, lambda extra: Agent("qemu:///system", extra=extra))
    if args.hookpoint_rounds > 0 and qemu_reachable():
        from hookpoints import bench_hookpoints

        ratios += bench_hookpoints(args.hookpoint_rounds,
                                   lambda extra: Agent("qemu:///system", extra=extra))
    else:
        print("qemu:///system not reachable or --qemu-rounds 0: real-guest figure not measured")
    print(f"api_overhead_ratio={max(ratios):.2f}")


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
