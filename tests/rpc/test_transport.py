"""The transport end to end, as an attacker and a careless client: a served agent,
real clients over mutual TLS and the Unix socket."""

from __future__ import annotations

import grp
import http.client
import os
import pwd
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
import xmlrpc.client
from pathlib import Path
from typing import Any

import pytest
from labpki import lab_pki, proxy

from hookvisor import pki
from hookvisor.rpc import unixsock
from hookvisor.rpc.client import (
    Address,
    AgentClient,
    AgentError,
    client_tls_context,
)
from hookvisor.rpc.client import proxy as make_proxy
from hookvisor.rpc.server import PeerPolicy

AgentProcess = Any  # tests/conftest.py's served agent (conftest is not importable by name)

CALL = (b"<?xml version='1.0'?><methodCall><methodName>%s</methodName>"
        b"<params>%s</params></methodCall>")


def call_body(method: bytes, *values: bytes) -> bytes:
    return CALL % (method, b"".join(b"<param><value>%s</value></param>" % v for v in values))


def post(agent: AgentProcess, body: bytes, headers: dict[str, str] | None = None,
         ) -> tuple[int, str, bytes]:
    """One raw POST over the agent's Unix socket: (HTTP status, reason, body)."""
    conn = http.client.HTTPConnection("localhost", timeout=60)
    conn.sock = unixsock.connect(agent.socket, 60)
    try:
        conn.request("POST", "/RPC2", body, {"Content-Type": "text/xml", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.reason, resp.read()
    finally:
        conn.close()


def reply_of(data: bytes) -> dict[str, Any]:
    reply: dict[str, Any] = xmlrpc.client.loads(data)[0][0]
    return reply


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def need_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI runs as root: this test must run")
        pytest.skip("needs root (fork + setuid to nobody)")


@pytest.fixture
def agent(serve_process: Any) -> AgentProcess:
    started: AgentProcess = serve_process()
    return started


# -- mutual TLS -------------------------------------------------------------------

def test_tls_without_a_client_certificate_is_refused(agent: AgentProcess) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(lab_pki().ca_cert))
    client = AgentClient(Address(hostport=f"127.0.0.1:{agent.port}"), tls=ctx)
    with pytest.raises(AgentError, match=r"TLS handshake refused by 127\.0\.0\.1"):
        client.call("list")
    assert "TLS handshake refused from 127.0.0.1" in agent.log()
    # A client with the lab's certificate is served on the same port.
    assert proxy(agent.tls_url).list()["status"]["code"] == 0


def test_tls_certificate_of_another_ca_is_refused(agent: AgentProcess, tmp_path: Path) -> None:
    pki.init(tmp_path / "other")
    foreign = pki.issue_client(tmp_path / "other", tmp_path / "mallory", "mallory")
    # The client trusts the agent's CA, but presents a certificate of its own CA.
    ctx = client_tls_context(lab_pki().ca_cert, foreign.cert, foreign.key)
    client = AgentClient(Address(hostport=f"127.0.0.1:{agent.port}"), tls=ctx)
    with pytest.raises(AgentError, match="TLS handshake refused"):
        client.call("list")
    assert "certificate" in agent.log().split("TLS handshake refused from")[-1].lower()


def test_tls_client_refuses_an_agent_of_another_ca(agent: AgentProcess, tmp_path: Path) -> None:
    pki.init(tmp_path / "other")
    mine = pki.issue_client(tmp_path / "other", tmp_path / "me", "me")
    ctx = client_tls_context(tmp_path / "other" / "certs" / "cacert.pem", mine.cert, mine.key)
    client = AgentClient(Address(hostport=f"127.0.0.1:{agent.port}"), tls=ctx)
    with pytest.raises(AgentError, match="the agent's certificate"):
        client.call("list")


def test_tls_keep_alive_pays_one_handshake(agent: AgentProcess) -> None:
    before = agent.log().count("TLS client 127.0.0.1")
    api = proxy(agent.tls_url)
    for _ in range(50):
        assert api.getVdsStats()["status"]["code"] == 0
    assert agent.log().count("TLS client 127.0.0.1") - before == 1


def test_tls_by_the_vm_client(agent: AgentProcess, tmp_path: Path) -> None:
    # `hookvisor vm --agent` presents the host certificate of its pki dir, as on a host.
    out = subprocess.run([sys.executable, "-m", "hookvisor", "vm", "--agent",
                          f"127.0.0.1:{agent.port}", "--pki-dir", str(lab_pki().root),
                          "list", "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    # An operator's own client certificate, as `hookvisor pki issue` made it.
    lab = lab_pki()
    out = subprocess.run([sys.executable, "-m", "hookvisor", "vm", "--agent",
                          f"127.0.0.1:{agent.port}", "--pki-dir", str(lab.root),
                          "--cert", str(lab.client_cert), "--key", str(lab.client_key),
                          "list", "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    pki.init(tmp_path / "other")
    out = subprocess.run([sys.executable, "-m", "hookvisor", "vm", "--agent",
                          f"127.0.0.1:{agent.port}", "--pki-dir", str(tmp_path / "other"),
                          "list"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.startswith("hookvisor: TLS handshake") and out.stderr.count("\n") == 1


def test_plain_http_on_the_tls_port_gets_nothing(agent: AgentProcess) -> None:
    api = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{agent.port}/", allow_none=True)
    with pytest.raises((OSError, xmlrpc.client.ProtocolError, http.client.HTTPException)):
        api.list()


def test_insecure_warns_and_names_what_it_exposes(serve_process: Any) -> None:
    agent = serve_process(extra=["--insecure"])
    api = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{agent.port}/", allow_none=True)
    assert api.list()["status"]["code"] == 0
    assert (f"any client that reaches 127.0.0.1:{agent.port} can run any domain as root"
            in agent.log())


def test_empty_listen_serves_the_socket_only(serve_process: Any) -> None:
    agent = serve_process(extra=["--listen", ""])
    assert agent.api.list()["status"]["code"] == 0
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.connect(("127.0.0.1", agent.port))


def test_a_missing_pki_stops_the_start_with_one_line(dirs: Any, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hookvisor.cli.main", "serve", "--listen", "127.0.0.1:0",
         "--pki-dir", str(tmp_path / "nopki"), "--hooks-dir", str(dirs.hooks),
         "--state-dir", str(dirs.state), "--run-dir", str(dirs.run)],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "hookvisor pki init" in proc.stderr and "Traceback" not in proc.stderr


# -- the Unix socket ---------------------------------------------------------------

def _as_nobody(agent: AgentProcess) -> tuple[str, str]:
    """Connect and call `list` from a child that is `nobody`; (outcome, detail)."""
    nobody = pwd.getpwnam("nobody")
    run_fd = os.open(agent.socket.parent, os.O_PATH | os.O_DIRECTORY)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(20)
            try:
                # Through the directory fd: the test's tmp dirs are private to root.
                sock.connect(f"/proc/self/fd/{run_fd}/{agent.socket.name}")
            except OSError as e:
                os.write(w, f"connect {e.errno}".encode())
                os._exit(0)
            conn = http.client.HTTPConnection("localhost", timeout=20)
            conn.sock = sock
            try:
                conn.request("POST", "/RPC2", xmlrpc.client.dumps((), "list").encode())
                resp = conn.getresponse()
                os.write(w, f"http {resp.status} {resp.reason}".encode())
            except OSError as e:
                os.write(w, f"closed {e}".encode())
        finally:
            os._exit(0)
    os.close(w)
    os.close(run_fd)
    try:
        out = b""
        while chunk := os.read(r, 4096):
            out += chunk
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    outcome, _, detail = out.decode().partition(" ")
    return outcome, detail


def test_socket_refuses_a_user_neither_root_nor_in_the_group(agent: AgentProcess) -> None:
    need_root()
    # The socket file is 0660: nobody cannot even connect.
    assert agent.socket.stat().st_mode & 0o777 == 0o660
    os.chmod(agent.socket.parent, 0o711)
    assert _as_nobody(agent) == ("connect", "13")
    # Even if its mode let everyone connect, the peer's credentials are checked.
    os.chmod(agent.socket, 0o666)
    outcome, detail = _as_nobody(agent)
    assert outcome == "http" and detail.startswith("403"), detail
    assert "not root and not in group 'hookvisor-api'" in detail
    assert "refused local client" in agent.log() and "uid 65534" in agent.log()
    # Root is served on the same socket.
    assert agent.api.list()["status"]["code"] == 0


def test_socket_serves_a_member_of_the_api_group_but_never_the_hook_user(
        dirs: Any, serve_process: Any) -> None:
    need_root()
    # nobody's group is nogroup: made the API group, nobody is a member.
    config = dirs.root / "hv.toml"
    config.write_text('api_group = "nogroup"\n')
    agent = serve_process(extra=["--config", str(config)])
    assert agent.socket.stat().st_gid == grp.getgrnam("nogroup").gr_gid
    os.chmod(agent.socket.parent, 0o711)
    outcome, detail = _as_nobody(agent)
    assert (outcome, detail) == ("http", "200 OK")
    agent.stop()
    # The same member, made the hook user: refused (a hook must not drive the API).
    config.write_text('api_group = "nogroup"\nhook_user = "nobody"\n')
    agent = serve_process(extra=["--config", str(config)])
    os.chmod(agent.socket.parent, 0o711)
    outcome, detail = _as_nobody(agent)
    assert outcome == "http" and detail.startswith("403"), detail
    assert "is the hook user 'nobody'" in detail


def test_peer_policy_from_the_user_database() -> None:
    nobody = pwd.getpwnam("nobody").pw_uid
    assert PeerPolicy("nogroup", "hookvisor").refusal(nobody) is None
    assert PeerPolicy("hookvisor-api-none", "hookvisor").refusal(nobody) is not None
    assert "hook user" in (PeerPolicy("nogroup", "nobody").refusal(nobody) or "")
    assert PeerPolicy("nogroup", "nobody").refusal(0) is None
    assert PeerPolicy("none-such", "hookvisor").refusal(os.geteuid()) is None


def test_socket_serves_root_and_keeps_the_connection(agent: AgentProcess) -> None:
    api = agent.api
    for _ in range(20):
        assert api.list()["status"]["code"] == 0


def test_vm_client_without_an_agent_is_one_line(tmp_path: Path) -> None:
    sock = tmp_path / "none.sock"
    out = subprocess.run([sys.executable, "-m", "hookvisor", "vm", "--socket", str(sock),
                          "list"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr == f"hookvisor: cannot reach the agent at {sock}: " \
                         "[Errno 2] No such file or directory\n"


# -- bounds on what a client sends ---------------------------------------------------

def test_body_over_the_limit_is_413_unread_and_the_agent_serves_on(
        agent: AgentProcess) -> None:
    limit = 8 * 1024 * 1024
    sock = unixsock.connect(agent.socket, 30)
    with sock:
        # Says 1 GB is coming, sends none of it: the answer comes at once.
        sock.sendall(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % 2**30)
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"max_request_bytes=%d" % limit in head
    status, _, _ = post(agent, b"x" * (limit + 1))
    assert status == 413
    assert agent.api.list()["status"]["code"] == 0


@pytest.mark.parametrize(("headers", "code"), [
    ({"Content-Length": "abc"}, 400),
    ({"Transfer-Encoding": "chunked"}, 411),
    ({"Content-Encoding": "gzip"}, 415),
])
def test_bad_http_is_refused(agent: AgentProcess, headers: dict[str, str], code: int) -> None:
    sock = unixsock.connect(agent.socket, 30)
    with sock:
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        if "Content-Length" not in headers:
            lines += "Content-Length: 4\r\n" if "Transfer" not in lines else ""
        sock.sendall(f"POST /RPC2 HTTP/1.1\r\nHost: x\r\n{lines}\r\nabcd".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 %d " % code)
    for raw in (b"GET / HTTP/1.1\r\n\r\n", b"garbage\r\n\r\n", b"POST /RPC2 HTTP/1.1\r\n\r\n"):
        sock = unixsock.connect(agent.socket, 30)
        with sock:
            sock.sendall(raw)
            assert sock.recv(4096)[:12] in (b"HTTP/1.1 405", b"HTTP/1.1 400", b"HTTP/1.1 411")
    assert agent.api.list()["status"]["code"] == 0


@pytest.mark.parametrize(("body", "named"), [
    (call_body(b"list", b"<array><data><value>" * 5000 + b"</value></data></array>" * 5000),
     "nested deeper than max_nesting=32"),
    (call_body(b"getVmStats", b"<i8>" + b"9" * 100_000 + b"</i8>"),
     "integer of 100000 digits, more than max_int_digits=20"),
    (call_body(b"getVmStats", b"<int>" + b"9" * 5000 + b"</int>"),
     "integer of 5000 digits"),
    (call_body(b"create", b"<struct><member><name>vmId</name><value><string>"
               + b"a" * (5 * 1024 * 1024) + b"</string></value></member></struct>"),
     "params[0].vmId: string longer than max_string_bytes"),
    (call_body(b"list", b"<boolean>maybe</boolean>"), "<boolean> must be 0 or 1"),
    (b"<?xml version='1.0'?><!DOCTYPE a [<!ENTITY x 'xx'>]><methodCall/>", "DOCTYPE"),
    (b"\x00\xff not xml", "malformed XML"),
    (call_body(b"list", b"<foo/>"), "unknown element <foo>"),
])
def test_malformed_and_oversized_values_get_a_vdsm_error(agent: AgentProcess, body: bytes,
                                                       named: str) -> None:
    status, _, data = post(agent, body)
    assert status == 200
    reply = reply_of(data)  # a methodResponse, never a Fault
    assert reply["status"]["code"] == 100
    assert named in reply["status"]["message"]
    assert "Traceback" not in reply["status"]["message"]
    assert len(data) < 10_000
    assert agent.api.list()["status"]["code"] == 0


def test_a_huge_value_is_not_echoed_whole(agent: AgentProcess) -> None:
    # 100 MB: refused before it is read.
    with pytest.raises((xmlrpc.client.ProtocolError, OSError)) as caught:
        proxy(agent.url).getVmStats("v" * 100 * 1024 * 1024)
    if isinstance(caught.value, xmlrpc.client.ProtocolError):
        assert caught.value.errcode == 413
    # 3 MB, under every bound: whatever the verb says about it stays small.
    big = "v" * 3 * 1024 * 1024
    for verb in ("getVmStats", "destroy", "getHookRuns", "nosuchverb"):
        status, _, data = post(agent, xmlrpc.client.dumps((big,), verb).encode())
        assert status == 200
        assert reply_of(data)["status"]["code"] != 0
        assert len(data) < 100_000, verb
    assert agent.api.list()["status"]["code"] == 0


def test_agent_memory_stays_bounded_under_oversized_bodies(agent: AgentProcess) -> None:
    pid = agent.proc.pid
    baseline = rss_kib(pid)
    peak = baseline
    chunk = b"<" * (1024 * 1024)
    for _ in range(20):
        sock = unixsock.connect(agent.socket, 30)
        with sock:
            try:
                sock.sendall(b"POST /RPC2 HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (50 << 20))
                for _ in range(50):
                    sock.sendall(chunk)
                    peak = max(peak, rss_kib(pid))
            except OSError:
                pass  # refused: the agent stopped reading
        peak = max(peak, rss_kib(pid))
    assert peak - baseline < 64 * 1024, (baseline, peak)
    assert agent.api.list()["status"]["code"] == 0


# -- replies are valid XML whatever a hook writes ------------------------------------

def test_ansi_and_nul_from_a_hook_leave_replies_parseable(dirs: Any,
                                                          serve_process: Any) -> None:
    dirs.hook("before_vm_start", "50_ansi", r"printf '\033[31m\000\001red\n' >&2; exit 1")
    agent = serve_process()
    api = agent.api
    vm_id = str(uuid.uuid4())
    created = api.create({"vmId": vm_id, "vmName": "hvtest-ansi", "memSize": 64})
    assert "status" in created
    runs = api.getHookRuns({})
    assert runs["status"]["code"] == 0
    text = repr(runs["hookRuns"])
    assert "\\\\x1b[31m" in text or "\\x1b" in text
    assert "\x1b" not in text and "\x00" not in text
    if created["status"]["code"] == 0:
        assert api.destroy(vm_id)["status"]["code"] == 0


# -- connections and shutdown -----------------------------------------------------------

def test_500_idle_connections_do_not_stop_another_client(agent: AgentProcess) -> None:
    idle: list[socket.socket] = []
    try:
        for _ in range(250):
            idle.append(unixsock.connect(agent.socket, 10))
        for _ in range(250):
            s = socket.create_connection(("127.0.0.1", agent.port), 10)
            idle.append(s)  # TCP open, no TLS handshake sent
        api = proxy(agent.tls_url)
        for _ in range(5):
            assert api.list()["status"]["code"] == 0
        assert agent.api.getVdsStats()["status"]["code"] == 0
    finally:
        for s in idle:
            s.close()


def test_sigterm_with_100_idle_connections_stops_and_runs_after_vdsm_stop(
        dirs: Any, serve_process: Any) -> None:
    marker = dirs.root / "stopped"
    dirs.hook("after_vdsm_stop", "50_mark", f"echo done > {marker}\n")
    config = dirs.root / "hv.toml"
    config.write_text("shutdown_timeout = 10\n")
    agent = serve_process(extra=["--config", str(config)])
    clients = []
    for i in range(100):
        api = proxy(agent.tls_url if i % 2 else agent.url)
        assert api.list()["status"]["code"] == 0  # keep-alive: the connection stays open
        clients.append(api)
    started = time.monotonic()
    agent.proc.send_signal(signal.SIGTERM)
    rc = agent.proc.wait(10 + 20)  # the bound, plus a start-up's worth of slack
    assert rc == 0
    assert time.monotonic() - started < 10 + 20
    assert marker.read_text().strip() == "done"
    assert not agent.socket.exists()


def test_a_call_in_flight_finishes_on_sigterm(dirs: Any, serve_process: Any) -> None:
    dirs.hook("before_vm_start", "50_slow", "sleep 1\n")
    agent = serve_process()
    import threading

    result: dict[str, Any] = {}
    vm_id = str(uuid.uuid4())

    def create() -> None:
        result["reply"] = agent.api.create({"vmId": vm_id, "vmName": "hvtest-inflight",
                                            "memSize": 64})

    t = threading.Thread(target=create)
    t.start()
    deadline = time.monotonic() + 20
    while "50_slow" not in agent.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    agent.proc.send_signal(signal.SIGTERM)
    t.join(30)
    assert result["reply"]["status"]["code"] == 0
    assert agent.proc.wait(30) == 0


def test_an_idle_connection_is_closed_after_idle_timeout(dirs: Any,
                                                         serve_process: Any) -> None:
    config = dirs.root / "hv.toml"
    config.write_text("idle_timeout = 0.5\nread_timeout = 0.5\n")
    agent = serve_process(extra=["--config", str(config)])
    s = unixsock.connect(agent.socket, 10)
    with s:
        assert s.recv(10) == b""  # closed by the agent, without a word
    slow = unixsock.connect(agent.socket, 10)
    with slow:
        slow.sendall(b"POST /RPC2 HTTP/1.1\r\n")  # and never the rest
        assert slow.recv(10) == b""
    assert agent.api.list()["status"]["code"] == 0


def test_beyond_max_connections_new_ones_are_closed(dirs: Any, serve_process: Any) -> None:
    config = dirs.root / "hv.toml"
    config.write_text("max_connections = 10\n")
    agent = serve_process(extra=["--config", str(config)])
    held = [unixsock.connect(agent.socket, 10) for _ in range(10)]
    try:
        extra = unixsock.connect(agent.socket, 10)
        with extra:
            assert extra.recv(10) == b""
        assert "max_connections=10 reached" in agent.log()
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            assert make_proxy(Address(socket=agent.socket)).list()["status"]["code"] == 0
            break
        except OSError:
            time.sleep(0.1)
    else:
        raise AssertionError("agent did not serve again once connections closed")


def test_stalled_handshakes_cannot_lock_out_a_client_with_a_certificate(
        dirs: Any, serve_process: Any) -> None:
    config = dirs.root / "hv.toml"
    config.write_text("max_connections = 10\n")
    agent = serve_process(extra=["--config", str(config)])
    stalled = [socket.create_connection(("127.0.0.1", agent.port), 10) for _ in range(20)]
    try:
        assert proxy(agent.tls_url).list()["status"]["code"] == 0
        assert agent.api.list()["status"]["code"] == 0
        assert "connections without a certificate or refused: closing the oldest" in \
            agent.log()
        # The oldest stalled ones were closed by the agent.
        stalled[0].settimeout(10)
        assert stalled[0].recv(10) == b""
    finally:
        for s in stalled:
            s.close()


def test_a_second_agent_on_the_same_socket_does_not_start(agent: AgentProcess,
                                                         dirs: Any) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hookvisor.cli.main", "serve", "--listen", "",
         "--hooks-dir", str(dirs.hooks), "--state-dir", str(dirs.state),
         "--run-dir", str(dirs.run)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"another agent is serving on {agent.socket}" in proc.stderr
    assert agent.api.list()["status"]["code"] == 0


def test_listening_on_every_address_is_logged(serve_process: Any) -> None:
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    number = port.getsockname()[1]
    port.close()
    agent = serve_process(extra=["--listen", f"0.0.0.0:{number}"])
    assert f"listening on every address (0.0.0.0:{number})" in agent.log()
    # Still mutual TLS there.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(lab_pki().ca_cert))
    with pytest.raises(AgentError, match="TLS handshake refused"):
        AgentClient(Address(hostport=f"127.0.0.1:{number}"), tls=ctx).call("list")
