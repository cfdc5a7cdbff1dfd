"""Many clients at once, on test:///default, through XML-RPC."""

from __future__ import annotations

import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import libvirt

TEST_URI = "test:///default"


def hook_processes(hooks_dir: Path) -> list[int]:
    """Processes still running a script from `hooks_dir`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if str(hooks_dir).encode() in cmdline:
            found.append(int(entry))
    return found


def test_50_threads_create_and_destroy_200_vms(dirs: Any, inproc_agent: Any) -> None:
    dirs.define("UserDefinedVMProperties", "n=^[0-9]+$")
    dirs.hook("before_vm_start", "50_mark",
              'sed -i "s|</name>|</name><description>$n</description>|" "$_hook_domxml"\n')
    dirs.hook("after_vm_destroy", "50_count", f'echo "$vmId" >> {dirs.root}/destroyed.log\n')
    agent = inproc_agent()
    errors: list[str] = []
    created: list[str] = []
    lock = threading.Lock()

    def worker(w: int) -> None:
        api = agent.api
        for i in range(4):
            vm_id = str(uuid.uuid4())
            p = {"vmId": vm_id, "vmName": f"hvtest-c{w}-{i}", "memSize": 64,
                 "custom": {"n": str(w * 4 + i)}}
            for verb, args in (("create", (p,)), ("getVmStats", (vm_id,)),
                               ("list", (True, [vm_id])), ("destroy", (vm_id,))):
                reply = getattr(api, verb)(*args)
                if reply["status"]["code"] != 0:
                    with lock:
                        errors.append(f"{verb} {vm_id}: {reply['status']}")
            with lock:
                created.append(vm_id)

    started = time.monotonic()
    with ThreadPoolExecutor(50) as pool:
        list(pool.map(worker, range(50)))
    elapsed = time.monotonic() - started
    assert errors == []
    assert len(created) == 200
    assert agent.api.list()["vmList"] == []
    destroyed = (dirs.root / "destroyed.log").read_text().split()
    assert sorted(destroyed) == sorted(created)
    conn = libvirt.open(TEST_URI)
    try:
        leaked = [d.name() for d in conn.listAllDomains() if d.name().startswith("hvtest-")]
    finally:
        conn.close()
    assert leaked == []
    assert dirs.leftover_files() == []
    assert hook_processes(dirs.hooks) == []
    print(f"200 VMs created and destroyed by 50 threads in {elapsed:.1f}s")


def test_one_vm_id_created_by_many_at_once(dirs: Any, inproc_agent: Any) -> None:
    dirs.hook("before_vm_start", "50_slow", "sleep 0.3\n")
    agent = inproc_agent()
    p = {"vmId": str(uuid.uuid4()), "vmName": "hvtest-same", "memSize": 64}

    def create(_: int) -> int:
        api = agent.api
        return int(api.create(p)["status"]["code"])

    with ThreadPoolExecutor(8) as pool:
        codes = sorted(pool.map(create, range(8)))
    assert codes == [0] + [4] * 7
    assert agent.api.destroy(p["vmId"])["status"]["code"] == 0


def test_different_vms_run_in_parallel_one_vm_serialised(dirs: Any,
                                                         inproc_agent: Any) -> None:
    dirs.hook("before_vm_start", "50_slow", "sleep 1\n")
    dirs.hook("before_vm_pause", "50_slow", "sleep 1\n")
    agent = inproc_agent()
    ids = [str(uuid.uuid4()) for _ in range(4)]

    def create(i: int) -> int:
        api = agent.api
        p = {"vmId": ids[i], "vmName": f"hvtest-par{i}", "memSize": 64}
        return int(api.create(p)["status"]["code"])

    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(create, range(4))) == [0, 0, 0, 0]
    assert time.monotonic() - started < 3.0  # four 1 s hooks, side by side

    # A destroy waits for the pause in flight on the same VM, then wins.
    api = agent.api
    with ThreadPoolExecutor(2) as pool:
        paused = pool.submit(api.pause, ids[0])
        time.sleep(0.3)
        destroyed = pool.submit(
            agent.api.destroy, ids[0])
        assert paused.result()["status"]["code"] == 0
        assert destroyed.result()["status"]["code"] == 0
    for vm_id in ids[1:]:
        assert api.destroy(vm_id)["status"]["code"] == 0
    assert api.list()["vmList"] == []


def test_destroy_during_create_waits_then_destroys(dirs: Any, inproc_agent: Any) -> None:
    dirs.hook("before_vm_start", "50_slow", "sleep 0.6\n")
    agent = inproc_agent()
    p = {"vmId": str(uuid.uuid4()), "vmName": "hvtest-race", "memSize": 64}
    with ThreadPoolExecutor(2) as pool:
        created = pool.submit(agent.api.create, p)
        time.sleep(0.2)  # the create is in its hook now
        destroyed = pool.submit(
            agent.api.destroy, p["vmId"])
        assert created.result()["status"]["code"] == 0
        assert destroyed.result()["status"]["code"] == 0
    assert agent.api.list()["vmList"] == []
    conn = libvirt.open(TEST_URI)
    try:
        assert "hvtest-race" not in [d.name() for d in conn.listAllDomains()]
    finally:
        conn.close()
