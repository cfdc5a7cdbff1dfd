"""VM stats, host stats and capabilities, each between its before_/after_ JSON hooks.

An after_ hook's JSON replaces the result, if it keeps the result's shape
(a list of VM stats, a struct for host reports); otherwise the result stands.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import hookvisor
from hookvisor.agent.context import Context, host_failure
from hookvisor.agent.hookcalls import family, supported_events
from hookvisor.agent.vm import DOWN, PAUSED, Vm
from hookvisor.errors import Code
from hookvisor.virt import domain_xml as dx
from hookvisor.virt.host import HostError

log = logging.getLogger("hookvisor.agent")

# Declared so that getVdsCapabilities lists them (see hookcalls.supported_events).
_REPORTS = {name: family(name) for name in ("get_caps", "get_stats", "get_vm_stats",
                                             "get_all_vm_stats")}


def _pct(delta_ns: int, wall_ns: int, cpus: int) -> str:
    if wall_ns <= 0 or cpus <= 0:
        return "0.00"
    return f"{max(0.0, min(100.0, 100.0 * delta_ns / wall_ns / cpus)):.2f}"


def _cpu(vm: Vm, raw: dict[str, Any], cpus: int) -> dict[str, str]:
    user, system = raw.get("cpu.user"), raw.get("cpu.system")
    out = {"cpuUser": "0.00", "cpuSys": "0.00"}
    if "cpu.time" in raw:
        out["cpuUsage"] = str(raw["cpu.time"])
    if user is None or system is None:
        return out
    now = time.monotonic_ns()
    prev, vm.cpu_sample = vm.cpu_sample, (now, int(user), int(system))
    if prev is not None:
        out["cpuUser"] = _pct(int(user) - prev[1], now - prev[0], cpus)
        out["cpuSys"] = _pct(int(system) - prev[2], now - prev[0], cpus)
    return out


def _indexed(raw: dict[str, Any], group: str, fields: dict[str, str]) -> dict[str, Any]:
    """libvirt's `net.0.name`, `net.0.rx.bytes`, ... as {name: {ourKey: str(value)}}."""
    out: dict[str, Any] = {}
    for i in range(int(raw.get(f"{group}.count", 0))):
        name = str(raw.get(f"{group}.{i}.name", i))
        out[name] = {ours: str(raw[f"{group}.{i}.{theirs}"]) for ours, theirs in fields.items()
                     if f"{group}.{i}.{theirs}" in raw}
    return out


def vm_stats(vm: Vm, raw: dict[str, Any] | None) -> dict[str, Any]:
    """VDSM-style stats of one VM from one bulk-stats record (None when libvirt had none)."""
    raw = raw or {}
    mem = raw.get("balloon.maximum")
    mem_mib = int(mem) // 1024 if mem else int(vm.params.get("memSize", 0))
    cpus = int(raw.get("vcpu.current", vm.params.get("smp", 1)) or 1)
    stats: dict[str, Any] = {
        "vmId": vm.vm_id,
        "vmName": vm.name,
        "status": vm.status,
        "elapsedTime": str(int(max(0.0, time.time() - vm.started_at))),
        "memSize": mem_mib,
        "vcpuCount": cpus,
        "memUsage": "0",
        **_cpu(vm, raw, cpus),
    }
    if raw.get("balloon.current"):
        rss = raw.get("balloon.rss")
        if rss:
            stats["memUsage"] = str(min(100, int(100 * int(rss) / int(raw["balloon.current"]))))
        stats["balloonInfo"] = {"balloon_cur": str(raw["balloon.current"]),
                                "balloon_max": str(raw.get("balloon.maximum", ""))}
    stats["network"] = _indexed(raw, "net", {"rxBytes": "rx.bytes", "txBytes": "tx.bytes",
                                             "rxErrors": "rx.errs", "txErrors": "tx.errs"})
    stats["disks"] = _indexed(raw, "block", {"readBytes": "rd.bytes", "writtenBytes": "wr.bytes",
                                             "readOps": "rd.reqs", "writeOps": "wr.reqs"})
    if vm.status == DOWN:
        stats.update({"exitCode": vm.exit_code, "exitMessage": vm.exit_message})
    return stats


