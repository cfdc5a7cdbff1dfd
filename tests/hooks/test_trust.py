"""The trust boundary of the hook engine: who runs a hook, which scripts may
run, what a hook can make the agent hold, and what a dead agent left behind."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from hookvisor.cli.main import main
from hookvisor.hooks import diffs, identity
from hookvisor.hooks.records import RunRecords
from hookvisor.hooks.runner import HookRunner, RunnerConfig

from .conftest import MakeRunner
from .util import DOMAIN, UUID, group_alive, leftovers, sh, write_hook

EV = "before_vm_start"
HOOK_USER = "hookvisor"
ROOT = os.geteuid() == 0


def _hook_user_or_skip() -> pwd.struct_passwd:
    if not ROOT and os.environ.get("CI") != "true":
        pytest.skip("hooks switch user only when the agent is root")
    assert ROOT, "CI runs the tests as root"
    try:
        return pwd.getpwnam(HOOK_USER)
    except KeyError:
        pytest.fail(f"no {HOOK_USER} user: run scripts/setup.sh as root")


@pytest.mark.parametrize("fork_exec", [True, False], ids=["fork_exec", "popen"])
def test_hook_runs_as_the_hook_user(hooks_dir: Path, make_runner: MakeRunner,
                                    monkeypatch: pytest.MonkeyPatch, fork_exec: bool) -> None:
    pw = _hook_user_or_skip()
    # Both ways of starting a hook as another user (Popen: Pythons past 3.13).
    from hookvisor.hooks import spawn

    monkeypatch.setattr(spawn, "_FORK_EXEC", fork_exec)
    write_hook(hooks_dir, EV, "10_id", sh("""
        id -u; id -g; id -G
        echo "$HOME $USER $LOGNAME"
        stat -c '%u %a' "$_hook_domxml" "$(dirname "$_hook_domxml")" "$_hook_launchflags_dir"
    """))
    result = make_runner().run(EV, DOMAIN, vm_id=UUID)
    assert result.ok, result.message()
    lines = result.runs[0].stdout.splitlines()
    assert int(lines[0]) == pw.pw_uid
    assert int(lines[1]) == pw.pw_gid
    assert sorted(map(int, lines[2].split())) == sorted(os.getgrouplist(HOOK_USER, pw.pw_gid))
    assert lines[3] == f"{pw.pw_dir} {HOOK_USER} {HOOK_USER}"
    # The data file, its directory and the launch-flags dir: the hook user's only.
    assert lines[4:7] == [f"{pw.pw_uid} 600", f"{pw.pw_uid} 700", f"{pw.pw_uid} 700"]


@pytest.mark.parametrize("event", ["before_vdsm_start", "after_vdsm_stop"])
def test_vdsm_start_and_stop_run_as_root(hooks_dir: Path, make_runner: MakeRunner,
                                          event: str) -> None:
    _hook_user_or_skip()
    write_hook(hooks_dir, event, "10_id", sh("id -u; echo $HOME\n"))
    result = make_runner().run(event)
    assert result.ok, result.message()
    assert result.runs[0].stdout.splitlines()[0] == "0"


def test_missing_hook_user_fails_the_chain_and_the_start(hooks_dir: Path,
                                                         make_runner: MakeRunner) -> None:
    _hook_user_or_skip()
    write_hook(hooks_dir, EV, "10_x", sh("exit 0\n"))
    result = make_runner(hook_user="hv-no-such-user").run(EV, DOMAIN)
    assert result.vetoed
    assert "hv-no-such-user" in result.message() and "useradd --system" in result.message()
    problem = identity.check("hv-no-such-user")
    assert problem is not None and "hv-no-such-user" in problem
    assert identity.check(HOOK_USER) is None


def test_serve_refuses_to_start_without_the_hook_user(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    _hook_user_or_skip()
    from hookvisor.cli.serve_cmd import serve
    from hookvisor.config import load_settings

    conf = tmp_path / "hookvisor.toml"
    conf.write_text(f'hook_user = "hv-no-such-user"\nstate_dir = "{tmp_path}/state"\n'
                    f'run_dir = "{tmp_path}/run"\nhooks_dir = "{tmp_path}/hooks"\n')
    settings = load_settings(conf, environ={})
    rc: list[int] = []
    # On a thread: on the main one serve() would install its signal handlers here.
    thread = threading.Thread(target=lambda: rc.append(serve(settings, stop=threading.Event())))
    thread.start()
    thread.join(60)
    assert rc == [1]
    assert "hv-no-such-user" in caplog.text and "useradd" in caplog.text


@pytest.mark.parametrize(
    ("what", "mode_of"),
    [("group-writable script", "script"), ("world-writable event dir", "event_dir"),
     ("group-writable hooks dir", "hooks_dir")],
)
def test_writable_by_others_refused_and_named(hooks_dir: Path, make_runner: MakeRunner,
                                              what: str, mode_of: str) -> None:
    script = write_hook(hooks_dir, EV, "10_x", sh("echo ran\n"))
    target = {"script": script, "event_dir": script.parent, "hooks_dir": hooks_dir}[mode_of]
    target.chmod(0o777 if mode_of == "event_dir" else 0o775)
    result = make_runner(records=True).run(EV, DOMAIN)
    run = result.runs[0]
    assert run.outcome == "failed" and run.stdout == ""  # never started
    assert result.vetoed
    assert str(target) in result.message()
    assert f"chmod go-w {target}; chown root {target}" in result.message()
    # After events fail too (logged and recorded), they only do not veto.
    write_hook(hooks_dir, "after_vm_start", "10_y", sh("echo ran\n"))
    if mode_of == "script":
        (hooks_dir / "after_vm_start" / "10_y").chmod(0o757)
    elif mode_of == "event_dir":
        (hooks_dir / "after_vm_start").chmod(0o777)
    after = make_runner().run("after_vm_start", DOMAIN)
    assert after.runs[0].outcome == "failed" and not after.vetoed


def test_record_names_the_refused_file(hooks_dir: Path, make_runner: MakeRunner,
                                       tmp_path: Path) -> None:
    script = write_hook(hooks_dir, EV, "10_x", sh("exit 0\n"))
    script.chmod(0o775)
    store = RunRecords(tmp_path / "state" / "hookruns.sqlite")
    make_runner(records=store).run(EV, DOMAIN)
    (record,) = store.query()
    assert record.failed and str(script) in record.message and "chmod go-w" in record.message


def test_owner_other_than_root_refused(hooks_dir: Path, make_runner: MakeRunner) -> None:
    pw = _hook_user_or_skip()
    script = write_hook(hooks_dir, EV, "10_x", sh("exit 0\n"))
    os.chown(script, pw.pw_uid, -1)
    result = make_runner().run(EV, DOMAIN)
    assert result.vetoed and f"owned by uid {pw.pw_uid}" in result.message()


def test_symlink_target_checked(hooks_dir: Path, make_runner: MakeRunner,
                                tmp_path: Path) -> None:
    elsewhere = tmp_path / "lib"
    elsewhere.mkdir()
    real = elsewhere / "real"
    real.write_text(sh("echo via link\n"))
    real.chmod(0o755)
    (hooks_dir / EV).mkdir()
    (hooks_dir / EV / "10_link").symlink_to(real)
    ok = make_runner().run(EV, DOMAIN)
    assert ok.ok and ok.runs[0].stdout == "via link\n"
    real.chmod(0o775)
    bad = make_runner().run(EV, DOMAIN)
    assert bad.vetoed and str(real) in bad.message()


def test_list_shows_a_refused_script(hooks_dir: Path, capsys: pytest.CaptureFixture[str],
                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty.toml").write_text("")
    monkeypatch.setenv("HOOKVISOR_CONFIG", str(tmp_path / "empty.toml"))
    write_hook(hooks_dir, EV, "10_good", sh("exit 0\n"))
    bad = write_hook(hooks_dir, EV, "20_bad", sh("exit 0\n"))
    bad.chmod(0o775)
    assert main(["hooks", "list", "--hooks-dir", str(hooks_dir)]) == 0
    out = capsys.readouterr().out
    assert "REFUSED" in out and f"chmod go-w {bad}" in out
    assert main(["hooks", "list", "--hooks-dir", str(hooks_dir), "--json"]) == 0
    scripts = json.loads(capsys.readouterr().out)["events"][EV]
    assert scripts[0]["refused"] is None and str(bad) in scripts[1]["refused"]


def test_cannot_execute_as_the_hook_user(hooks_dir: Path, make_runner: MakeRunner,
                                         tmp_path: Path) -> None:
    _hook_user_or_skip()
    # Root may read it, the hook user may not even reach it.
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (hooks_dir / EV).mkdir()
    real = private / "real"
    real.write_text(sh("exit 0\n"))
    real.chmod(0o755)
    (hooks_dir / EV / "10_x").symlink_to(real)
    result = make_runner().run(EV, DOMAIN)
    assert result.vetoed and "cannot execute" in result.message()
    assert "Permission denied" in result.message()


# --- what a hook can make the agent hold ------------------------------------------


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_output_flood_is_capped_while_read(hooks_dir: Path, make_runner: MakeRunner) -> None:
    write_hook(hooks_dir, EV, "10_yes", sh("""
        yes >&2 &
        timeout 3 yes
        kill $!
        echo done >&2
        exit 0
    """))
    cap = 4096
    before = _rss_kib()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], _rss_kib())

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = make_runner(records=True, output_cap=cap).run(EV, DOMAIN)
    finally:
        done.set()
        sampler.join()
    run = result.runs[0]
    assert run.outcome == "ok", run.describe()
    assert run.stdout == "y\n" * (cap // 2) and run.stdout_truncated
    assert len(run.stderr) == cap and run.stderr_truncated
    # Gigabytes went through; the test process (the agent) held none of it.
    assert peak[0] - before < 64 * 1024, f"RSS grew by {peak[0] - before} KiB"


def test_output_cap_from_settings(tmp_path: Path) -> None:
    from hookvisor.config import load_settings

    conf = tmp_path / "c.toml"
    conf.write_text("hook_output_cap = 1234\nhook_diff_cap = 999\nhook_user = \"someone\"\n")
    config = RunnerConfig.from_settings(load_settings(conf, environ={}))
    assert (config.output_cap, config.diff_cap, config.hook_user) == (1234, 999, "someone")


def test_diff_of_a_big_domain_is_small_and_capped(hooks_dir: Path,
                                                  make_runner: MakeRunner) -> None:
    devices = "".join(f"<disk type='file'><source file='/img/{i}.raw'/></disk>\n"
                      for i in range(200_000))
    big = f"<domain><name>vm1</name><uuid>{UUID}</uuid><devices>\n{devices}</devices></domain>\n"
    assert len(big) > 10_000_000
    write_hook(hooks_dir, EV, "10_one", sh("sed -i 's#/img/123456.raw#/img/x.raw#' "
                                          '"$_hook_domxml"\n'))
    run = make_runner().run(EV, big).runs[0]
    assert run.outcome == "ok", run.describe()
    assert "-<disk type='file'><source file='/img/123456.raw'/></disk>" in run.diff
    assert "+<disk type='file'><source file='/img/x.raw'/></disk>" in run.diff
    assert "@@ -123455,7 +123455,7 @@" in run.diff  # line numbers of the whole file
    assert len(run.diff) < 2000 and not diffs.was_cut(run.diff)

    write_hook(hooks_dir, EV, "10_one", sh("sed -i 's#raw#qcow2#' \"$_hook_domxml\"\n"))
    cap = 100_000
    run = make_runner(diff_cap=cap).run(EV, big).runs[0]
    assert run.outcome == "ok"
    assert len(run.diff.encode()) <= cap + 100 and diffs.was_cut(run.diff)


@pytest.mark.parametrize(
    ("before", "after"),
    [("a\nb\nc\n", "a\nB\nc\n"), ("", "x\n"), ("x\n", ""), ("1\n2\n3\n4\n5\n6\n7\n8\n9\n",
     "1\n2\n3\n4\nfive\n6\n7\n8\nnine\n"), ("no newline", "no newline!"),
     ("a\n" * 20 + "z\n", "a\n" * 21 + "z\n")],
)
def test_bounded_diff_says_what_difflib_says(before: str, after: str) -> None:
    import difflib

    ours = diffs.unified(before.encode(), after.encode(), "s", 1 << 20)
    changes = [line for line in ours.splitlines() if line[:1] in "+-" and line[:3] not in
               ("---", "+++")]
    theirs = [line.rstrip("\n") for line in difflib.unified_diff(
        before.splitlines(True), after.splitlines(True)) if line[:1] in "+-"
        and line[:3] not in ("---", "+++")]
    assert changes == theirs


def test_data_file_replaced_by_a_symlink_is_not_followed(hooks_dir: Path,
                                                         make_runner: MakeRunner,
                                                         tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("<domain>TOP SECRET</domain>")
    secret.chmod(0o600)
    write_hook(hooks_dir, EV, "10_link", sh(f'rm -f "$_hook_domxml"; '
                                           f'ln -s {secret} "$_hook_domxml"\n'))
    write_hook(hooks_dir, EV, "20_next", sh("exit 0\n"))
    result = make_runner().run(EV, DOMAIN)
    run = result.runs[0]
    assert run.outcome == "invalid-output" and "symlink" in run.message
    assert result.vetoed and "SECRET" not in run.diff and result.data == DOMAIN


def test_data_file_growing_past_the_cap_is_refused(hooks_dir: Path,
                                                  make_runner: MakeRunner) -> None:
    write_hook(hooks_dir, EV, "10_big", sh('head -c 5000 /dev/zero >> "$_hook_domxml"\n'))
    result = make_runner(data_cap=4096).run(EV, DOMAIN)
    assert result.runs[0].outcome == "invalid-output" and "beyond 4096" in result.message()
    assert result.data == DOMAIN


def test_a_plain_chain_leaves_no_group_file(hooks_dir: Path, make_runner: MakeRunner,
                                            run_dir: Path) -> None:
    write_hook(hooks_dir, EV, "10_x", sh("exit 0\n"))
    make_runner().run(EV, DOMAIN)
    assert list((run_dir / "hookgroups").iterdir()) == []


# --- records -----------------------------------------------------------------------


def test_lost_records_counted_with_their_cause(hooks_dir: Path, make_runner: MakeRunner,
                                               tmp_path: Path) -> None:
    write_hook(hooks_dir, EV, "10_x", sh("exit 0\n"))
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    runner = make_runner(records=RunRecords(blocker / "hookruns.sqlite"))
    assert runner.record_failures == 0
    assert runner.run(EV, DOMAIN).ok
    runner.run(EV, DOMAIN)
    assert runner.record_failures == 2
    assert str(blocker) in runner.last_record_error
    assert "FileExistsError" in runner.last_record_error or "NotADirectory" in \
        runner.last_record_error


# --- what a dead agent left ------------------------------------------------------

_DYING_AGENT = """
import sys
from pathlib import Path
from hookvisor.hooks.runner import HookRunner, RunnerConfig
HookRunner(RunnerConfig(Path(sys.argv[1]), Path(sys.argv[2]), default_timeout=600)).run(
    "before_vm_start", "<domain/>")
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_groups_of_a_killed_agent_are_killed_at_the_next_start(
    hooks_dir: Path, run_dir: Path, tmp_path: Path, make_runner: MakeRunner
) -> None:
    marker = tmp_path / "pids"
    write_hook(hooks_dir, EV, "10_hang", sh(f"""
        sleep 600 &
        echo "$$ $!" > {marker}.tmp && mv {marker}.tmp {marker}
        sleep 600
    """))
    agent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_DYING_AGENT),
                              str(hooks_dir), str(run_dir)])
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert agent.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        pids = [int(p) for p in marker.read_text().split()]
        # The agent notes the group just after the spawn returns: under load the
        # hook can get here first (the window docs/hooks.md names).
        while not list((run_dir / "hookgroups").glob("*")):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        assert all(_alive(p) for p in pids)  # the dead agent left them running
        assert len(list((run_dir / "hookgroups").iterdir())) == 1

        runner = make_runner()
        assert runner.cleanup_stale() >= 2  # the group and the chain's directory
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(_alive(p) for p in pids) and not group_alive(pids[0])
        assert leftovers(run_dir) == [] and list((run_dir / "hookgroups").iterdir()) == []
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_reused_pgid_is_never_killed(run_dir: Path, make_runner: MakeRunner) -> None:
    # A group file of a dead agent that names a live process group, but with
    # another start time: a pgid reused since; it must survive the cleanup.
    victim = subprocess.Popen(["sleep", "600"], process_group=0)
    try:
        groups_dir = run_dir / "hookgroups"
        groups_dir.mkdir(parents=True)
        from hookvisor.hooks.groups import boot_id, proc_stat

        stat = proc_stat(victim.pid)
        assert stat is not None
        (groups_dir / "999999999-x").write_text(
            f"agent 999999999 1 {boot_id()}\n{victim.pid} {stat[2] - 1} 0 10_old\n")
        make_runner().cleanup_stale()
        assert victim.poll() is None and not (groups_dir / "999999999-x").exists()
    finally:
        victim.kill()
        victim.wait()


