"""Running under systemd (issue 7 item 11): the shipped unit, and sd_notify readiness."""

from __future__ import annotations

import configparser
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from hookvisor.cli.sdnotify import Notifier
from hookvisor.config import Settings

UNIT = resources.files("hookvisor") / "data" / "hookvisor.service"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def seconds(value: str) -> float:
    return float(value.removesuffix("s"))


def test_the_unit_is_package_data_and_consistent_with_the_settings() -> None:
    assert UNIT.is_file()
    service = unit()["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["ExecStart"].split()[:2] == ["/usr/bin/hookvisor", "serve"]
    defaults = Settings()
    # Both default dirs are the ones systemd makes for the service.
    assert Path("/run") / service["RuntimeDirectory"] == defaults.run_dir
    assert Path("/var/lib") / service["StateDirectory"] == defaults.state_dir
    # systemd must not SIGKILL a stop that is still inside its own bounds.
    assert seconds(service["TimeoutStopSec"]) > defaults.shutdown_timeout + defaults.hook_timeout
    assert service["KillMode"] == "mixed"


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        message = "systemd-analyze missing (Debian package systemd; scripts/setup.sh)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    # verify wants ExecStart's binary to exist: this test's interpreter stands in.
    rendered = tmp_path / "hookvisor.service"
    rendered.write_text(UNIT.read_text().replace("/usr/bin/hookvisor",
                                                 f"{sys.executable} -m hookvisor"))
    proc = subprocess.run([analyze, "verify", str(rendered)], capture_output=True, text=True,
                          timeout=120)
    # verify exits 0 on a key it ignores; it names the file in every complaint.
    complaints = [line for line in (proc.stdout + proc.stderr).splitlines()
                  if "hookvisor.service" in line]
    assert proc.returncode == 0 and not complaints, proc.stdout + proc.stderr


def test_the_verify_check_can_fail(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze missing")
    bad = tmp_path / "hookvisor.service"
    bad.write_text(UNIT.read_text().replace("/usr/bin/hookvisor", f"{sys.executable} -m x")
                   .replace("Type=notify", "Type=notifyy"))
    proc = subprocess.run([analyze, "verify", str(bad)], capture_output=True, text=True,
                          timeout=120)
    assert "hookvisor.service" in proc.stdout + proc.stderr


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: Any, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket as systemd binds it, named in NOTIFY_SOCKET for the agent."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
    else:
        name = f"hvtest-notify-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        address = "@" + name
    sock.settimeout(60)  # against a hang, not a speed limit
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    yield sock
    sock.close()


def messages(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines())


def test_ready_after_recovery_and_stopping_on_sigterm(dirs: Any, serve_process: Any,
                                                      notify_socket: socket.socket) -> None:
    dirs.hook("after_vdsm_stop", "50_mark", f"touch {dirs.root}/stopped\n")
    agent = serve_process()  # returns once `list` answers Done
    ready = messages(notify_socket)
    assert ready["READY"] == "1" and "recovered" in ready["STATUS"]
    assert agent.api.list()["status"]["code"] == 0
    agent.proc.send_signal(signal.SIGTERM)
    assert messages(notify_socket)["STOPPING"] == "1"
    assert agent.stop() == 0
    assert (dirs.root / "stopped").exists()


def test_no_notify_socket_is_a_no_op() -> None:
    assert not Notifier({}).notify("READY=1")


def test_the_variable_is_not_passed_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "@hvtest-nobody")
    notifier = Notifier()
    assert notifier.enabled and "NOTIFY_SOCKET" not in os.environ
    # Nobody listens: a warning, not an exception (the agent works on).
    assert not notifier.notify("READY=1")
