"""Issue 12, point by point, through the real CLI as a process: piped, and under a
pseudo-terminal of 80 columns, against one served agent whose dirs come from
one config file (HOOKVISOR_CONFIG), as the README sets it up."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import sqlite3
import struct
import subprocess
import sys
import termios
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from labpki import lab_pki

REPO = Path(__file__).resolve().parent.parent.parent

EV = "before_vm_start"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")
DOMAIN = textwrap.dedent("""\
    <domain type='test'>
      <name>offline</name>
      <uuid>8c9f3b4e-2f4c-4f5e-9a53-0d7f1f2e6a11</uuid>
      <memory unit='MiB'>64</memory>
      <devices/>
    </domain>
""")
LONG = "this-detail-is-long " * 8  # 160 characters: a terminal cuts it, a pipe never


@dataclass
class Env:
    agent: Any  # conftest's AgentProcess (module_agent)
    dirs: Any  # its AgentDirs
    config: Path
    env: dict[str, str]
    domain: Path

    def hv(self, *args: str, extra: dict[str, str] | None = None,
           stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hookvisor", *args], input=stdin,
                              capture_output=True, text=True, cwd=REPO, timeout=120,
                              env={**self.env, **(extra or {})})

    def tty(self, *args: str, columns: int = 80) -> str:
        """Run under a pseudo-terminal of `columns` columns; what the terminal showed."""
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        env = {k: v for k, v in self.env.items() if k not in ("COLUMNS", "LINES")}
        env["TERM"] = "xterm-256color"
        proc = subprocess.Popen([sys.executable, "-m", "hookvisor", *args], cwd=REPO,
                                env=env, stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        chunks = []
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            if not ready:
                break
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        os.close(master)
        assert proc.wait(60) == 0
        return b"".join(chunks).decode(errors="replace")


def _reachable(path: Path) -> None:
    """As root, hooks run as the hook user: open the temp dirs' parents for traversal."""
    if os.geteuid() != 0:
        return
    for d in path.parents:
        if str(d) in ("/", "/tmp") or not d.is_relative_to("/tmp"):
            break
        d.chmod((d.stat().st_mode & 0o7777) | 0o711)


