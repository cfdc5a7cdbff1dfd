"""`hookvisor serve` as a process: config, logs, start/stop hooks, clean stop on signals."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from hookvisor.agent.core import Agent
from hookvisor.agent.hookcalls import HookCalls
from hookvisor.errors import Code
from hookvisor.hooks.runner import HookRunner, RunnerConfig
from hookvisor.props.registry import PropertyRegistry
from hookvisor.rpc.verbs import verb_table
from hookvisor.rpc.xmlrpc import Dispatcher
from hookvisor.virt.host import Host


def test_sigterm_finishes_the_request_in_flight(dirs: Any, serve_process: Any) -> None:
    dirs.hook("before_vdsm_start", "50_mark", f"touch {dirs.root}/started\n")
    dirs.hook("after_vdsm_stop", "50_mark", f"touch {dirs.root}/stopped\n")
    dirs.hook("before_vm_start", "50_slow", "sleep 1.5\necho slow hook done >&2\n")
    agent = serve_process()
    assert (dirs.root / "started").exists()
    replies: list[dict[str, Any]] = []
    p = {"vmId": str(uuid.uuid4()), "vmName": "hvtest-term", "memSize": 64}
    client = threading.Thread(target=lambda: replies.append(agent.api.create(p)))
    client.start()
    time.sleep(0.7)  # the hook is running now
    assert agent.stop(signal.SIGTERM) == 0
    client.join(10)
    assert replies and replies[0]["status"]["code"] == 0
    log = agent.log()
    assert "SIGTERM received" in log and "stopped" in log
    assert "before_vm_start/50_slow: slow hook done" in log  # hook stderr, with its name
    assert (dirs.root / "stopped").exists()
    assert dirs.leftover_files() == []


def test_sigint_stops_cleanly(dirs: Any, serve_process: Any) -> None:
    dirs.hook("after_vdsm_stop", "50_mark", f"touch {dirs.root}/stopped\n")
    agent = serve_process()
    assert agent.stop(signal.SIGINT) == 0
    assert (dirs.root / "stopped").exists()
    assert "Traceback" not in agent.log()


def test_config_file_and_flags(dirs: Any, serve_process: Any, tmp_path: Path) -> None:
    config = tmp_path / "hookvisor.toml"
    config.write_text('cluster_version = "4.1"\nhook_timeout = 0.5\nhook_grace = 0.2\n')
    dirs.hook("before_vm_start", "50_hang", "sleep 30\n")
    # The flag wins over the file; the file's timeout applies.
    agent = serve_process(extra=["--config", str(config), "--cluster-version", "4.2"])
    caps = agent.api.getVdsCapabilities()["info"]
    assert caps["clusterLevels"] == ["4.2"]
    started = time.monotonic()
    reply = agent.api.create({"vmId": str(uuid.uuid4()), "vmName": "hvtest-cfg",
                              "memSize": 64})
    assert reply["status"]["code"] == 78 and "timed out" in reply["status"]["message"]
    assert time.monotonic() - started < 5
    assert agent.stop() == 0


def test_a_failing_before_vdsm_start_is_logged_not_fatal(dirs: Any,
                                                         serve_process: Any) -> None:
    dirs.hook("before_vdsm_start", "50_fail", "echo cannot prepare >&2\nexit 1\n")
    agent = serve_process()
    assert agent.api.list()["status"]["code"] == 0
    assert agent.stop() == 0
    assert "cannot prepare" in agent.log()


def test_cannot_start_without_libvirt(dirs: Any) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hookvisor.cli.main", "serve", "--libvirt-uri",
         "qemu+unix:///system?socket=/nonexistent/sock", "--listen", "127.0.0.1:0",
         "--hooks-dir", str(dirs.hooks), "--state-dir", str(dirs.state),
         "--run-dir", str(dirs.run)],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "cannot connect to libvirt" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_flag_is_a_usage_error(dirs: Any) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hookvisor.cli.main", "serve", "--event-timeout", "x",
         "--state-dir", str(dirs.state)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--event-timeout" in proc.stderr


def test_verbs_answer_recovery_until_recovered(dirs: Any) -> None:
    runner = HookRunner(RunnerConfig(hooks_dir=dirs.hooks, run_dir=dirs.run))
    props = PropertyRegistry(dirs.state / "properties.sqlite", "4.8")
    agent = Agent(Host("test:///default"), HookCalls(runner), props, dirs.run, "4.8")
    try:
        dispatcher = Dispatcher(agent)
        table = verb_table(agent)
        gated = sorted(name for name, verb in table.items() if verb.gated)
        assert {"list", "create", "destroy", "getAllVmStats"} <= set(gated)
        for name in gated:
            low, _ = dispatcher._arity[name]
            reply = dispatcher._call(name, ("x",) * low)
            assert reply["status"]["code"] == Code.RECOVERY, name
        assert dispatcher._call("getVdsStats", ())["status"]["code"] == 0
        assert agent.recover() == 0
        assert dispatcher._call("list", ()) == {"status": {"code": 0, "message": "Done"},
                                                "vmList": []}
    finally:
        agent.close()
        props.close()


def test_lost_hook_records_reported_by_getvdsstats(dirs: Any, inproc_agent: Any) -> None:
    # The record store cannot be opened (a directory where the file should be):
    # the record of before_vdsm_start is lost, counted and reported with its cause.
    (dirs.state / "hookruns.sqlite").mkdir()
    dirs.hook("before_vdsm_start", "50_x", "exit 0\n")
    agent = inproc_agent()
    info = agent.api.getVdsStats()["info"]
    assert info["hookRecordFailures"] == 1
    assert "hookruns.sqlite" in info["hookRecordLastError"]
    # The real cause, as the OS says it (the file is made 0600 before SQLite opens it).
    assert "Is a directory" in info["hookRecordLastError"]


def test_every_changing_call_is_logged_once_after_its_reply(dirs: Any,
                                                            serve_process: Any) -> None:
    # The server writes the rpc line once the reply is sent: it is still one line
    # per changing call, with its code; reports are not at INFO.
    agent = serve_process()
    vm_id = str(uuid.uuid4())
    assert agent.api.create({"vmId": vm_id, "vmName": "hvtest-logline",
                             "memSize": 64})["status"]["code"] == 0
    assert agent.api.destroy(vm_id)["status"]["code"] == 0
    assert agent.api.destroy(vm_id)["status"]["code"] == Code.NO_VM
    assert agent.api.getVdsStats()["status"]["code"] == 0
    assert agent.stop() == 0
    calls = [line.split("hookvisor.rpc: ")[1].split(" (")[0]
             for line in agent.log().splitlines() if " INFO hookvisor.rpc: rpc " in line]
    assert "rpc getVdsStats -> Done 0" not in calls
    # Written after each reply, by whichever worker served the call: the second
    # destroy's line may come before the first's (seen on a clean machine).
    assert sorted(c for c in calls if c.startswith(("rpc create", "rpc destroy"))) == [
        "rpc create -> Done 0", "rpc destroy -> Done 0", "rpc destroy -> noVM 1"]


def test_a_deferred_log_line_waits_for_flush_on_its_own_thread(dirs: Any, caplog: Any) -> None:
    runner = HookRunner(RunnerConfig(hooks_dir=dirs.hooks, run_dir=dirs.run))
    props = PropertyRegistry(dirs.state / "properties.sqlite", "4.8")
    agent = Agent(Host("test:///default"), HookCalls(runner), props, dirs.run, "4.8")
    try:
        agent.recover()
        dispatcher = Dispatcher(agent, defer_log=True)
        caplog.set_level("INFO", logger="hookvisor.rpc")
        vm_id = str(uuid.uuid4())
        p = {"vmId": vm_id, "vmName": "hvtest-defer", "memSize": 64}
        assert dispatcher.dispatch("create", (p,))["status"]["code"] == 0
        assert "rpc create" not in caplog.text
        # Another thread's flush writes nothing of this thread's call.
        other = threading.Thread(target=dispatcher.flush_log)
        other.start()
        other.join()
        assert "rpc create" not in caplog.text
        # A call whose line was never flushed (its reply not sent) is written at the next.
        assert dispatcher.dispatch("destroy", (vm_id,))["status"]["code"] == 0
        assert "rpc create -> Done 0" in caplog.text and "rpc destroy" not in caplog.text
        dispatcher.flush_log()
        assert "rpc destroy -> Done 0" in caplog.text
        dispatcher.flush_log()
        assert caplog.text.count("rpc destroy") == 1
    finally:
        agent.close()
        props.close()
