"""The agent's seams: one before -> act -> after/after_fail helper, events derived from
their uses, a VM's operation state and status listeners, saved/migrated is no death.

Real hook scripts through the real engine; libvirt's test driver where a domain is needed.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from support import wait_for

from hookvisor.agent import hookcalls
from hookvisor.agent.hookcalls import HookCalls, family, supported_events
from hookvisor.agent.registry import VmRegistry
from hookvisor.agent.vm import DOWN, HIBERNATING, UP, Vm
from hookvisor.errors import Code, VdsmError
from hookvisor.hooks.catalogue import EVENTS
from hookvisor.hooks.runner import HookRunner, RunnerConfig


def calls(dirs: Any) -> HookCalls:
    return HookCalls(HookRunner(RunnerConfig(dirs.hooks, dirs.run)))


def recorder(dirs: Any, event: str, name: str = "50_rec", rc: int = 0) -> None:
    """A hook that appends `event <props> FROM_SNAPSHOT=<x> <payload>` to events.log."""
    dirs.hook(event, name, f'echo "{event} p=$p d=$d fs=${{FROM_SNAPSHOT-unset}} '
                           f'$(cat "$_hook_domxml")" >> {dirs.root}/events.log\n'
                           f'echo "said by {event}" >&2\nexit {rc}\n')


def logged(dirs: Any) -> list[str]:
    path = dirs.root / "events.log"
    return path.read_text().splitlines() if path.exists() else []


def vm_record(vm_props: dict[str, str] | None = None) -> Vm:
    return Vm("7d3e1c52-8f7e-4c1e-9a56-2a1e0c5b1f00", "hvtest-seam", {},
              vm_props or {}, {})


# --- events derived from their uses ---------------------------------------------


def test_supported_events_are_the_families_in_use() -> None:
    import hookvisor.agent.core  # noqa: F401 - every verb module registers its events

    events = supported_events()
    assert set(events) <= set(EVENTS)
    for name in ("before_vdsm_start", "after_vm_destroy", "before_device_create",
                 "after_get_all_vm_stats", "before_vm_pause", "after_vm_cont"):
        assert name in events
    assert len(events) == len(set(events))
    # Catalogue order, so a diff of two agents' reports reads well.
    order = list(EVENTS)
    assert events == sorted(events, key=order.index)


def test_a_family_outside_the_catalogue_fails_at_declaration() -> None:
    with pytest.raises(ValueError, match="unknown hook event"):
        family("vm_teleport")
    assert "before_vm_teleport" not in supported_events()


def test_declaring_a_family_adds_its_events(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hookcalls, "_USED", set(hookcalls._USED))
    monkeypatch.setattr(hookcalls, "_USED", {e for e in hookcalls._USED
                                             if "network_setup" not in e})
    assert "after_network_setup_fail" not in supported_events()
    fam = family("network_setup", fail=True)
    assert (fam.before, fam.after, fam.after_fail) == (
        "before_network_setup", "after_network_setup", "after_network_setup_fail")
    assert {"before_network_setup", "after_network_setup",
            "after_network_setup_fail"} <= set(supported_events())


def test_capabilities_report_the_derived_list(inproc_agent: Any) -> None:
    agent = inproc_agent()
    caps = agent.api.getVdsCapabilities()["info"]
    assert caps["supportedHookEvents"] == supported_events()


# --- before -> act -> after / after_fail ------------------------------------------


def test_around_runs_before_action_after_in_order(dirs: Any) -> None:
    for event in ("before_nic_hotplug", "after_nic_hotplug", "after_nic_hotplug_fail"):
        recorder(dirs, event)
    dirs.hook("before_nic_hotplug", "60_edit", 'sed -i "s|/>|><x/></i>|" "$_hook_domxml"\n')
    fam = family("nic_hotplug", fail=True)
    vm = vm_record({"p": "vm"})
    seen: list[str] = []

    def act(xml: str) -> str:
        seen.append(xml)
        return "<i>live</i>"

    out = calls(dirs).around(fam, "<i/>", vm, act, device_props={"p": "dev", "d": "dev"},
                             after=lambda live: live)
    assert out == "<i>live</i>"
    assert seen == ["<i><x/></i>"]  # the modifying hook's result is what the action got
    # VM properties win over the device's of the same name (VDSM), both reach the hook.
    assert logged(dirs) == ["before_nic_hotplug p=vm d=dev fs=unset <i/>",
                            "after_nic_hotplug p=vm d=dev fs=unset <i>live</i>"]


def test_around_failure_runs_after_fail_and_keeps_the_error(dirs: Any) -> None:
    for event in ("before_disk_hotplug", "after_disk_hotplug", "after_disk_hotplug_fail"):
        recorder(dirs, event)
    fam = family("disk_hotplug", fail=True)

    def act(_xml: str) -> None:
        raise VdsmError(Code.HOTPLUG_DISK, "no such file")

    with pytest.raises(VdsmError) as info:
        calls(dirs).around(fam, "<disk/>", vm_record(), act)
    assert info.value.code == Code.HOTPLUG_DISK
    assert logged(dirs) == ["before_disk_hotplug p= d= fs=unset <disk/>",
                            "after_disk_hotplug_fail p= d= fs=unset <disk/>"]


def test_around_veto_stops_before_the_action(dirs: Any) -> None:
    recorder(dirs, "before_vm_dehibernate", rc=2)
    recorder(dirs, "after_vm_dehibernate")
    fam = family("vm_dehibernate")
    acted: list[str] = []
    with pytest.raises(VdsmError) as info:
        calls(dirs).around(fam, "<domain/>", vm_record(), acted.append,
                           extra_env={"FROM_SNAPSHOT": "True"})
    assert info.value.code == Code.HOOK_ERROR
    assert "said by before_vm_dehibernate" in info.value.message
    assert acted == []
    assert logged(dirs) == ["before_vm_dehibernate p= d= fs=True <domain/>"]


def test_around_device_variants_sit_inside_the_vm_events(dirs: Any) -> None:
    for event in ("before_vm_destroy", "after_vm_destroy", "before_device_destroy",
                  "after_device_destroy"):
        recorder(dirs, event)
    fam, dev = family("vm_destroy"), family("device_destroy")
    calls(dirs).around(fam, "<domain/>", vm_record({"p": "vm"}), lambda _x: None,
                       devices=[("<disk/>", {"d": "1"}), ("<interface/>", {"d": "2"})],
                       device_fam=dev)
    assert logged(dirs) == [
        "before_vm_destroy p=vm d= fs=unset <domain/>",
        "before_device_destroy p=vm d=1 fs=unset <disk/>",
        "before_device_destroy p=vm d=2 fs=unset <interface/>",
        "after_device_destroy p=vm d=1 fs=unset <disk/>",
        "after_device_destroy p=vm d=2 fs=unset <interface/>",
        "after_vm_destroy p=vm d= fs=unset <domain/>",
    ]


def test_a_failing_after_hook_does_not_change_the_outcome(dirs: Any) -> None:
    recorder(dirs, "after_vm_pause", rc=2)
    assert calls(dirs).around(family("vm_pause"), "<domain/>", vm_record(),
                              lambda _x: 42) == 42


# --- operation state and status listeners -----------------------------------------


def test_status_listeners_hear_every_change_once() -> None:
    registry = VmRegistry()
    heard: list[tuple[str, str, str]] = []
    registry.on_status(lambda vm, old, new: heard.append((vm.vm_id[:4], old, new)))

    def broken(_vm: Vm, _old: str, _new: str) -> None:
        raise RuntimeError("a listener's bug")

    registry.on_status(broken)
    vm = vm_record()
    registry.add(vm)
    vm.set_status(UP)
    vm.set_status(UP)  # no change, nothing told
    vm.set_status(DOWN)
    assert heard == [("7d3e", "WaitForLaunch", "Up"), ("7d3e", "Up", "Down")]
    assert vm.status == DOWN


def test_one_operation_at_a_time() -> None:
    vm = vm_record()
    with vm.doing(HIBERNATING):
        assert vm.operation == HIBERNATING
        with pytest.raises(RuntimeError, match="while hibernating"), vm.doing(HIBERNATING):
            pass
        assert vm.operation == HIBERNATING
    assert vm.operation is None
    with pytest.raises(ValueError), vm.doing(HIBERNATING):
        raise ValueError("the operation failed")
    assert vm.operation is None


def test_operations_on_one_vm_do_not_hold_another(inproc_agent: Any, dirs: Any) -> None:
    """A verb stuck in a hook on one VM (its lock held) leaves other VMs' verbs free."""
    gate = dirs.root / "gate"
    dirs.hook("before_vm_pause", "50_wait",
              f'[ "$slow" = yes ] || exit 0\nwhile [ ! -e {gate} ]; do sleep 0.02; done\n')
    dirs.define("UserDefinedVMProperties", "slow=^(yes|no)$")
    agent = inproc_agent()
    ids = []
    for name, slow in (("slow", "yes"), ("fast", "no")):
        p = {"vmId": f"00000000-0000-4000-8000-00000000000{len(ids)}",
             "vmName": f"hvtest-{name}", "memSize": 64, "custom": {"slow": slow}}
        assert agent.api.create(p)["status"]["code"] == 0
        ids.append(p["vmId"])
    done: list[int] = []
    slow = threading.Thread(target=lambda: done.append(
        agent.api.pause(ids[0])["status"]["code"]))
    slow.start()
    try:
        wait_for(lambda: (dirs.run).exists() and any(dirs.run.rglob("*")), timeout=10)
        # The slow VM's lock is held by its pause; the other VM is served meanwhile.
        assert agent.api.pause(ids[1])["status"]["code"] == 0
        assert agent.api.cont(ids[1])["status"]["code"] == 0
        assert done == []
    finally:
        Path(gate).touch()
        slow.join(30)
    assert done == [0]
    for vm_id in ids:
        assert agent.api.destroy(vm_id)["status"]["code"] == 0


def test_a_save_behind_the_agents_back_is_no_death(inproc_agent: Any, dirs: Any,
                                                   tmp_path: Path) -> None:
    """libvirt's STOPPED/SAVED: Down, but no after_vm_destroy (the guest lives in the image)."""
    import libvirt

    recorder(dirs, "after_vm_destroy")
    agent = inproc_agent()
    p = {"vmId": "00000000-0000-4000-8000-0000000000aa", "vmName": "hvtest-saved",
         "memSize": 64}
    assert agent.api.create(p)["status"]["code"] == 0
    conn = libvirt.open("test:///default")
    try:
        conn.lookupByUUIDString(p["vmId"]).save(str(tmp_path / "img"))
    finally:
        conn.close()
    vm = wait_for(lambda: [v for v in agent.api.list(True)["vmList"]
                           if v["status"] == "Down"], timeout=10)[0]
    assert vm["exitMessage"] == "saved"
    assert agent.api.destroy(p["vmId"])["status"]["code"] == 0
    assert logged(dirs) == []