def _replace(event: str, original: Any, replaced: Any) -> Any:
    if type(replaced) is not type(original):
        log.warning("%s: hooks left %s, not %s; result unchanged", event,
                    type(replaced).__name__, type(original).__name__)
        return original
    return replaced


def _report(ctx: Context, name: str, build: Any, vm: Vm | None = None) -> Any:
    fam = _REPORTS[name]
    ctx.hooks.run_json(fam.before, {}, vm=vm)
    try:
        result = build()
    except HostError as e:
        # The connection went between the gate and the call (or the verb has no gate).
        raise host_failure(e, Code.GENERAL, name) from None
    return _replace(fam.after, result, ctx.hooks.run_json(fam.after, result, vm=vm))


def _devices(vm: Vm) -> list[dict[str, Any]]:
    if vm.xml:
        try:
            return dx.device_views(vm.xml, vm.device_props)
        except dx.DomainXmlError:
            pass
    devices: list[dict[str, Any]] = vm.params.get("devices", [])
    return devices


def get_vm_stats(ctx: Context, vm_id: object) -> list[dict[str, Any]]:
    vm = ctx.registry.get(vm_id)

    def build() -> list[dict[str, Any]]:
        raw = ctx.host.stats_for([vm.vm_id]) if vm.status != DOWN else {}
        stats = vm_stats(vm, raw.get(vm.vm_id))
        # One VM: its devices as libvirt last described them (aliases, MACs, properties).
        stats["devices"] = _devices(vm)
        return [stats]

    result: list[dict[str, Any]] = _report(ctx, "get_vm_stats", build, vm)
    return result


def get_all_vm_stats(ctx: Context) -> list[dict[str, Any]]:
    def build() -> list[dict[str, Any]]:
        raw = ctx.host.all_stats()  # one bulk libvirt call for every VM
        return [vm_stats(vm, raw.get(vm.vm_id)) for vm in ctx.registry.all()]

    result: list[dict[str, Any]] = _report(ctx, "get_all_vm_stats", build)
    return result


def _meminfo_mib() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                out[key] = int(rest.split()[0]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def _libvirt_state(ctx: Context) -> dict[str, Any]:
    state = ctx.host.connection()
    return {
        "uri": state.uri,
        "connected": state.connected,
        "since": round(state.since, 3),  # epoch seconds of the last change
        "cause": state.cause,
        "lastError": state.last_error,
        "reconnects": state.reconnects,
    }


def get_vds_stats(ctx: Context, started_at: float) -> dict[str, Any]:
    def build() -> dict[str, Any]:
        vms = ctx.registry.all()
        mem = _meminfo_mib()
        return {
            "vmCount": len(vms),
            "vmActive": sum(1 for v in vms if v.status != DOWN),
            "vmPaused": sum(1 for v in vms if v.status == PAUSED),
            "vmDown": sum(1 for v in vms if v.status == DOWN),
            "memFree": mem.get("MemFree", 0),
            "memAvailable": mem.get("MemAvailable", 0),
            "cpuLoad": f"{os.getloadavg()[0]:.2f}",
            "elapsedTime": str(int(time.time() - started_at)),
            "libvirt": _libvirt_state(ctx),
            # Hook run records lost (state dir read-only or full, ...), and why.
            "hookRecordFailures": ctx.hooks.runner.record_failures,
            "hookRecordLastError": ctx.hooks.runner.last_record_error,
        }

    result: dict[str, Any] = _report(ctx, "get_stats", build)
    return result


def get_vds_capabilities(ctx: Context, cluster_version: str,
                         extra: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
    """`extra`: more of the report built at the same time (the host's networks)."""

    def build() -> dict[str, Any]:
        info = ctx.host.host_info()
        if extra is not None:
            info.update(extra())
        info.update({
            "hooks": ctx.hooks.runner.installed(),
            "supportedHookEvents": supported_events(),
            "software_version": hookvisor.__version__,
            "version_name": "hookvisor",
            "clusterLevels": [cluster_version],
            "libvirtUri": ctx.host.uri,
            "domainType": ctx.host.domain_type,
            "kvmEnabled": "true" if ctx.host.domain_type == "kvm" else "false",
        })
        return info

    result: dict[str, Any] = _report(ctx, "get_caps", build)
    return result
