"""The README's quick start, run as written, so that it cannot drift from the program.

The `sh` blocks of README.md's "Quick start" section are run in order, in a
fresh copy of the checkout (its tracked files), each command in bash with the
exports of the lines before it, its exit status and output checked against
EXPECT below: a command added to the quick start without an expectation here
fails the test. `./scripts/run-agent.sh` is started in the background (and
stopped at the end); `./scripts/test.sh` (the suite itself) is not run. The
one substitution: the demo's TLS port 54321 becomes a free one, so that a demo
agent already running on this machine does not answer in its place.

The copy's `.venv` is a stand-in: `hookvisor` runs the copy's code with this
interpreter (no network, no pip), and setup.sh finds it installed.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from labpki import proxy

REPO = Path(__file__).resolve().parent.parent

README = REPO / "README.md"
SECTION = "## Quick start"
NOT_RUN = {"./scripts/test.sh"}

# command -> (exit status, what its stdout must contain, regex on stdout or None)
EXPECT: dict[str, tuple[int, list[str], str | None]] = {
    "export HOOKVISOR_CONFIG=$PWD/var/hookvisor.toml PATH=$PWD/.venv/bin:$PATH": (0, [], None),
    "hookvisor vm create --name demo --mem 256 --prop numa=preferred:1-4,^3,6 --prop pincpu=0-1":
        (0, [" demo "], r"^[0-9a-f-]{36} demo \w+\n$"),
    "hookvisor vm list": (0, ["vmId", "demo", "numa=preferred:1-4,^3,6", "pincpu=0-1"], None),
    "hookvisor vm dumpxml demo":
        # libvirt writes the nodeset in its own form: what the VM really got.
        (0, ["<name>demo</name>", "<numatune>", "mode='preferred' nodeset='1-2,4,6'",
             "cpuset='0-1'"], None),
    "hookvisor hooks list": (0, ["before_vm_start", "50_numa", "50_pincpu", "ok"], None),
    "hookvisor hooks history": (0, ["50_numa", "50_pincpu", "agent", "ok"], None),
    "hookvisor config --add 'UserDefinedVMProperties=hugepages=^(true|false)$' --cver=4.8":
        (0, ["old: numa=", "new: numa=", "hugepages=^(true|false)$"], None),
    "hookvisor hooks run before_vm_start --xml examples/domain.xml --prop numa=strict:0 "
    "--output -": (0, ["<numatune>", "nodeset=\"0\""], None),
    "hookvisor vm list --agent 127.0.0.1:54321": (0, ["demo"], None),
    "hookvisor vm destroy demo": (0, [": Done"], None),
}
# What must appear on stderr (where the source of a listing is said).
STDERR: dict[str, list[str]] = {
    "hookvisor hooks list": ["hooks as reported by the agent at"],
    "hookvisor hooks history": ["hook runs from the agent at"],
    "hookvisor hooks run before_vm_start --xml examples/domain.xml --prop numa=strict:0 "
    "--output -": ["custom properties checked against", "chain passed",
                   "recorded as offline runs"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, timeout: float, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert alive(), "the agent exited before it was ready"
        try:
            if proxy(url, 10).list()["status"]["code"] == 0:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"agent at {url} not ready after {timeout}s")


def quick_start_commands(text: str) -> list[str]:
    """The commands of the quick start's ```sh blocks, continuation lines joined."""
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start:end if end >= 0 else None]
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands.append(re.sub(r"\s+#.*$", "", line))
    return commands


def _copy_checkout(dest: Path) -> None:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True)
    if listed.returncode == 0:
        files = listed.stdout.decode().split("\0")
    else:  # not a git checkout (an unpacked tarball): the tree without what runs make
        skip = {".git", ".venv", "var", "__pycache__", ".mypy_cache", ".ruff_cache"}
        files = [str(p.relative_to(REPO)) for p in REPO.rglob("*")
                 if p.is_file() and not skip & set(p.relative_to(REPO).parts)]
    for name in filter(None, files):
        src = REPO / name
        if not src.exists():
            continue  # deleted in the worktree, not yet committed
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(src.read_bytes())
        target.chmod(src.stat().st_mode & 0o777)
    # As root the hooks must be root's and not writable by others (the trust checks).
    for d in [dest, *dest.rglob("*")]:
        if d.is_dir():
            d.chmod(0o755)
    venv = dest / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to(sys.executable)
    (venv / "hookvisor").write_text(
        f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(dest))} exec {shlex.quote(sys.executable)} "
        "-m hookvisor.cli.main \"$@\"\n")
    (venv / "hookvisor").chmod(0o755)
    (dest / ".venv" / ".hookvisor-installed").touch()