def test_stale_launch_flags_removed_at_start(run_dir: Path, tmp_path: Path) -> None:
    flags = run_dir / "launchflags"
    flags.mkdir(parents=True)
    old = flags / UUID
    old.write_text("1")
    os.utime(old, (time.time() - 60, time.time() - 60))
    runner = HookRunner(RunnerConfig(tmp_path / "hooks", run_dir))
    new = flags / "written-after-start"
    new.write_text("1")
    assert runner.cleanup_stale() == 1
    assert not old.exists() and new.exists()
    new.unlink()


def test_group_writable_manifest_refuses_its_script(hooks_dir: Path,
                                                    make_runner: MakeRunner) -> None:
    # A manifest can make its script skip (when_property): as trusted as the script.
    write_hook(hooks_dir, EV, "10_guard", sh("exit 0\n"))
    manifest = write_hook(hooks_dir, EV, "10_guard.toml", "timeout = 5\n", mode=0o664)
    result = make_runner().run(EV, DOMAIN)
    assert result.vetoed and str(manifest) in result.message()


def test_unreachable_helpers_only_warned(tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    _hook_user_or_skip()
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    assert identity.check(HOOK_USER, private / "helpers") is None
    assert "cannot import hooking" in caplog.text
    caplog.clear()
    assert identity.check(HOOK_USER) is None  # this checkout's helpers: reachable
    assert "cannot import hooking" not in caplog.text
