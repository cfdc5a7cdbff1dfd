"""VDSM's other hook-point verbs through the agent (no hooks) against the same libvirt
calls made directly, on qemu:///system with the tiny booting guest (SPEC §5):
  hotplugMemory (a 128 MiB DIMM)   vs attachDeviceFlags(<memory model='dimm'>, LIVE)
  setNumberOfCpus (one more vCPU)  vs setVcpusFlags(n, LIVE)
  setTicket (VNC, 120 s)           vs updateDeviceFlags(<graphics passwd=…>, LIVE)
  hostdevListByCaps()              vs listAllDevices(0) + each device's XMLDesc

One guest, made ready for all of it (DIMM slots, a NUMA cell, ACPI, a vCPU
maximum, a VNC console), started through the agent; the direct calls go to the
same guest, so both sides meet the same QEMU. Sides alternate which goes first.
The figure per verb is median(agent) / median(direct); goal <= 1.10.

Run by bench/api.py (`--hookpoint-rounds`), or alone: python bench/hookpoints.py [ROUNDS].
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt

ROOT = Path(__file__).resolve().parent.parent
LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE
MAX_VCPUS = 64
SLOTS = 32
DIMM_MIB = 128


def _guest_tools() -> Any:
    sys.path.insert(0, str(ROOT / "tests"))
    import guest  # type: ignore[import-not-found]

    return guest


def ready_xml(tiny: Any, name: str, serial: Path, vm_id: str) -> str:
    graphics = ("<graphics type='vnc' autoport='yes' listen='127.0.0.1' passwd='*****' "
                "passwdValidTo='1970-01-01T00:00:01'><listen type='address' "
                "address='127.0.0.1'/></graphics>")
    xml = str(tiny.xml(name, serial, uuid=vm_id, extra_devices=graphics))
    xml = xml.replace("<memory unit='MiB'>256</memory>",
                      f"<maxMemory slots='{SLOTS}' unit='MiB'>{256 + SLOTS * DIMM_MIB}"
                      "</maxMemory><memory unit='MiB'>256</memory>")
    return xml.replace("<vcpu>1</vcpu>", f"<vcpu current='1'>{MAX_VCPUS}</vcpu><cpu><numa>"
                       f"<cell id='0' cpus='0-{MAX_VCPUS - 1}' memory='256' unit='MiB'/>"
                       "</numa></cpu>")


def bench_hookpoints(rounds: int, agent_factory: Callable[[list[str]], Any]) -> list[float]:
    g = _guest_tools()
    tiny = g.build_guest()
    tmp = Path(tempfile.mkdtemp(prefix="hv-bench-hp-"))
    config = tmp / "agent.toml"
    config.write_text(f'storage_dirs = ["{tmp}", "{tiny.kernel.parent}"]\n')
    conn = libvirt.open("qemu:///system")
    agent = agent_factory(["--config", str(config)])
    vm_id = str(uuid.uuid4())
    vcpus = 1
    floor: list[float] = []
    times: dict[str, dict[str, list[float]]] = {
        op: {"direct": [], "agent": []} for op in ("mem", "cpus", "ticket", "hostdev")}
    try:
        agent.call("create", {"xml": ready_xml(tiny, f"hvbench-hp-{vm_id[:6]}", tmp / "g.log",
                                               vm_id)})
        g.wait_marker(tmp / "g.log", 180)
        dom = conn.lookupByUUIDString(vm_id)
        dimm = (f"<memory model='dimm'><target><size unit='KiB'>{DIMM_MIB * 1024}</size>"
                "<node>0</node></target></memory>")

        def mem_direct() -> None:
            dom.attachDeviceFlags(dimm, LIVE)

        def mem_agent() -> None:
            agent.call("hotplugMemory", {"vmId": vm_id, "memory": {"size": DIMM_MIB, "node": 0}})

        def cpus_direct() -> None:
            nonlocal vcpus
            vcpus += 1
            dom.setVcpusFlags(vcpus, LIVE)

        def cpus_agent() -> None:
            nonlocal vcpus
            vcpus += 1
            agent.call("setNumberOfCpus", vm_id, vcpus)

        # The live device as libvirt has it (listen, port): libvirt refuses other changes.
        graphics = ET.fromstring(dom.XMLDesc(0)).find("devices/graphics")
        assert graphics is not None

        def ticket_direct() -> None:
            graphics.set("passwd", "bench123")
            graphics.set("passwdValidTo", time.strftime(
                "%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 120)))
            dom.updateDeviceFlags(ET.tostring(graphics, encoding="unicode"), LIVE)

        def ticket_agent() -> None:
            agent.call("setTicket", vm_id, "bench123", 120, "disconnect", {})

        def hostdev_direct() -> None:
            for dev in conn.listAllDevices(0):
                dev.XMLDesc(0)

        def hostdev_agent() -> None:
            agent.call("hostdevListByCaps", [])

        ops = {"mem": (mem_direct, mem_agent), "cpus": (cpus_direct, cpus_agent),
               "ticket": (ticket_direct, ticket_agent),
               "hostdev": (hostdev_direct, hostdev_agent)}
        # DIMMs and vCPUs only grow: at most SLOTS DIMMs and MAX_VCPUS - 1 vCPU steps.
        samples = {"mem": min(SLOTS // 2, rounds * 2), "cpus": min((MAX_VCPUS - 2) // 2,
                                                                     rounds * 4),
                   "ticket": rounds * 10, "hostdev": rounds * 10}
        for _ in range(30):
            start = time.perf_counter()
            agent.call("list")
            floor.append(time.perf_counter() - start)
        for op, (direct, through) in ops.items():
            for i in range(samples[op]):
                sides = (("direct", direct), ("agent", through))
                for side, run in (sides if i % 2 == 0 else sides[::-1]):
                    start = time.perf_counter()
                    run()
                    times[op][side].append(time.perf_counter() - start)
    finally:
        agent.close()
        with contextlib.suppress(libvirt.libvirtError):
            conn.lookupByUUIDString(vm_id).destroy()
        conn.close()
    print(f"(floor: one agent call that does no libvirt work, `list`, "
          f"{statistics.median(floor) * 1000:.1f} ms)")
    names = {"mem": "hotplugMemory", "cpus": "setNumberOfCpus", "ticket": "setTicket",
             "hostdev": "hostdevListByCaps"}
    ratios = []
    for op, measured in times.items():
        d, a = statistics.median(measured["direct"]), statistics.median(measured["agent"])
        ratios.append(a / d)
        print(f"qemu:///system tiny guest {names[op]} (x{len(measured['agent'])}): libvirt "
              f"{d*1000:.1f} ms, agent {a*1000:.1f} ms -> ratio {a/d:.2f}")
    return ratios


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "bench"))
    import api

    figures = bench_hookpoints(int(sys.argv[1]) if len(sys.argv) > 1 else 3,
                               lambda extra: api.Agent("qemu:///system", extra=extra))
    print(f"hookpoints_ratio={max(figures):.2f}")