def test_readme_commands_are_all_expected() -> None:
    commands = [c for c in quick_start_commands(README.read_text()) if c not in NOT_RUN]
    assert commands[0] == "./scripts/run-agent.sh"
    assert [c for c in commands[1:] if c not in EXPECT] == []
    assert [c for c in EXPECT if c not in commands] == []


def test_readme_quick_start(tmp_path: Path) -> None:
    repo = tmp_path / "checkout"
    repo.mkdir()
    _copy_checkout(repo)
    port = free_port()
    commands = [c.replace("127.0.0.1:54321", f"127.0.0.1:{port}")
                for c in quick_start_commands(README.read_text()) if c not in NOT_RUN]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKVISOR_")}
    env["HOOKVISOR_DEMO_LISTEN"] = f"127.0.0.1:{port}"
    env["HOOKVISOR_NO_SPINNER"] = "1"
    log = open(tmp_path / "agent.log", "wb")  # noqa: SIM115 - closed below
    agent = subprocess.Popen(["bash", "-c", commands[0]], cwd=repo, env=env, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(f"unix:{repo / 'var/run/hookvisor.sock'}", timeout=120,
                   alive=lambda: agent.poll() is None)
        hint = (tmp_path / "agent.log").read_text()
        # The demo's hint names the address it really listens on.
        assert f"--agent 127.0.0.1:{port}" in hint
        assert "export HOOKVISOR_CONFIG=$PWD/var/hookvisor.toml" in hint
        exports: list[str] = []
        for command in commands[1:]:
            if command.startswith("export "):
                exports.append(command)
            script = "\n".join([*exports, command])
            done = subprocess.run(["bash", "-euc", script], cwd=repo, env=env,
                                  capture_output=True, text=True, timeout=300)
            key = command.replace(f"127.0.0.1:{port}", "127.0.0.1:54321")
            status, wanted, pattern = EXPECT[key]
            where = f"{command!r}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
            assert done.returncode == status, where
            assert "Traceback" not in done.stderr, where
            for text in wanted:
                assert text in done.stdout, f"{text!r} not in the output of {where}"
            if pattern:
                assert re.search(pattern, done.stdout), where
            for text in STDERR.get(key, []):
                assert text in done.stderr, f"{text!r} not on stderr of {where}"
    finally:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGTERM)
            try:
                agent.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(agent.pid, signal.SIGKILL)
                agent.wait()
        log.close()
    assert agent.returncode == 0, (tmp_path / "agent.log").read_text()[-3000:]


@pytest.mark.parametrize("listen", ["127.0.0.1:54999"])
def test_run_agent_keeps_existing_definitions(tmp_path: Path, listen: str) -> None:
    """run-agent.sh adds the demo's definitions only where missing (no agent started)."""
    repo = tmp_path / "checkout"
    repo.mkdir()
    _copy_checkout(repo)
    script = (repo / "scripts/run-agent.sh").read_text()
    # Everything but the final `exec serve`.
    (repo / "scripts/prep.sh").write_text(script.replace('exec $HV serve "$@"', "true"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKVISOR_")}
    env["HOOKVISOR_DEMO_LISTEN"] = listen
    hv = [str(repo / ".venv/bin/hookvisor"), "--config", str(repo / "var/hookvisor.toml")]
    subprocess.run(["bash", "scripts/prep.sh"], cwd=repo, env=env, check=True,
                   capture_output=True)
    subprocess.run([*hv, "config", "-s", "UserDefinedVMProperties=numa=^mine$;own=^x$",
                    "--cver=4.8"], check=True, capture_output=True, env=env)
    subprocess.run(["bash", "scripts/prep.sh"], cwd=repo, env=env, check=True,
                   capture_output=True)
    got = subprocess.run([*hv, "config", "-g", "UserDefinedVMProperties", "--cver=4.8"],
                         check=True, capture_output=True, text=True, env=env).stdout
    # The author's numa and own stay; the demo's missing ones are added.
    assert got.startswith("UserDefinedVMProperties: numa=^mine$;own=^x$;pincpu=")
    assert "cantmigrate=" in got
    config = (repo / "var/hookvisor.toml").read_text()
    assert f'state_dir = "{repo}/var/state"' in config and f'listen = "{listen}"' in config