@pytest.fixture(scope="module")
def op(module_agent: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("operator")
    if os.geteuid() == 0:
        root.chmod(0o755)
    dirs = module_agent.dirs
    _reachable(dirs.hooks)
    config = root / "hookvisor.toml"
    config.write_text(textwrap.dedent(f"""\
        hooks_dir = "{dirs.hooks}"
        state_dir = "{dirs.state}"
        run_dir = "{dirs.run}"
        pki_dir = "{lab_pki().root}"
        cluster_version = "4.8"
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKVISOR_")}
    env.update(HOOKVISOR_CONFIG=str(config), PYTHONPATH=str(REPO))
    domain = root / "domain.xml"
    domain.write_text(DOMAIN)
    yield Env(module_agent, dirs, config, env, domain)


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"{done.args}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr
    return done.stdout


# --- 10 (first: the agent has no VM yet) ----------------------------------------


def test_empty_vm_list_version_one_line_errors_defaults(op: Env) -> None:
    assert _ok(op.hv("vm", "list")) == "no VMs\n"
    assert _ok(op.hv("--version")).startswith("hookvisor ")
    bad = op.hv("vm", "lst")
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1
    assert bad.stderr.startswith("hookvisor vm: ") and "invalid choice" in bad.stderr
    bad = op.hv("hooks", "history", "--limit", "x")
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1
    helptext = _ok(op.hv("hooks", "history", "--help"))
    assert "(default: 50)" in " ".join(helptext.split())
    assert "(default: all)" in " ".join(helptext.split())


# --- 1 and 2 --------------------------------------------------------------------


def test_one_config_for_every_command(op: Env) -> None:
    out = _ok(op.hv("config", "-s", "UserDefinedVMProperties=mark=^[a-z]+$", "--cver=4.8"))
    assert f"(store {op.dirs.state / 'properties.sqlite'})" in out
    assert "old: (none)" in out and "new: mark=^[a-z]+$" in out
    out = _ok(op.hv("config", "--add", "UserDefinedVMProperties=api_token=^[a-z0-9]+$",
                    "--cver=4.8"))
    assert "old: mark=^[a-z]+$" in out and "new: mark=^[a-z]+$;api_token=" in out
    out = _ok(op.hv("config", "--add", "UserDefinedVMProperties=gone=^x$", "--cver=4.8"))
    out = _ok(op.hv("config", "--remove", "UserDefinedVMProperties=gone", "--cver=4.8"))
    assert out.splitlines()[-1] == "  new: mark=^[a-z]+$;api_token=^[a-z0-9]+$"
    op.dirs.hook(EV, "10_mark", f"""
        echo "mark is $mark {LONG}" >&2
        sed -i "s|</name>|</name><description>$mark</description>|" "$_hook_domxml"
    """)
    # The agent reads the definitions the CLI wrote: the property passes.
    out = _ok(op.hv("vm", "create", "--name", "hvtest-op1", "--mem", "64",
                    "--prop", "mark=first", "--prop", "api_token=s3cret"))
    assert " hvtest-op1 " in out
    listed = op.hv("hooks", "list")
    assert "10_mark" in _ok(listed) and "the agent at" in listed.stderr


# --- 3 --------------------------------------------------------------------------


def test_piped_output_whole_one_record_per_line(op: Env) -> None:
    lines = _ok(op.hv("vm", "list")).splitlines()
    assert lines[0].split() == ["vmId", "name", "status", "custom"]
    [row] = [line for line in lines if "hvtest-op1" in line]
    assert re.match(r"^[0-9a-f-]{36}  hvtest-op1 ", row)
    hist = _ok(op.hv("hooks", "history", "--vm", _vm_id(op, "hvtest-op1")))
    rows = hist.splitlines()
    assert len(rows) == 2 and LONG.strip() in rows[1]  # nothing cut, one line
    assert "\x1b[" not in hist


def test_history_of_a_vm_by_name(op: Env) -> None:
    vm_id = _vm_id(op, "hvtest-op1")
    by_id = json.loads(_ok(op.hv("hooks", "history", "--vm", vm_id, "--json")))
    assert by_id and {r["vm_id"] for r in by_id} == {vm_id}
    by_name = json.loads(_ok(op.hv("hooks", "history", "--vm", "hvtest-op1", "--json")))
    assert by_name == by_id
    # A name the agent does not know may still be a vmId of offline runs (any text):
    # an error only when no run has it.
    unknown = op.hv("hooks", "history", "--vm", "hvtest-nosuch")
    assert unknown.returncode == 1 and len(unknown.stderr.splitlines()) == 1, unknown.stderr
    assert "--vm 'hvtest-nosuch': no VM of that name on the agent at" in unknown.stderr
    assert "no runs have it as their vmId" in unknown.stderr
    local = op.hv("hooks", "history", "--vm", "hvtest-op1", "--local")
    assert local.returncode == 1 and "no agent was asked for VM names (--local)" in local.stderr
    nowhere = op.hv("hooks", "history", "--vm", "hvtest-op1", "--socket", "/nonexistent")
    assert nowhere.returncode == 1 and "no agent listening on /nonexistent" in nowhere.stderr
    assert "Traceback" not in unknown.stderr + local.stderr + nowhere.stderr


def test_terminal_of_80_columns(op: Env) -> None:
    shown = ANSI.sub("", op.tty("vm", "list"))
    vm_id = _vm_id(op, "hvtest-op1")
    assert vm_id in shown, shown  # the UUID whole, on one line
    assert all(len(line) <= 80 for line in shown.splitlines())
    shown = ANSI.sub("", op.tty("hooks", "history", "--vm", vm_id))
    rows = [line for line in shown.splitlines() if line.strip()]
    assert [line for line in rows if len(line) > 80] == []
    # A header and one row: no cell wrapped onto more lines.
    table = rows[next(n for n, r in enumerate(rows) if r.startswith("time ")):]
    assert len(table) == 2 and "10_mark" in table[1] and "agent" in table[1], table


def test_closed_pipe_is_a_quiet_exit(op: Env) -> None:
    done = subprocess.run(
        f"{sys.executable} -m hookvisor hooks history -v --limit 500 | head -1",
        shell=True, capture_output=True, text=True, cwd=REPO, env=op.env, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("time")
    assert "Error" not in done.stderr and "Traceback" not in done.stderr


# --- 4 --------------------------------------------------------------------------


def test_diff_of_a_minidom_rewrite_shows_only_the_change(op: Env) -> None:
    op.dirs.hook("before_vm_pause", "10_rewrite", """
        import hooking
        doc = hooking.read_domxml()
        doc.documentElement.appendChild(doc.createElement("rewritten"))
        hooking.write_domxml(doc)
    """, python=True)
    done = op.hv("hooks", "run", "before_vm_pause", "--xml", str(op.domain))
    assert done.returncode == 0, done.stdout + done.stderr
    diff = [line for line in done.stdout.splitlines()
            if line.startswith(("    +", "    -")) and not line.startswith(("    ++", "    --"))]
    assert diff == ["    +  <rewritten/>"], done.stdout
    hist = _ok(op.hv("hooks", "history", "--origin", "offline", "--event", "before_vm_pause",
                     "-v", "--raw", "--limit", "1"))
    assert "raw diff (the bytes as written)" in hist and "+<?xml" in hist


# --- 5 and 6 --------------------------------------------------------------------


def test_mistakes_are_refused_or_said(op: Env, tmp_path: Path) -> None:
    lazy = op.dirs.hooks / "before_vm_cont"
    lazy.mkdir(exist_ok=True)
    (lazy / "10_lazy").write_text("#!/bin/sh\nexit 0\n")
    (lazy / "10_lazy").chmod(0o644)
    listed = _ok(op.hv("hooks", "list", "--event", "before_vm_cont"))
    assert "NOT EXECUTABLE" in listed and "present but not executable" in listed
    ran = op.hv("hooks", "run", "before_vm_cont", "--xml", str(op.domain))
    assert "10_lazy: present but not executable" in ran.stdout
    missing = op.hv("hooks", "run", EV, "--hooks-dir", str(tmp_path / "nope"), "--xml",
                    str(op.domain))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    served = subprocess.run([sys.executable, "-m", "hookvisor", "serve", "--hooks-dir",
                             str(tmp_path / "nope")], capture_output=True, text=True,
                            env=op.env, cwd=REPO, timeout=60)
    assert served.returncode == 2 and "--hooks-dir" in served.stderr
    assert "does not exist" in served.stderr
    served = subprocess.run([sys.executable, "-m", "hookvisor", "serve", "--event-timeout",
                             "before_vm_strat=5"], capture_output=True, text=True,
                            env=op.env, cwd=REPO, timeout=60)
    assert served.returncode == 2 and "not a hook event" in served.stderr
    marker = tmp_path / "ran"
    op.dirs.hook("before_vm_hibernate", "10_marker", f"touch {marker}\n")
    (tmp_path / "bad.xml").write_text("<domain><name>x</domain>")
    bad = op.hv("hooks", "run", "before_vm_hibernate", "--xml", str(tmp_path / "bad.xml"))
    assert bad.returncode == 2 and "not XML" in bad.stderr and not marker.exists()


def test_hooks_run_checks_properties_and_names_the_store(op: Env) -> None:
    store = op.dirs.state / "properties.sqlite"
    refused = op.hv("hooks", "run", EV, "--xml", str(op.domain), "--prop", "mark=UPPER")
    assert refused.returncode == 1
    assert f"checked against {store}, cluster version 4.8" in refused.stdout
    assert "REFUSED" in refused.stdout and "mark" in refused.stdout
    assert "mark is" not in refused.stdout  # no hook ran
    other = op.hv("hooks", "run", EV, "--xml", str(op.domain), "--prop", "mark=ok",
                  "--cver", "4.2")
    assert other.returncode == 1 and "cluster version 4.2" in other.stdout
    passed = op.hv("hooks", "run", EV, "--xml", str(op.domain), "--prop", "mark=ok",
                   "--device-prop", "speed=1")
    assert passed.returncode == 0 and "mark is ok" in passed.stdout
    assert "--device-prop not checked: a domain event names no device type" in passed.stdout
    nic = op.domain.with_name("nic.xml")
    nic.write_text("<interface type='bridge'><source bridge='br0'/></interface>\n")
    device = op.hv("hooks", "run", "before_nic_hotplug", "--xml", str(nic),
                   "--device-prop", "speed=1")
    assert device.returncode == 1 and "REFUSED" in device.stdout
    assert "interface" in device.stdout and "speed" in device.stdout


# --- 7 --------------------------------------------------------------------------


def test_agent_from_env_and_after_the_verb_vms_by_name_dumpxml(op: Env) -> None:
    tls = {"HOOKVISOR_AGENT": f"127.0.0.1:{op.agent.port}"}
    assert "hvtest-op1" in _ok(op.hv("vm", "list", extra=tls))
    # HOOKVISOR_AGENT is used: a wrong one fails, naming it.
    wrong = op.hv("vm", "list", extra={"HOOKVISOR_AGENT": "127.0.0.1:1"})
    assert wrong.returncode == 1 and "127.0.0.1:1" in wrong.stderr
    assert "hvtest-op1" in _ok(op.hv("vm", "list", "--agent", f"127.0.0.1:{op.agent.port}"))
    # The config file's `agent` too.
    remote = op.config.with_name("remote.toml")
    remote.write_text(op.config.read_text() + 'agent = "127.0.0.1:1"\n')
    wrong = op.hv("vm", "list", extra={"HOOKVISOR_CONFIG": str(remote)})
    assert wrong.returncode == 1 and "127.0.0.1:1" in wrong.stderr
    remote.write_text(op.config.read_text() + f'agent = "127.0.0.1:{op.agent.port}"\n')
    assert "hvtest-op1" in _ok(op.hv("vm", "list", extra={"HOOKVISOR_CONFIG": str(remote)}))
    assert "hvtest-op1" in _ok(op.hv("vm", "list", "hvtest-op1"))
    xml = _ok(op.hv("vm", "dumpxml", "hvtest-op1"))
    assert "<description>first</description>" in xml and xml.endswith("</domain>\n")
    assert _ok(op.hv("vm", "pause", "hvtest-op1")).endswith(": Done\n")
    assert _ok(op.hv("vm", "cont", _vm_id(op, "hvtest-op1"))).endswith(": Done\n")
    nope = op.hv("vm", "dumpxml", "no-such-vm")
    assert nope.returncode == 1 and "no VM named 'no-such-vm'" in nope.stderr


def test_spinners_name_the_call_and_the_hook(op: Env) -> None:
    op.dirs.hook("before_vm_dehibernate", "10_slow", "sleep 1.5\n")
    shown = ANSI.sub("", op.tty("hooks", "run", "before_vm_dehibernate", "--xml",
                                str(op.domain)))
    assert "before_vm_dehibernate: running 10_slow" in shown
    op.dirs.hook(EV, "05_slow", "sleep 1.5\n")
    try:
        shown = ANSI.sub("", op.tty("vm", "create", "--name", "hvtest-op2", "--mem", "64"))
    finally:
        (op.dirs.hooks / EV / "05_slow").unlink()
    assert "create: waiting for the agent at" in shown and "before_vm_start hooks" in shown
    _ok(op.hv("vm", "destroy", "hvtest-op2"))


# --- 8 --------------------------------------------------------------------------


def test_history_from_the_agent_paged_filtered_and_by_chain_prefix(op: Env) -> None:
    for i in range(120):
        op.dirs.hook("after_vm_pause", f"{i:03d}_ok", "exit 0\n")
    _ok(op.hv("vm", "pause", "hvtest-op1"))
    _ok(op.hv("vm", "cont", "hvtest-op1"))
    got = op.hv("hooks", "history", "--event", "after_vm_pause", "--limit", "115", "--json")
    runs = json.loads(_ok(got))
    # More than one getHookRuns page (100), in order, from the agent.
    assert len(runs) == 115 and {r["origin"] for r in runs} == {"agent"}
    assert [r["id"] for r in runs] == sorted((r["id"] for r in runs), reverse=True)
    plain = op.hv("hooks", "history", "--event", "after_vm_pause", "--limit", "1")
    assert "hook runs from the agent at" in plain.stderr
    local = op.hv("hooks", "history", "--local", "--limit", "1")
    assert f"{op.dirs.state / 'hookruns.sqlite'} (--local)" in local.stderr
    chain = runs[0]["chain_id"]
    by_prefix = json.loads(_ok(op.hv("hooks", "history", "--chain", chain[:8], "--json",
                                     "--limit", "500")))
    assert len(by_prefix) == 120 and {r["chain_id"] for r in by_prefix} == {chain}
    assert json.loads(_ok(op.hv("hooks", "history", "--until", "1h", "--json"))) == []
    recent = json.loads(_ok(op.hv("hooks", "history", "--since", "1h", "--json",
                                  "--limit", "500")))
    assert {"agent", "offline"} <= {r["origin"] for r in recent}
    table = _ok(op.hv("hooks", "history", "--limit", "500"))
    assert re.search(r"  offline  before_vm_pause ", table)
    for i in range(120):
        (op.dirs.hooks / "after_vm_pause" / f"{i:03d}_ok").unlink()


# --- 9 --------------------------------------------------------------------------


def test_replay_a_recorded_chain_against_the_hooks_now(op: Env) -> None:
    runs = json.loads(_ok(op.hv("hooks", "history", "--vm", _vm_id(op, "hvtest-op1"),
                                "--event", EV, "--json")))
    chain = runs[-1]["chain_id"]
    # The secret-looking property was never written to the records.
    with sqlite3.connect(op.dirs.state / "hookruns.sqlite") as conn:
        dump = "\n".join(conn.iterdump())
    assert "s3cret" not in dump and "first" in dump
    same = op.hv("hooks", "replay", chain[:8])
    assert same.returncode == 0, same.stdout + same.stderr
    assert "mark is first" in same.stdout  # the recorded property, not this shell's
    assert "replay: the same outcome as recorded" in same.stdout
    assert "api_token was not recorded" in same.stdout
    op.dirs.hook(EV, "10_mark", 'echo "no longer: $mark" >&2; exit 1\n')
    try:
        now = op.hv("hooks", "replay", chain[:8])
    finally:
        op.dirs.hook(EV, "10_mark", "exit 0\n")
    assert now.returncode == 1
    row = [line for line in now.stdout.splitlines() if line.startswith("10_mark ")][-1]
    assert "ok rc=0" in row and "failed rc=1" in row and "script changed since" in row
    assert "no longer: first" in now.stdout
    assert "replay: a different outcome: then passed, now vetoed" in now.stdout
    unknown = op.hv("hooks", "replay", "ffffffff")
    assert unknown.returncode == 2 and "no recorded chain" in unknown.stderr
    _ok(op.hv("vm", "destroy", "hvtest-op1"))


def _vm_id(op: Env, name: str) -> str:
    vms = json.loads(_ok(op.hv("vm", "list", "--json")))
    return str(next(v["vmId"] for v in vms if v["vmName"] == name))

