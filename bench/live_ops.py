"""Live VM operations through the agent (no hooks) against the same libvirt calls made
directly, on qemu:///system with the tiny booting guest (SPEC §5):
  NIC plug+unplug, disk plug+unplug, save+restore.

Two guests of the same XML boot side by side: one driven by libvirt-python, one by
the agent. An unplug counts as done at libvirt's DEVICE_REMOVED event on both sides
(the agent waits for it too); save+restore is hibernate then create(restoreState)
against virDomainSave then virDomainRestore. Rounds alternate which side goes first.
The figure per operation is median(agent) / median(direct); goal <= 1.10. The mean
ratio is printed too (the guest's answer time is bimodal, which moves medians).

Run by bench/api.py (`--live-rounds`), or alone: python bench/live_ops.py [ROUNDS].
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt

ROOT = Path(__file__).resolve().parent.parent
LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE
# Plug+unplug samples per round: the guest's answer time is bimodal (about 20 or
# 75 ms for a disk, on either side alike), so a median needs many of them.
DEVICE_SAMPLES = 8


def _guest_tools() -> Any:
    """tests/guest.py: the guest's recipe, its XML and the DEVICE_REMOVED waiter."""
    sys.path.insert(0, str(ROOT / "tests"))
    import guest  # type: ignore[import-not-found]

    return guest


def bench_live(rounds: int, agent_factory: Callable[[list[str]], Any]) -> list[float]:
    """The three ratios; `agent_factory(extra serve args)` starts an agent (bench/api.py)."""
    g = _guest_tools()
    tiny = g.build_guest()
    tmp = Path(tempfile.mkdtemp(prefix="hv-bench-live-"))
    images = tmp / "images"
    images.mkdir()
    config = tmp / "agent.toml"
    config.write_text(f'storage_dirs = ["{images}", "{tmp}", "{tiny.kernel.parent}"]\n')
    conn = g.open_with_events("qemu:///system")
    agent = agent_factory(["--config", str(config)])
    direct_id, agent_id = str(uuid.uuid4()), str(uuid.uuid4())
    dom: Any = None
    try:
        dom = conn.createXML(tiny.xml(f"hvbench-live-d-{direct_id[:6]}", tmp / "d.log",
                                      uuid=direct_id), 0)
        agent.call("create", {"xml": tiny.xml(f"hvbench-live-a-{agent_id[:6]}", tmp / "a.log",
                                              uuid=agent_id)})
        g.wait_marker(tmp / "d.log", 180)
        g.wait_marker(tmp / "a.log", 180)
        removed = g.DeviceRemovedEvents(conn, dom)
        # Plug+unplug: the direct calls go to the agent's own guest (the agent keeps
        # its record; what is plugged directly is unplugged directly), so that both
        # sides meet the same guest: two guests answer at different speeds.
        same = conn.lookupByUUIDString(agent_id)
        same_removed = g.DeviceRemovedEvents(conn, same)
        disk = images / "disk.raw"
        disk.write_bytes(b"\0" * (1 << 20))
        times: dict[str, dict[str, list[float]]] = {
            op: {"direct": [], "agent": []} for op in ("nic", "disk", "save")}

        def nic_direct(i: int) -> None:
            mac = f"52:54:00:7e:00:{i % 256:02x}"
            xml = (f"<interface type='ethernet'><mac address='{mac}'/><model type='virtio'/>"
                   f"<alias name='ua-bnic{i}'/></interface>")
            same.attachDeviceFlags(xml, LIVE)
            same.detachDeviceFlags(xml, LIVE)
            same_removed.wait(f"ua-bnic{i}", 30)

        def nic_agent(i: int) -> None:
            mac = f"52:54:00:7f:00:{i % 256:02x}"
            agent.call("hotplugNic", {"vmId": agent_id, "xml": (
                f"<interface type='ethernet'><mac address='{mac}'/><model type='virtio'/>"
                "</interface>")})
            agent.call("hotunplugNic", {"vmId": agent_id, "nic": {"macAddr": mac}})

        def disk_direct(i: int) -> None:
            xml = (f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
                   f"<source file='{disk}'/><target dev='vdb' bus='virtio'/>"
                   f"<alias name='ua-bdisk{i}'/></disk>")
            same.attachDeviceFlags(xml, LIVE)
            same.detachDeviceFlags(xml, LIVE)
            same_removed.wait(f"ua-bdisk{i}", 30)

        def disk_agent(_i: int) -> None:
            agent.call("hotplugDisk", {"vmId": agent_id, "drive": {
                "path": str(disk), "format": "raw", "iface": "virtio", "name": "vdb"}})
            agent.call("hotunplugDisk", {"vmId": agent_id, "drive": {"name": "vdb"}})

        def save_direct(_i: int) -> None:
            nonlocal dom, removed
            image = images / "direct.save"
            dom.save(str(image))
            conn.restore(str(image))
            image.unlink()
            # A restored domain is a new handle; its events too.
            removed.close()
            dom = conn.lookupByUUIDString(direct_id)
            removed = g.DeviceRemovedEvents(conn, dom)

        def save_agent(_i: int) -> None:
            image = images / "agent.save"
            agent.call("hibernate", agent_id, str(image))
            agent.call("destroy", agent_id)  # collects the Down record: no libvirt call
            agent.call("create", {"vmId": agent_id, "restoreState": str(image)})
            image.unlink()

        ops = {"nic": (nic_direct, nic_agent), "disk": (disk_direct, disk_agent),
               "save": (save_direct, save_agent)}
        for i in range(rounds * DEVICE_SAMPLES):
            for op, (direct, through) in ops.items():
                if op == "save" and i % DEVICE_SAMPLES:
                    continue  # 2 s each: one per round
                sides = (("direct", direct), ("agent", through))
                for side, run in (sides if i % 2 == 0 else sides[::-1]):
                    start = time.perf_counter()
                    run(i)
                    times[op][side].append(time.perf_counter() - start)
        removed.close()
        same_removed.close()
    finally:
        agent.close()
        for vm_id in (direct_id, agent_id):
            with contextlib.suppress(libvirt.libvirtError):
                conn.lookupByUUIDString(vm_id).destroy()
        conn.close()
    ratios = []
    names = {"nic": "NIC plug+unplug", "disk": "disk plug+unplug", "save": "save+restore"}
    for op, measured in times.items():
        d, a = statistics.median(measured["direct"]), statistics.median(measured["agent"])
        ratios.append(a / d)
        if "-v" in sys.argv:
            print(op, [round(x * 1000) for x in measured["direct"]],
                  [round(x * 1000) for x in measured["agent"]])
        mean = statistics.mean(measured["agent"]) / statistics.mean(measured["direct"])
        print(f"qemu:///system tiny guest {names[op]} (x{len(measured['agent'])}): libvirt "
              f"{d*1000:.0f} ms, agent {a*1000:.0f} ms -> ratio {a/d:.2f} (means: {mean:.2f})")
    return ratios


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "bench"))
    import api

    figures = bench_live(int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1] != "-v" else 5,
                         lambda extra: api.Agent("qemu:///system", extra=extra))
    print(f"live_ops_ratio={max(figures):.2f}")
