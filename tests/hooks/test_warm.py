"""The warm executor (hookvisor.hooks.zygote): a Python hook run warm is
indistinguishable from the same hook run cold, hooks cannot affect each other
through it, and a zygote that dies costs nothing but speed."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import signal
import textwrap
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from support import HOOK_PYTHON, wait_for

from hookvisor.config import load_settings
from hookvisor.hooks import identity, zygote
from hookvisor.hooks.records import RunRecords
from hookvisor.hooks.runner import ChainResult, HookRunner, RunnerConfig

from .util import DOMAIN, UUID, group_alive

pytestmark = [
    pytest.mark.skipif(not zygote.SUPPORTED, reason="no clone(2) support here"),
    # As root (CI) HOOK_PYTHON is /usr/bin/python3; a venv's `python` is not
    # a name the warm path takes (it could be Python 2 on an old host).
    pytest.mark.skipif(zygote.warm_target(zygote.Shebang(os.fsencode(HOOK_PYTHON), None), {})
                       is None, reason=f"{HOOK_PYTHON} is not named python3*"),
]

EVENT = "before_vm_start"
HEAD = f"#!{HOOK_PYTHON}\n"

# name -> (event, body); every body runs both warm and cold.
CORPUS: dict[str, tuple[str, str]] = {
    "xml": (EVENT, """
        import hooking
        doc = hooking.read_domxml()
        doc.getElementsByTagName('domain')[0].setAttribute('hooked', 'yes')
        hooking.write_domxml(doc)
        print(doc.getElementsByTagName('name')[0].firstChild.data)
    """),
    "json": ("before_network_setup", """
        import hooking
        data = hooking.read_json()
        data['request']['hooked'] = True
        hooking.write_json(data)
        print(sorted(data))
    """),
    "env": (EVENT, """
        import os, subprocess
        visible = {k: v for k, v in os.environ.items() if not k.startswith('_hook_')}
        print(list(visible))
        print(sorted(visible.items()))
        c_env = subprocess.run(['env'], capture_output=True, text=True).stdout.splitlines()
        print(sorted(line for line in c_env if not line.startswith('_hook_')))
        print(os.environ['vmId'], os.environ.get('numa'))
    """),
    "exit0": (EVENT, "import sys\nsys.exit(0)\n"),
    "exit1": (EVENT, "import sys\nprint('one')\nsys.exit(1)\n"),
    "exit2": (EVENT, "import sys\nsys.stderr.write('veto\\n')\nsys.exit(2)\n"),
    "exit3": (EVENT, "import os, sys\nprint('three')\nsys.stdout.flush()\nos._exit(3)\n"),
    "exit_big": (EVENT, "raise SystemExit(256 + 7)\n"),
    "exit_text": (EVENT, "import sys\nsys.exit('refused: no reason')\n"),
    "exit_none": (EVENT, "raise SystemExit\n"),
    "raise": (EVENT, """
        def inner():
            raise ValueError('boom')
        print('before')
        inner()
    """),
    "raise_chained": (EVENT, """
        try:
            {}['x']
        except KeyError as e:
            raise RuntimeError('wrapped') from e
    """),
    "syntax": (EVENT, "print('x'\n"),
    "interrupt": (EVENT, "raise KeyboardInterrupt\n"),
    "signal": (EVENT, "import os, signal\nprint('dying', flush=True)\n"
                      "os.kill(os.getpid(), signal.SIGKILL)\n"),
    "streams": (EVENT, """
        import sys
        for i in range(3):
            print('out', i)
            print('err', i, file=sys.stderr)
        sys.stdout.write('no newline')
    """),
    "stdin": (EVENT, "import sys\nprint(repr(sys.stdin.read()))\n"),
    "vdsm": (EVENT, """
        from vdsm.hook import hooking
        import hooking as plain
        print(hooking is plain, hooking.tobool('true'))
        hooking.write_domxml(hooking.read_domxml())
    """),
    "main": (EVENT, """
        def main():
            print('main ran', __name__)
        if __name__ == '__main__':
            main()
    """),
    "identity": (EVENT, """
        import gc, os, signal, sys, threading
        print(sys.argv, __file__, __name__, __doc__, __package__, __spec__, __cached__)
        print([k for k in globals()], type(__loader__).__name__, __loader__.name, __loader__.path)
        print(sys.path[0], sys.orig_argv, sys.executable, sys.flags)
        print(os.getuid(), os.geteuid(), os.getgid(), sorted(os.getgroups()))
        print(os.getpgrp() == os.getpid(), os.getsid(0) == os.getsid(os.getppid()),
              os.getppid() == int(os.environ['agent_pid']), os.getcwd())
        print([signal.getsignal(s) for s in (signal.SIGINT, signal.SIGPIPE, signal.SIGTERM,
               signal.SIGCHLD, signal.SIGXFSZ, signal.SIGHUP)])
        print(signal.pthread_sigmask(signal.SIG_BLOCK, []))
        # (Descriptors the test process inherited leak into a cold hook; not
        # the warm path's doing: 0-3 only is checked below.)
        print([fd for fd in sorted(os.listdir('/proc/self/fd')) if int(fd) < 4],
              threading.active_count())
        print(threading.current_thread() is threading.main_thread(), gc.isenabled())
        print(os.umask(0o22), open('/proc/self/status').read().count('NoNewPrivs'),
              sys.stdout.line_buffering,
              sys.stdout.encoding, sys.stderr.errors, sys.stdin.isatty())
    """),
    "unreadable": (EVENT, ""),  # see MODES
    "unexecutable": (EVENT, ""),
    "unclosed": (EVENT, """
        import hooking, os
        doc = hooking.read_domxml()
        doc.documentElement.setAttribute('unclosed', '1')
        f = open(os.environ['_hook_domxml'], 'wb')
        f.write(doc.toxml(encoding='utf-8'))
    """),
    "atexit": (EVENT, """
        import atexit, sys
        atexit.register(lambda: print('at exit', file=sys.stderr))
        print('body')
    """),
    "thread": (EVENT, """
        import threading, time
        def late():
            time.sleep(0.2)
            print('thread done')
        threading.Thread(target=late).start()
        print('main done')
    """),
    "background": (EVENT, """
        import subprocess, sys
        subprocess.Popen(['sleep', '1'], stdout=sys.stdout)
        print('left a child')
    """),
    "fork": (EVENT, """
        import os
        pid = os.fork()
        if pid == 0:
            print('forked child', flush=True)
            os._exit(5)
        print('child status', os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    """),
}

# Executable but not readable; executable by its owner (root) only, not by the hook user.
MODES = {"unreadable": 0o111, "unexecutable": 0o744}


@pytest.fixture
def pool() -> Iterator[zygote.WarmPool]:
    p = zygote.WarmPool()
    yield p
    p.close()


def _runner(hooks_dir: Path, run_dir: Path, warm: bool, pool: zygote.WarmPool | None = None,
            records: RunRecords | None = None, **config: object) -> HookRunner:
    settings: dict[str, object] = {"default_timeout": 10.0, "grace": 0.2}
    settings.update(config)
    runner = HookRunner(RunnerConfig(hooks_dir, run_dir, warm_hooks=warm, **settings),  # type: ignore[arg-type]
                        records)
    if pool is not None:
        runner.warm = pool
    return runner


def _write(hooks_dir: Path, event: str, name: str, body: str, head: str = HEAD) -> Path:
    directory = hooks_dir / event
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(head + textwrap.dedent(body).lstrip())
    path.chmod(0o755)
    return path


def _payload(event: str) -> str:
    if event == "before_network_setup":
        return json.dumps({"request": {"networks": {}, "bondings": {}, "options": {}}})
    return DOMAIN


def _observed(result: ChainResult) -> list[object]:
    return [result.data, result.vetoed, [
        (r.script, r.outcome, r.rc, r.stdout, r.stderr, r.stdout_truncated, r.diff, r.message,
         r.stops_chain)
        for r in result.runs
    ]]


def _run(runner: HookRunner, event: str) -> ChainResult:
    return runner.run(event, _payload(event), vm_id=UUID, vm_props={"numa": "node0"})


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_warm_and_cold_are_indistinguishable(name: str, tmp_path: Path,
                                             pool: zygote.WarmPool,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("agent_pid", str(os.getpid()))
    event, body = CORPUS[name]
    hooks_dir = tmp_path / "hooks"
    script = _write(hooks_dir, event, f"10_{name}", body or "print('never')\n")
    script.chmod(MODES.get(name, 0o755))
    records = {w: RunRecords(tmp_path / f"state-{w}" / "hookruns.sqlite") for w in (True, False)}
    warm = _runner(hooks_dir, tmp_path / "run", True, pool, records[True])
    cold = _runner(hooks_dir, tmp_path / "run", False, records=records[False])
    # Twice each: the second warm run is a child of an already warm zygote.
    results = [_run(r, event) for r in (cold, warm, cold, warm)]
    # (A script the hook user cannot execute goes as far as the zygote's child,
    # which refuses it as execve(2) does: not counted as started.)
    assert pool.spawned == (0 if name == "unexecutable" else 2)
    assert _observed(results[1]) == _observed(results[0])
    assert _observed(results[3]) == _observed(results[2])
    assert _observed(results[1]) == _observed(results[3])
    warm_rec = [(r.outcome, r.rc, r.stdout, r.stderr, r.diff, r.message)
                for r in records[True].query()]
    cold_rec = [(r.outcome, r.rc, r.stdout, r.stderr, r.diff, r.message)
                for r in records[False].query()]
    assert warm_rec == cold_rec
    for r in records.values():
        r.close()


def test_corpus_outcomes_are_what_a_real_interpreter_gives(tmp_path: Path,
                                                           pool: zygote.WarmPool) -> None:
    """The comparison above can only fail if the corpus exercises something:
    pin what a few of its scripts do, warm."""
    hooks_dir = tmp_path / "hooks"
    expected = {"unreadable": 2, "exit3": 3, "exit_big": 7, "exit_text": 1, "raise": 1,
                "signal": -9, "interrupt": -2, "syntax": 1}
    for name in expected:
        script = _write(hooks_dir, EVENT, f"10_{name}", CORPUS[name][1] or "pass\n")
        script.chmod(MODES.get(name, 0o755))
        runner = _runner(hooks_dir, tmp_path / "run", True, pool)
        run = _run(runner, EVENT).runs[0]
        assert run.rc == expected[name], (name, run)
        (hooks_dir / EVENT / f"10_{name}").unlink()
    assert pool.spawned == len(expected)


def test_env_shebang_goes_warm(tmp_path: Path, pool: zygote.WarmPool,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    hooks_dir = tmp_path / "hooks"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    os.symlink(HOOK_PYTHON, bindir / "python3")
    tmp_path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    body = "import sys\nprint(sys.orig_argv[0], sys.executable)\n"
    _write(hooks_dir, EVENT, "10_env", body, head="#!/usr/bin/env python3\n")
    cold = _run(_runner(hooks_dir, tmp_path / "run", False), EVENT)
    warm = _run(_runner(hooks_dir, tmp_path / "run", True, pool), EVENT)
    assert pool.spawned == 1
    assert _observed(warm) == _observed(cold)
    assert warm.runs[0].stdout == f"python3 {bindir}/python3\n"


def test_what_stays_cold(tmp_path: Path, pool: zygote.WarmPool) -> None:
    hooks_dir = tmp_path / "hooks"
    _write(hooks_dir, EVENT, "10_opts", "print('u')\n", head=f"#!{HOOK_PYTHON} -u\n")
    _write(hooks_dir, EVENT, "20_sh", "echo sh\n", head="#!/bin/sh\n")
    _write(hooks_dir, EVENT, "30_optout", "print('out')\n")
    (hooks_dir / EVENT / "30_optout.toml").write_text("warm = false\n")
    result = _run(_runner(hooks_dir, tmp_path / "run", True, pool), EVENT)
    assert [r.stdout for r in result.runs] == ["u\n", "sh\n", "out\n"]
    assert pool.spawned == 0
    assert pool.pids() == []


@pytest.mark.parametrize("setting", [True, False])
def test_the_setting(tmp_path: Path, pool: zygote.WarmPool, setting: bool) -> None:
    hooks_dir = tmp_path / "hooks"
    _write(hooks_dir, EVENT, "10_a", "print('a')\n")
    conf = tmp_path / "hookvisor.toml"
    conf.write_text(f"warm_hooks = {str(setting).lower()}\n")
    config = RunnerConfig.from_settings(load_settings(conf, environ={}))
    runner = HookRunner(replace(config, hooks_dir=hooks_dir, run_dir=tmp_path / "run"))
    runner.warm = pool
    result = _run(runner, EVENT)
    assert result.ok and pool.spawned == (1 if setting else 0)


def test_a_hook_cannot_affect_the_next(tmp_path: Path, pool: zygote.WarmPool) -> None:
    hooks_dir = tmp_path / "hooks"
    _write(hooks_dir, EVENT, "10_meddle", """
        import hooking, os, sys, threading, time
        hooking.read_domxml = lambda: 1 / 0
        hooking.MEDDLED = True
        sys.path.insert(0, '/meddled')
        sys.modules['json'] = None
        os.environ['MEDDLED'] = '1'
        leaked = os.open('/dev/null', os.O_RDONLY)
        os.set_inheritable(leaked, True)
        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
        if os.fork() == 0:
            time.sleep(30)
        print('meddled', leaked)
    """)
    _write(hooks_dir, EVENT, "20_check", """
        import hooking, os, sys, threading, json
        doc = hooking.read_domxml()
        hooking.write_domxml(doc)
        print(hasattr(hooking, 'MEDDLED'), '/meddled' in sys.path, 'MEDDLED' in os.environ,
              threading.active_count(), sorted(os.listdir('/proc/self/fd')))
    """)
    runner = _runner(hooks_dir, tmp_path / "run", True, pool, kill_leftovers=True)
    for _ in range(2):
        result = _run(runner, EVENT)
        assert result.ok, result.message()
        assert result.runs[1].stdout == "False False False 1 ['0', '1', '2', '3']\n"
    assert pool.spawned == 4


def test_the_zygote_killed_mid_chain(tmp_path: Path, pool: zygote.WarmPool,
                                     caplog: pytest.LogCaptureFixture) -> None:
    hooks_dir = tmp_path / "hooks"
    _write(hooks_dir, EVENT, "10_first", "print('first')\n")
    for name in ("20_second", "30_third", "40_fourth"):
        _write(hooks_dir, EVENT, name, f"""
            import hooking, os, signal
            if '{name}' == '20_second':
                os.kill(int(os.environ['zygote']), signal.SIGKILL)
            doc = hooking.read_domxml()
            doc.documentElement.setAttribute('h{name[:2]}', '1')
            hooking.write_domxml(doc)
        """)
    runner = _runner(hooks_dir, tmp_path / "run", True, pool)
    _run(runner, EVENT)  # starts the zygote
    (zpid,) = pool.pids()
    before = pool.spawned
    result = runner.run(EVENT, DOMAIN, vm_id=UUID, vm_props={"zygote": str(zpid)})
    assert result.ok, result.message()
    assert all(f"h{n}=\"1\"" in result.data for n in ("20", "30", "40")), result.data
    # The first two went warm; the zygote was dead for the others: cold.
    assert pool.spawned == before + 2
    assert "run cold" in caplog.text
    assert sum("warm executor" in r.message for r in caplog.records) == 1


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_a_dead_zygote_is_restarted(tmp_path: Path, pool: zygote.WarmPool,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zygote, "RETRY_MIN", 0.0)
    hooks_dir = tmp_path / "hooks"
    _write(hooks_dir, EVENT, "10_a", "print('a')\n")
    runner = _runner(hooks_dir, tmp_path / "run", True, pool)
    _run(runner, EVENT)
    (first,) = pool.pids()
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: _gone(first))
    assert _run(runner, EVENT).ok
    (second,) = pool.pids()
    assert second != first
    assert pool.spawned == 2


def test_a_timeout_under_the_warm_path_leaves_no_process(tmp_path: Path,
                                                         pool: zygote.WarmPool) -> None:
    hooks_dir = tmp_path / "hooks"
    _write(hooks_dir, EVENT, "10_slow", """
        import signal, subprocess, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        subprocess.Popen(['sleep', '60'])
        time.sleep(60)
    """)
    (hooks_dir / EVENT / "10_slow.toml").write_text("timeout = 0.5\n")
    result = _run(_runner(hooks_dir, tmp_path / "run", True, pool), EVENT)
    (run,) = result.runs
    assert pool.spawned == 1
    assert run.outcome == "timeout" and result.vetoed
    assert run.pgid is not None and not group_alive(run.pgid)


@pytest.mark.skipif(not identity.can_switch(), reason="needs root to switch users")
def test_warm_hooks_run_as_the_hook_user(tmp_path: Path, pool: zygote.WarmPool) -> None:
    user = identity.lookup("hookvisor")
    hooks_dir = tmp_path / "hooks"
    tmp_path.chmod(0o755)
    _write(hooks_dir, EVENT, "10_who", """
        import os
        print(os.getuid(), os.geteuid(), os.getgid(), sorted(os.getgroups()))
    """)
    result = _run(_runner(hooks_dir, tmp_path / "run", True, pool), EVENT)
    assert pool.spawned == 1
    assert result.runs[0].stdout == f"{user.uid} {user.uid} {user.gid} {sorted(user.groups)}\n"
    for zpid in pool.pids():
        with open(f"/proc/{zpid}/status") as f:
            uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
        assert set(uids) == {str(user.uid)}


def test_the_zygote_holds_no_descriptor_of_the_agent(tmp_path: Path,
                                                     pool: zygote.WarmPool) -> None:
    hooks_dir = tmp_path / "hooks"
    _write(hooks_dir, EVENT, "10_a", "print('a')\n")
    keep = os.open("/dev/null", os.O_RDONLY)  # inheritable: a cold spawn would pass it
    os.set_inheritable(keep, True)
    try:
        _run(_runner(hooks_dir, tmp_path / "run", True, pool), EVENT)
    finally:
        os.close(keep)
    (zpid,) = pool.pids()
    (spare,) = wait_for(pool.spare_pids)
    fds = sorted(int(fd) for fd in os.listdir(f"/proc/{zpid}/fd"))
    assert len(fds) == 5  # /dev/null x3, its socket to the agent and to its spare
    assert [os.readlink(f"/proc/{zpid}/fd/{fd}") for fd in fds[:3]] == ["/dev/null"] * 3
    assert all(os.readlink(f"/proc/{zpid}/fd/{fd}").startswith("socket:") for fd in fds[3:])
    # The spare: /dev/null x3 and its socket to the zygote, nothing else.
    wait_for(lambda: len(os.listdir(f"/proc/{spare}/fd")) == 4)
    spare_fds = sorted(int(fd) for fd in os.listdir(f"/proc/{spare}/fd"))
    assert [os.readlink(f"/proc/{spare}/fd/{fd}") for fd in spare_fds[:3]] == ["/dev/null"] * 3
    for pid in (zpid, spare):
        with open(f"/proc/{pid}/status") as f:
            assert next(line for line in f if line.startswith("Threads:")).split()[1] == "1"


def _children() -> set[int]:
    """This process's children, zombies included."""
    found: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            found.update(int(pid) for pid in f.read().split())
    return found


def test_a_spare_takes_the_next_hook(tmp_path: Path, pool: zygote.WarmPool) -> None:
    hooks_dir = tmp_path / "hooks"
    _write(hooks_dir, EVENT, "10_pid", "import os\nprint(os.getpid(), os.getppid())\n")
    runner = _runner(hooks_dir, tmp_path / "run", True, pool)
    _run(runner, EVENT)
    (spare,) = wait_for(pool.spare_pids)
    assert spare in _children()  # ours to reap, though the zygote made it
    # Once it has warmed up (it says so to the zygote, then waits in
    # recvmsg), a request goes to it.
    wait_for(lambda: _waiting_for_a_request(spare))
    result = _run(runner, EVENT)
    assert result.runs[0].stdout == f"{spare} {os.getpid()}\n"
    assert spare not in pool.spare_pids()


def _waiting_for_a_request(pid: int) -> bool:
    recvmsg = {"x86_64": "47", "aarch64": "212"}[platform.machine()]
    with open(f"/proc/{pid}/syscall") as f:
        return f.read().split()[0] == recvmsg


@pytest.mark.skipif(not identity.can_switch(), reason="needs root to switch users")
def test_a_spare_runs_as_the_hook_user_and_cannot_be_traced(tmp_path: Path,
                                                           pool: zygote.WarmPool) -> None:
    user = identity.lookup("hookvisor")
    tmp_path.chmod(0o755)
    hooks_dir = tmp_path / "hooks"
    _write(hooks_dir, EVENT, "10_a", "print('a')\n")
    _run(_runner(hooks_dir, tmp_path / "run", True, pool), EVENT)
    (spare,) = wait_for(pool.spare_pids)
    with open(f"/proc/{spare}/status") as f:
        uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
    assert set(uids) == {str(user.uid)}
    # Not dumpable: its /proc files are root's, so another hook (same user)
    # can neither ptrace it nor open its descriptors.
    assert os.stat(f"/proc/{spare}/fd").st_uid == 0


def test_a_killed_spare_costs_nothing(tmp_path: Path, pool: zygote.WarmPool) -> None:
    hooks_dir = tmp_path / "hooks"
    _write(hooks_dir, EVENT, "10_a", """
        import hooking
        doc = hooking.read_domxml()
        doc.documentElement.setAttribute('a', '1')
        hooking.write_domxml(doc)
    """)
    runner = _runner(hooks_dir, tmp_path / "run", True, pool)
    _run(runner, EVENT)
    (spare,) = wait_for(pool.spare_pids)
    os.kill(spare, signal.SIGKILL)  # as any hook could: same user
    wait_for(lambda: _gone(spare))
    result = _run(runner, EVENT)
    assert result.ok and 'a="1"' in result.data
    assert pool.spawned == 2  # warm still: the zygote cloned a child for it
    # The dead spare was reaped (not left a zombie of ours) and replaced.
    wait_for(lambda: spare not in _children())
    assert wait_for(pool.spare_pids) != [spare]


def test_spares_go_with_their_zygote(tmp_path: Path) -> None:
    p = zygote.WarmPool()
    hooks_dir = tmp_path / "hooks"
    _write(hooks_dir, EVENT, "10_a", "print('a')\n")
    runner = _runner(hooks_dir, tmp_path / "run", True, p)
    _run(runner, EVENT)
    (zpid,) = p.pids()
    (spare,) = wait_for(p.spare_pids)
    os.kill(zpid, signal.SIGKILL)
    wait_for(lambda: _gone(spare))  # it exits once its zygote has
    assert _run(runner, EVENT).ok  # the dead zygote is closed: its spare reaped
    assert spare not in _children()
    p.close()
    assert not _children() & {zpid, spare}


def test_a_pool_nobody_closed_leaves_nothing(tmp_path: Path) -> None:
    hooks_dir = tmp_path / "hooks"
    _write(hooks_dir, EVENT, "10_a", "print('a')\n")
    runner = _runner(hooks_dir, tmp_path / "run", True, zygote.WarmPool())
    _run(runner, EVENT)
    (zpid,) = runner.warm.pids()
    (spare,) = wait_for(runner.warm.spare_pids)
    del runner
    gc.collect()
    assert not _children() & {zpid, spare}  # gone, and reaped: no zombie


def test_a_script_replaced_after_its_shebang_was_read_runs_cold(tmp_path: Path,
                                                                pool: zygote.WarmPool) -> None:
    """The agent chose the warm path from the #! line it read; the child checks
    the line of what it is about to run and hands back one that changed."""
    hooks_dir = tmp_path / "hooks"
    python_body = "print('python')\n"
    script = _write(hooks_dir, EVENT, "10_a", python_body)
    runner = _runner(hooks_dir, tmp_path / "run", True, pool)
    assert _run(runner, EVENT).runs[0].stdout == "python\n"
    st = script.stat()
    shell = "#!/bin/sh\necho shell\n"
    shell = shell + "#" * (len(HEAD + python_body) - len(shell) - 1) + "\n"
    assert len(shell) == st.st_size
    script.write_text(shell)
    os.utime(script, ns=(st.st_atime_ns, st.st_mtime_ns))  # the agent's caches see no change
    run = _run(runner, EVENT).runs[0]
    assert (run.outcome, run.stdout) == ("ok", "shell\n")
    assert pool.spawned == 1
    assert pool.pids()  # the zygote is fine and kept


@pytest.mark.parametrize(("first_line", "expected"), [
    (f"#!{HOOK_PYTHON}", (HOOK_PYTHON, HOOK_PYTHON)),
    (f"#! {HOOK_PYTHON}  ", (HOOK_PYTHON, HOOK_PYTHON)),
    (f"#!{HOOK_PYTHON} -u", None),  # an interpreter option
    (f"#!{HOOK_PYTHON} -S", None),
    ("#!/usr/bin/env python3 -u", None),  # env passes "python3 -u" as one name
    ("#!/usr/bin/env -S python3", None),
    ("#!/bin/sh", None),
    ("#!/usr/bin/perl", None),
    ("#!python3", None),  # relative: the kernel would not run it
    (f"#!{HOOK_PYTHON}\r", None),  # CRLF: the kernel looks for "python3\r"
    ("import os", None),
])
def test_which_first_lines_go_warm(tmp_path: Path, first_line: str,
                                   expected: tuple[str, str] | None) -> None:
    script = tmp_path / "hook"
    script.write_bytes(first_line.encode() + b"\nprint(1)\n")
    shebang = zygote.read_shebang(str(script))
    assert zygote.warm_target(shebang, {"PATH": "/usr/bin:/bin"}) == expected
    if expected is not None:
        assert shebang is not None and shebang.line == first_line.encode()


def test_env_resolution_follows_path_and_skips_what_the_user_cannot_run(
        tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    private, public = tmp_path / "private", tmp_path / "public"
    for d in (private, public):
        d.mkdir()
        os.symlink(HOOK_PYTHON, d / "python3")
    shebang = zygote.Shebang(b"/usr/bin/env", b"python3")
    env = {"PATH": f"{private}:{public}:/usr/bin"}
    assert zygote.warm_target(shebang, env) == (f"{private}/python3", "python3")
    if identity.can_switch():
        private.chmod(0o700)  # root's: the hook user's execvp skips it
        user = identity.lookup("hookvisor")
        assert zygote.warm_target(shebang, env, user) == (f"{public}/python3", "python3")
    assert zygote.warm_target(shebang, {"PATH": str(tmp_path / "none")}) is None


def test_a_zygote_that_does_not_answer_is_replaced(tmp_path: Path, pool: zygote.WarmPool,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zygote, "REPLY_TIMEOUT", 0.5)
    hooks_dir = tmp_path / "hooks"
    _write(hooks_dir, EVENT, "10_a", "print('a')\n")
    runner = _runner(hooks_dir, tmp_path / "run", True, pool)
    _run(runner, EVENT)
    (stuck,) = pool.pids()
    os.kill(stuck, signal.SIGSTOP)
    try:
        result = _run(runner, EVENT)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stuck, signal.SIGCONT)
    assert result.runs[0].stdout == "a\n"  # cold, once
    assert pool.spawned == 1 and pool.pids() == []
    wait_for(lambda: _gone(stuck))  # killed, not left stopped


def test_prewarm_starts_the_zygote_the_installed_hooks_use(tmp_path: Path,
                                                           pool: zygote.WarmPool) -> None:
    hooks_dir = tmp_path / "hooks"
    _write(hooks_dir, EVENT, "10_a", "print('a')\n")
    _write(hooks_dir, "after_vm_destroy", "10_b", "print('b')\n")
    _write(hooks_dir, EVENT, "20_sh", "echo sh\n", head="#!/bin/sh\n")
    runner = _runner(hooks_dir, tmp_path / "run", True, pool)
    thread = runner.prewarm()
    assert thread is not None
    thread.join()
    (started,) = pool.pids()  # one key: both Python hooks share it
    assert _run(runner, EVENT).ok
    assert pool.pids() == [started] and pool.spawned == 1  # the chain used it


def test_prewarm_without_python_hooks_starts_nothing(tmp_path: Path,
                                                     pool: zygote.WarmPool) -> None:
    hooks_dir = tmp_path / "hooks"
    _write(hooks_dir, EVENT, "20_sh", "echo sh\n", head="#!/bin/sh\n")
    assert _runner(hooks_dir, tmp_path / "run", True, pool).prewarm() is None
    assert _runner(hooks_dir, tmp_path / "run", False, pool).prewarm() is None
    assert pool.pids() == []
