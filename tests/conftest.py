"""Shared fixtures: an agent served in a subprocess or in-process, and qemu:///system.

Every domain a test creates is named `hvtest-...`; whatever such domain is left
after a test is destroyed, and the test that left it fails. On a libvirtd other
test sessions share (qemu:///system), names start with this session's own
prefix (support.SESSION_PREFIX, `hvtest-<random>-`) and the guard destroys only those.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import labpki
import pytest
from labpki import lab_pki
from support import HOOK_PYTHON, SESSION_PREFIX, TEST_URI, assert_no_leftovers, unavailable

# The tiny bootable guest of SPEC §5 (fixture `tiny_guest`): tests/guest.py.
pytest_plugins = ["guest"]

QEMU_URI = "qemu:///system"
REPO = Path(__file__).resolve().parent.parent



@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """As root, a base temp dir of this checkout's own, not /tmp/pytest-of-root:
    every pytest session that starts resets that one to 0700, which would cut
    the hook user off from the hooks of a session already running."""
    if os.geteuid() == 0 and config.option.basetemp is None:
        tag = hashlib.sha256(str(REPO).encode()).hexdigest()[:10]
        config.option.basetemp = f"/tmp/hookvisor-pytest-{tag}"


@pytest.fixture(autouse=True)
def _hook_user_can_reach_tmp(request: pytest.FixtureRequest) -> None:
    """pytest makes its temporary dirs 0700: as root, open the parents for
    traversal (not listing) so that the hook user reaches the hooks and data
    under them, and let hooks leave their marker files in tmp_path itself."""
    if os.geteuid() != 0 or "tmp_path" not in request.fixturenames:
        return
    tmp_path: Path = request.getfixturevalue("tmp_path")
    tmp_path.chmod(0o777)
    for d in tmp_path.parents:
        if str(d) in ("/", "/tmp") or not d.is_relative_to("/tmp"):
            break
        mode = d.stat().st_mode
        if not mode & 0o001:
            d.chmod((mode & 0o7777) | 0o711)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class AgentDirs:
    root: Path
    hooks: Path = field(init=False)
    state: Path = field(init=False)
    run: Path = field(init=False)

    def __post_init__(self) -> None:
        self.hooks = self.root / "hooks"
        self.state = self.root / "state"
        self.run = self.root / "run"
        for d in (self.hooks, self.state, self.run):
            d.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            # Hooks (run as the hook user) leave their logs and markers here.
            self.root.chmod(0o777)

    def hook(self, event: str, name: str, body: str, python: bool = False) -> Path:
        """Install an executable hook script (shell unless `python`)."""
        directory = self.hooks / event
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / name
        shebang = f"#!{HOOK_PYTHON}\n" if python else "#!/bin/sh\n"
        path.write_text(shebang + textwrap.dedent(body).lstrip("\n"))
        path.chmod(0o755)
        return path

    def define(self, key: str, value: str, version: str = "4.8") -> None:
        """Define custom properties, as `hookvisor config -s` would."""
        from hookvisor.props.registry import PropertyRegistry

        reg = PropertyRegistry(self.state / "properties.sqlite", version)
        try:
            reg.set(key, value)
        finally:
            reg.close()

    def leftover_files(self) -> list[Path]:
        return [p for p in self.run.rglob("*") if p.is_file()]


@pytest.fixture
def dirs(tmp_path: Path) -> AgentDirs:
    return AgentDirs(tmp_path / "agent")


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """An empty dir for disk and hibernation images (tests name it in storage_dirs)."""
    path = tmp_path / "images"
    path.mkdir()
    return path


def proxy(url: str, timeout: float | None = 120.0) -> xmlrpc.client.ServerProxy:
    """A client of a served agent: `unix:PATH` (its socket) or `https://HOST:PORT/`
    (mutual TLS with the lab PKI's client certificate)."""
    return labpki.proxy(url, timeout)


def wait_ready(url: str, timeout: float = 30.0, alive: Callable[[], bool] = lambda: True) -> None:
    """Until `list` answers Done (not `recovery`, not a refused connection)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise AssertionError("agent exited before it was ready")
        try:
            if proxy(url).list()["status"]["code"] == 0:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"agent at {url} not ready after {timeout}s")


class AgentProcess:
    """`python -m hookvisor.cli.main serve ...` in a subprocess, its log in a file.

    It serves its Unix socket (`url`, `socket`) and mutual TLS with the lab PKI
    on 127.0.0.1:`port` (`tls_url`); `api` talks over the socket.
    """

    def __init__(self, dirs: AgentDirs, uri: str, extra: list[str] | None = None) -> None:
        self.dirs = dirs
        self.port = free_port()
        self.socket = dirs.run / "hookvisor.sock"
        self.url = f"unix:{self.socket}"
        self.tls_url = f"https://127.0.0.1:{self.port}/"
        self.log_path = dirs.root / f"agent-{self.port}.log"
        argv = [sys.executable, "-m", "hookvisor.cli.main", "serve",
                "--libvirt-uri", uri, "--listen", f"127.0.0.1:{self.port}",
                "--pki-dir", str(lab_pki().root),
                "--hooks-dir", str(dirs.hooks), "--state-dir", str(dirs.state),
                "--run-dir", str(dirs.run), "--log-level", "DEBUG", *(extra or [])]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("HOOKVISOR_CONFIG", None)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env, cwd=REPO)
        wait_ready(self.url, alive=lambda: self.proc.poll() is None)

    @property
    def api(self) -> xmlrpc.client.ServerProxy:
        return proxy(self.url)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        finally:
            self._log.close()
        return rc


@pytest.fixture
def serve_process(dirs: AgentDirs) -> Iterator[Callable[..., AgentProcess]]:
    started: list[AgentProcess] = []

    def start(uri: str = TEST_URI, extra: list[str] | None = None) -> AgentProcess:
        agent = AgentProcess(dirs, uri, extra)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        if agent.proc.poll() is None:
            agent.stop(signal.SIGKILL)


class InProcessAgent:
    """`serve()` on a thread: the test shares the process's test:///default with it.

    `settings` are more settings by name (e.g. net_netns="hvtest-...")."""

    def __init__(self, dirs: AgentDirs, uri: str, **settings: object) -> None:
        from hookvisor.cli.serve_cmd import serve
        from hookvisor.config import load_settings

        self.dirs = dirs
        self.port = free_port()
        self.socket = dirs.run / "hookvisor.sock"
        self.url = f"unix:{self.socket}"
        self.tls_url = f"https://127.0.0.1:{self.port}/"
        settings = load_settings(
            None,
            {"libvirt_uri": uri, "listen": f"127.0.0.1:{self.port}",
             "pki_dir": lab_pki().root,
             "hooks_dir": dirs.hooks, "state_dir": dirs.state, "run_dir": dirs.run,
             **settings},
            environ={},
        )
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.rc: int | None = None

        def run() -> None:
            self.rc = serve(settings, self.ready, self.stopping)

        self.thread = threading.Thread(target=run, name="agent", daemon=True)
        self.thread.start()
        if not self.ready.wait(30):
            raise AssertionError("in-process agent did not start")
        wait_ready(self.url)

    @property
    def api(self) -> xmlrpc.client.ServerProxy:
        return proxy(self.url)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "agent did not stop"


@pytest.fixture
def inproc_agent(dirs: AgentDirs) -> Iterator[Callable[..., InProcessAgent]]:
    started: list[InProcessAgent] = []

    def start(uri: str = TEST_URI, **settings: object) -> InProcessAgent:
        agent = InProcessAgent(dirs, uri, **settings)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        if agent.thread.is_alive():
            agent.stop()


def _qemu_reachable() -> str | None:
    import libvirt

    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    try:
        conn = libvirt.open(QEMU_URI)
    except libvirt.libvirtError as e:
        return str(e)
    conn.close()
    return None


@pytest.fixture
def qemu_reachable() -> str:
    """qemu:///system, or skip (fail under CI=true: the CI must run these). No leak
    guard: for a test that destroys its own domains and must not destroy those of
    other sessions on the shared libvirtd (as `qemu_system`'s guard does)."""
    problem = _qemu_reachable()
    if problem is not None:
        unavailable(f"{QEMU_URI} not reachable (is libvirtd running? scripts/libvirtd.sh): "
                    f"{problem}")
    return QEMU_URI


@pytest.fixture
def qemu_system(qemu_reachable: str) -> Iterator[str]:
    """qemu:///system, or skip (fail under CI=true); fails the test that leaves a
    domain of this session (SESSION_PREFIX) behind, and destroys it."""
    yield QEMU_URI
    assert_no_leftovers(QEMU_URI, SESSION_PREFIX)


@pytest.fixture
def test_driver_leak_guard() -> Iterator[None]:
    """test:///default is per process: an `hvtest-` domain left there after a test leaked."""
    yield
    assert_no_leftovers(TEST_URI)


@pytest.fixture(scope="module")
def module_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """One served agent (test:///default, in a subprocess) for a whole test module."""
    agent = AgentProcess(AgentDirs(tmp_path_factory.mktemp("agent") / "agent"), TEST_URI)
    yield agent
    if agent.proc.poll() is None:
        agent.stop(signal.SIGKILL)
