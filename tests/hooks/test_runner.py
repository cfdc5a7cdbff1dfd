"""Running a chain: data, environment, return codes, discard on failure, cleanup."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from support import deny_hook_listing

from hookvisor.hooks import runner as runner_mod
from hookvisor.hooks.runner import HookRunner

from .conftest import MakeRunner
from .util import DEVICE, DOMAIN, UUID, leftovers, py, sh, write_hook

EV = "before_vm_start"


def test_no_scripts_returns_the_data(make_runner: MakeRunner) -> None:
    result = make_runner().run(EV, DOMAIN, vm_id=UUID)
    assert (result.data, result.runs, result.vetoed, result.ok) == (DOMAIN, [], False, True)


def test_chain_shares_the_data_in_order(hooks_dir: Path, make_runner: MakeRunner) -> None:
    write_hook(hooks_dir, EV, "10_a", sh("""
        sed -i 's#<memory unit=.MiB.>512</memory>#<memory unit="MiB">1024</memory>#' \
            "$_hook_domxml"
    """))
    write_hook(hooks_dir, EV, "20_b", sh("""
        grep -q '>1024<' "$_hook_domxml" || exit 2
        sed -i 's#</devices>#<rng model="virtio"/></devices>#' "$_hook_domxml"
    """))
    result = make_runner().run(EV, DOMAIN, vm_id=UUID)
    assert result.ok, result.message()
    assert [r.outcome for r in result.runs] == ["ok", "ok"]
    assert '<memory unit="MiB">1024</memory>' in result.data
    assert '<rng model="virtio"/>' in result.data
    # The diff is of the canonical XML: only the changed element, one per line;
    # the raw bytes' diff (one long line rewritten) is kept beside it.
    diff = result.runs[0].diff
    assert diff.startswith("--- before 10_a (canonical)")
    assert '-  <memory unit="MiB">512</memory>\n+  <memory unit="MiB">1024</memory>' in diff
    assert "<domain" not in "".join(line for line in diff.splitlines() if line[:1] in "+-"
                                    and not line.startswith(("---", "+++")))
    assert "+<domain" in result.runs[0].raw_diff


@pytest.mark.parametrize(
    ("rc", "outcome", "runs_after", "vetoed"),
    [(0, "ok", True, False), (1, "failed", True, True), (2, "failed", False, True),
     (3, "failed", True, True), (77, "failed", True, True)],
)
def test_return_codes(hooks_dir: Path, make_runner: MakeRunner, rc: int, outcome: str,
                      runs_after: bool, vetoed: bool) -> None:
    write_hook(hooks_dir, EV, "10_x", sh(f"echo 'why {rc}' >&2; exit {rc}\n"))
    write_hook(hooks_dir, EV, "20_next", sh("exit 0\n"))
    result = make_runner().run(EV, DOMAIN, vm_id=UUID)
    first = result.runs[0]
    assert (first.outcome, first.rc) == (outcome, rc)
    assert [r.script for r in result.runs] == (["10_x", "20_next"] if runs_after else ["10_x"])
    assert result.vetoed is vetoed
    if rc:
        assert "10_x" in result.message() and f"why {rc}" in result.message()
        assert f"rc={rc}" in result.message()
    if rc > 2:
        assert "reserved" in first.message


def test_every_failure_recorded_not_only_the_last(hooks_dir: Path,
                                                 make_runner: MakeRunner) -> None:
    write_hook(hooks_dir, EV, "10_a", sh("echo first >&2; exit 1\n"))
    write_hook(hooks_dir, EV, "20_b", sh("echo second >&2; exit 1\n"))
    result = make_runner().run(EV, DOMAIN)
    assert [r.script for r in result.failures] == ["10_a", "20_b"]
    assert "first" in result.message() and "second" in result.message()


def test_after_event_failure_never_vetoes(hooks_dir: Path, make_runner: MakeRunner) -> None:
    write_hook(hooks_dir, "after_vm_start", "10_x", sh("exit 2\n"))
    result = make_runner().run("after_vm_start", DOMAIN, vm_id=UUID)
    assert result.failures and not result.vetoed


def test_killed_by_signal_fails_and_stops(hooks_dir: Path, make_runner: MakeRunner) -> None:
    write_hook(hooks_dir, EV, "10_x", sh("kill -KILL $$\n"))
    write_hook(hooks_dir, EV, "20_next", sh("exit 0\n"))
    result = make_runner().run(EV, DOMAIN)
    assert [r.script for r in result.runs] == ["10_x"]
    assert result.runs[0].rc == -9 and "SIGKILL" in result.runs[0].message
    assert result.vetoed


def test_cannot_execute_is_a_failure(hooks_dir: Path, make_runner: MakeRunner) -> None:
    write_hook(hooks_dir, EV, "10_noshebang", "just text, no interpreter\n")
    result = make_runner().run(EV, DOMAIN)
    assert result.runs[0].outcome == "failed" and "cannot execute" in result.runs[0].message
    assert result.vetoed


def test_failing_script_edits_discarded(hooks_dir: Path, make_runner: MakeRunner) -> None:
    write_hook(hooks_dir, EV, "10_break", sh("""
        echo '<domain><name>junk</name></domain>' > "$_hook_domxml"
        exit 1
    """))
    write_hook(hooks_dir, EV, "20_sees", sh("""
        cat "$_hook_domxml"
        sed -i 's#<disk type=.file./>#<disk type="block"/>#' "$_hook_domxml"
    """))
    result = make_runner().run(EV, DOMAIN, vm_id=UUID)
    assert result.runs[0].outcome == "failed"
    assert "junk" in result.runs[0].diff  # recorded, though discarded
    assert result.runs[1].stdout.strip() == DOMAIN  # saw the data as before 10_break
    assert '<disk type="block"/>' in result.data and "junk" not in result.data


def test_each_diff_is_against_what_that_hook_was_given(hooks_dir: Path,
                                                       make_runner: MakeRunner) -> None:
    # A chain makes each version canonical once (diffs.CanonicalCache): after a
    # discarded edit the next hook's diff is still against the kept data.
    write_hook(hooks_dir, EV, "10_a", sh("""
        sed -i 's#512#1024#' "$_hook_domxml"
    """))
    write_hook(hooks_dir, EV, "20_junk", sh("""
        echo '<domain><name>junk</name></domain>' > "$_hook_domxml"
        exit 1
    """))
    write_hook(hooks_dir, EV, "30_rng", sh("""
        sed -i 's#</devices>#<rng model="virtio"/></devices>#' "$_hook_domxml"
    """))
    result = make_runner().run(EV, DOMAIN, vm_id=UUID)

    def changed(diff: str) -> list[str]:
        return [line for line in diff.splitlines()
                if line[:1] in "+-" and not line.startswith(("---", "+++"))]

    assert [r.outcome for r in result.runs] == ["ok", "failed", "ok"]
    assert changed(result.runs[0].diff) == ['-  <memory unit="MiB">512</memory>',
                                            '+  <memory unit="MiB">1024</memory>']
    assert "+  <name>junk</name>" in changed(result.runs[1].diff)
    assert changed(result.runs[2].diff) == ['+    <rng model="virtio"/>']


def test_deleted_data_file_is_restored_for_the_next(hooks_dir: Path,
                                                     make_runner: MakeRunner) -> None:
    write_hook(hooks_dir, "after_vm_start", "10_rm", sh('rm -f "$_hook_domxml"\n'))
    write_hook(hooks_dir, "after_vm_start", "20_cat", sh('cat "$_hook_domxml"\n'))
    result = make_runner().run("after_vm_start", DOMAIN)
    assert result.runs[1].stdout == DOMAIN


def test_non_modifying_event_returns_its_input(hooks_dir: Path,
                                                make_runner: MakeRunner) -> None:
    write_hook(hooks_dir, "before_vm_pause", "10_edit", sh("""
        sed -i 's#vm1#renamed#' "$_hook_domxml"
    """))
    write_hook(hooks_dir, "before_vm_pause", "20_cat", sh('cat "$_hook_domxml"\n'))
    result = make_runner().run("before_vm_pause", DOMAIN)
    assert result.ok and result.data == DOMAIN
    assert "renamed" in result.runs[1].stdout  # scripts of the chain still share edits


def test_environment_inside_the_hook(hooks_dir: Path, make_runner: MakeRunner) -> None:
    write_hook(hooks_dir, "before_device_create", "10_env", sh("""
        printf '%s\\n' "$vmId" "$speed" "$duplex" "$label" "$_hook_domxml" "$HOOK_TEST_AGENT"
        cat "$_hook_domxml"
    """))
    os.environ["HOOK_TEST_AGENT"] = "agent-side"
    try:
        result = make_runner().run(
            "before_device_create", DEVICE, vm_id=UUID,
            vm_props={"speed": "1000", "label": "žluťoučký — 日本"},
            device_props={"speed": "10", "duplex": "full"},
        )
    finally:
        del os.environ["HOOK_TEST_AGENT"]
    lines = result.runs[0].stdout.splitlines()
    assert lines[0] == UUID
    assert lines[1] == "1000"  # the VM's property wins over the device's
    assert lines[2] == "full"
    assert lines[3] == "žluťoučký — 日本"
    # In the chain's own directory of the run dir.
    assert Path(lines[4]).parent.parent == make_runner().config.run_dir
    assert lines[5] == "agent-side"
    assert lines[6] == DEVICE


def test_reserved_property_never_reaches_the_hook(hooks_dir: Path,
                                                  make_runner: MakeRunner) -> None:
    write_hook(hooks_dir, EV, "10_env", sh('echo "$PATH|$LD_PRELOAD|$_hook_domxml"\n'))
    result = make_runner().run(EV, DOMAIN, vm_props={"PATH": "/evil", "LD_PRELOAD": "/e.so",
                                                     "_hook_domxml": "/etc/passwd"})
    path, preload, data = result.runs[0].stdout.strip().split("|")
    assert path == os.environ["PATH"] and preload == os.environ.get("LD_PRELOAD", "")
    assert data != "/etc/passwd"
    assert len(result.refused) == 3


def test_from_snapshot_extra(hooks_dir: Path, make_runner: MakeRunner) -> None:
    write_hook(hooks_dir, "before_vm_dehibernate", "10_x", sh('echo "$FROM_SNAPSHOT"\n'))
    result = make_runner().run("before_vm_dehibernate", DOMAIN,
                               extra_env={"FROM_SNAPSHOT": "True"})
    assert result.runs[0].stdout.strip() == "True"
    with pytest.raises(ValueError):
        make_runner().run(EV, DOMAIN, extra_env={"FROM_SNAPSHOT": "True"})


@pytest.mark.parametrize("event", ["nope", "/etc/passwd", "../before_vm_start"])
def test_bad_event_raises_value_error(make_runner: MakeRunner, event: str) -> None:
    with pytest.raises(ValueError):
        make_runner().run(event, DOMAIN)


@pytest.mark.parametrize("importer", ["import hooking",
                                      "from vdsm.hook import hooking"])
def test_python_hook_imports_hooking(hooks_dir: Path, make_runner: MakeRunner,
                                     importer: str) -> None:
    write_hook(hooks_dir, EV, "50_numa", py(f"""
        import os
        {importer}
        domxml = hooking.read_domxml()
        domain = domxml.getElementsByTagName('domain')[0]
        numatune = domxml.createElement('numatune')
        memory = domxml.createElement('memory')
        mode, nodeset = os.environ['numa'].split(':')
        memory.setAttribute('mode', mode)
        memory.setAttribute('nodeset', nodeset)
        numatune.appendChild(memory)
        domain.appendChild(numatune)
        hooking.write_domxml(domxml)
        hooking.log('numa: ' + os.environ['numa'] + ' ' + os.environ['vmId'])
    """))
    result = make_runner().run(EV, DOMAIN, vm_id=UUID, vm_props={"numa": "strict:1-4,^3"})
    assert result.ok, result.message()
    assert '<numatune><memory mode="strict" nodeset="1-4,^3"/></numatune>' in result.data
    assert result.runs[0].stderr == f"numa: strict:1-4,^3 {UUID}\n"


def test_python_hook_exit_hook_vetoes(hooks_dir: Path, make_runner: MakeRunner) -> None:
    write_hook(hooks_dir, EV, "10_x", py("""
        import hooking
        hooking.exit_hook('smartcard: not allowed here')
    """))
    result = make_runner().run(EV, DOMAIN)
    assert result.vetoed and result.runs[0].rc == 2
    assert "smartcard: not allowed here" in result.message()


def test_json_round_trip_non_ascii(hooks_dir: Path, make_runner: MakeRunner) -> None:
    write_hook(hooks_dir, "after_get_caps", "10_x", py("""
        import hooking
        caps = hooking.read_json()
        caps['hooked'] = caps['name'] + ' ✓'
        hooking.write_json(caps)
    """))
    write_hook(hooks_dir, "after_get_caps", "20_y", py("""
        from vdsm.hook import hooking
        caps = hooking.read_json()
        caps['count'] += 1
        hooking.write_json(caps)
    """))
    data = json.dumps({"name": "hôte — 東京", "count": 1})
    result = make_runner().run("after_get_caps", data)
    assert result.ok, result.message()
    assert json.loads(result.data) == {"name": "hôte — 東京", "count": 2,
                                       "hooked": "hôte — 東京 ✓"}


def test_network_setup_json(hooks_dir: Path, make_runner: MakeRunner) -> None:
    write_hook(hooks_dir, "before_network_setup", "10_mtu", py("""
        import hooking
        setup = hooking.read_json()
        setup['request']['networks']['net1']['mtu'] = 9000
        hooking.write_json(setup)
    """))
    data = json.dumps({"request": {"networks": {"net1": {"nic": "eth0"}}, "bondings": {},
                                   "options": {}}})
    result = make_runner().run("before_network_setup", data)
    assert json.loads(result.data)["request"]["networks"]["net1"]["mtu"] == 9000


def test_empty_data_for_no_payload_events(hooks_dir: Path, make_runner: MakeRunner) -> None:
    write_hook(hooks_dir, "before_vdsm_start", "10_x", sh("""
        test -f "$_hook_domxml" || exit 2
        test -s "$_hook_domxml" && exit 2
        echo "clean:$HOOK_TEST_AGENT:"
    """))
    os.environ["HOOK_TEST_AGENT"] = "agent-side"
    try:
        result = make_runner().run("before_vdsm_start")
    finally:
        del os.environ["HOOK_TEST_AGENT"]
    assert result.ok, result.message()
    assert result.runs[0].stdout == "clean::\n"  # the agent's environment is not passed
    assert result.data == ""


def test_data_file_is_private(hooks_dir: Path, make_runner: MakeRunner) -> None:
    write_hook(hooks_dir, EV, "10_x", sh('stat -c %a "$_hook_domxml"\n'))
    result = make_runner().run(EV, DOMAIN)
    assert result.runs[0].stdout.strip() == "600"


def test_stdin_is_empty(hooks_dir: Path, make_runner: MakeRunner) -> None:
    write_hook(hooks_dir, EV, "10_x", sh("cat; echo end\n"))
    assert make_runner().run(EV, DOMAIN).runs[0].stdout == "end\n"


def test_no_temp_file_after_an_exception_in_the_runner(
    hooks_dir: Path, run_dir: Path, make_runner: MakeRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_hook(hooks_dir, EV, "10_a", sh("exit 0\n"))
    write_hook(hooks_dir, EV, "20_b", sh("exit 0\n"))
    runner = make_runner()
    real = HookRunner._run_one
    calls = []

    def boom(self: HookRunner, *args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("bug in the runner")
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(HookRunner, "_run_one", boom)
    with pytest.raises(RuntimeError):
        runner.run(EV, DOMAIN)
    assert leftovers(run_dir) == []


def test_interrupt_while_a_hook_runs_kills_it_and_cleans_up(
    hooks_dir: Path, run_dir: Path, make_runner: MakeRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = run_dir.parent / "pid"
    write_hook(hooks_dir, EV, "10_hang", sh(f"echo $$ > {marker}; exec sleep 600\n"))
    seen: list[int] = []

    def interrupted(self: runner_mod._Child, timeout: float) -> bool:
        seen.append(self.pid)
        while not marker.exists() or not marker.read_text().strip():
            pass
        raise KeyboardInterrupt

    monkeypatch.setattr(runner_mod._Child, "wait_exit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_runner().run(EV, DOMAIN)
    from .util import group_alive

    assert seen and not group_alive(seen[0])
    assert leftovers(run_dir) == []


def test_output_capped_and_marked(hooks_dir: Path, make_runner: MakeRunner) -> None:
    write_hook(hooks_dir, EV, "10_x", py("""
        import sys
        sys.stdout.write('o' * 70000)
        sys.stderr.write('e' * 100)
    """))
    run = make_runner().run(EV, DOMAIN).runs[0]
    assert len(run.stdout) == 64 * 1024 and run.stdout_truncated
    assert run.stderr == "e" * 100 and not run.stderr_truncated


def test_outputs_do_not_leak_between_scripts(hooks_dir: Path, make_runner: MakeRunner) -> None:
    write_hook(hooks_dir, EV, "10_long", sh("echo a-long-line-of-output; echo err1 >&2\n"))
    write_hook(hooks_dir, EV, "20_short", sh("echo b\n"))
    runs = make_runner().run(EV, DOMAIN).runs
    assert (runs[0].stdout, runs[0].stderr) == ("a-long-line-of-output\n", "err1\n")
    assert (runs[1].stdout, runs[1].stderr) == ("b\n", "")


def test_stale_temp_files_of_dead_runners_cleaned(run_dir: Path,
                                                   make_runner: MakeRunner) -> None:
    run_dir.mkdir()
    dead = run_dir / "hook-999999999-abc.xml"
    dead.write_text("x")
    mine = run_dir / f"hook-{os.getpid()}-abc.xml"
    mine.write_text("x")
    other = run_dir / "unrelated"
    other.write_text("x")
    assert make_runner().cleanup_stale() == 1
    assert not dead.exists() and mine.exists() and other.exists()
    mine.unlink()
    other.unlink()


def test_concurrent_chains_stay_apart(hooks_dir: Path, make_runner: MakeRunner) -> None:
    import threading

    write_hook(hooks_dir, EV, "10_x", sh("""
        echo "$vmId" >&2
        sed -i "s#<memory unit='MiB'>512</memory>#<memory unit='MiB'>$mem</memory>#" \
            "$_hook_domxml"
        echo "$vmId"
    """))
    runner = make_runner()
    results: dict[str, object] = {}

    def go(i: int) -> None:
        domain = DOMAIN.replace(UUID, f"vm-{i}")
        results[f"vm-{i}"] = runner.run(EV, domain, vm_id=f"vm-{i}", vm_props={"mem": str(i)})

    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(8):
        result = results[f"vm-{i}"]
        assert isinstance(result, runner_mod.ChainResult) and result.ok
        assert result.runs[0].stdout == result.runs[0].stderr == f"vm-{i}\n"
        assert f"<memory unit='MiB'>{i}</memory>" in result.data


def test_unreadable_event_dir_fails_the_chain(hooks_dir: Path, make_runner: MakeRunner,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    write_hook(hooks_dir, EV, "10_guard", sh("exit 0\n"))

    deny_hook_listing(monkeypatch)
    result = make_runner(records=True).run(EV, DOMAIN)
    assert result.vetoed and "cannot list" in result.message()
    assert "Permission denied" in result.message()
    assert make_runner().run("after_vm_start", DOMAIN).vetoed is False


def test_a_dead_agent_left_unreaped_is_dead(run_dir: Path, make_runner: MakeRunner) -> None:
    # SIGKILLed under a parent (or a container's init) that has not reaped it yet,
    # the old agent is a zombie: kill(pid, 0) still succeeds, and its chain
    # directories were kept for ever.
    run_dir.mkdir()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        deadline = time.monotonic() + 30
        stat = Path(f"/proc/{pid}/stat")
        while (stat.read_text().split(")")[-1].split()[0] != "Z"
               and time.monotonic() < deadline):
            time.sleep(0.01)
        stale = run_dir / f"hook-{pid}-abc"
        stale.mkdir()
        (stale / "data.xml").write_text("x")
        assert make_runner().cleanup_stale() == 1
        assert not stale.exists()
    finally:
        os.waitpid(pid, 0)
