"""The catalogue: SPEC §2 as data, and the refusal of unknown or path-like names."""

from __future__ import annotations

import pytest

from hookvisor.hooks.catalogue import EVENTS, Payload, get_event

D, d, J, N = Payload.DOMAIN, Payload.DEVICE, Payload.JSON, Payload.NONE

# (event, payload, modifies, vetoes) straight from SPEC §2's table.
SPEC = [
    ("before_vdsm_start", N, False, False), ("after_vdsm_stop", N, False, False),
    ("before_vm_start", D, True, True), ("after_vm_start", D, False, False),
    ("before_device_create", d, True, True), ("after_device_create", d, False, False),
    ("before_vm_pause", D, False, True), ("after_vm_pause", D, False, False),
    ("before_vm_cont", D, False, True), ("after_vm_cont", D, False, False),
    ("before_vm_hibernate", D, False, True), ("after_vm_hibernate", D, False, False),
    ("before_vm_dehibernate", D, False, True), ("after_vm_dehibernate", D, False, False),
    ("before_vm_migrate_source", D, False, True), ("after_vm_migrate_source", D, False, False),
    ("before_vm_migrate_destination", D, False, True),
    ("after_vm_migrate_destination", D, False, False),
    ("before_device_migrate_source", d, False, True),
    ("after_device_migrate_source", d, False, False),
    ("before_device_migrate_destination", d, False, True),
    ("after_device_migrate_destination", d, False, False),
    ("before_vm_destroy", D, False, False), ("after_vm_destroy", D, False, False),
    ("before_device_destroy", d, False, True), ("after_device_destroy", d, False, False),
    ("before_nic_hotplug", d, True, True), ("after_nic_hotplug", d, False, False),
    ("after_nic_hotplug_fail", d, False, False),
    ("before_nic_hotunplug", d, False, True), ("after_nic_hotunplug", d, False, False),
    ("after_nic_hotunplug_fail", d, False, False),
    ("before_disk_hotplug", d, True, True), ("after_disk_hotplug", d, False, False),
    ("after_disk_hotplug_fail", d, False, False),
    ("before_disk_hotunplug", d, False, True), ("after_disk_hotunplug", d, False, False),
    ("after_disk_hotunplug_fail", d, False, False),
    ("before_update_device", d, True, True), ("after_update_device", d, False, False),
    ("after_update_device_fail", d, False, False),
    ("before_network_setup", J, True, True), ("after_network_setup", J, False, False),
    ("after_network_setup_fail", J, False, False),
    ("before_get_caps", J, True, True), ("after_get_caps", J, True, False),
    ("before_get_stats", J, True, True), ("after_get_stats", J, True, False),
    ("before_get_vm_stats", J, True, True), ("after_get_vm_stats", J, True, False),
    ("before_get_all_vm_stats", J, True, True), ("after_get_all_vm_stats", J, True, False),
    # VDSM's hook points beyond the seeds (issue 13).
    ("before_memory_hotplug", d, True, True), ("after_memory_hotplug", d, False, False),
    ("before_set_num_of_cpus", N, False, True), ("after_set_num_of_cpus", N, False, False),
    ("before_vm_set_ticket", D, False, False), ("after_vm_set_ticket", D, False, False),
    ("after_disk_prepare", J, True, True), ("after_hostdev_list_by_caps", J, True, False),
]

# VDSM's hooks.py has 58 hook points; the seeds add the two disk _fail events.
VDSM_EVENTS = 58


def test_sixty_events_vdsm_and_the_seeds() -> None:
    assert len(EVENTS) == len(SPEC) == VDSM_EVENTS + 2 == 60


def test_catalogue_is_exactly_the_spec_table() -> None:
    assert {name for name, *_ in SPEC} == set(EVENTS)
    for name, payload, modifies, vetoes in SPEC:
        ev = get_event(name)
        assert (ev.payload, ev.modifies, ev.vetoes) == (payload, modifies, vetoes), name


def test_extras_and_clean_environment() -> None:
    assert get_event("before_vm_dehibernate").extras == ("FROM_SNAPSHOT",)
    assert get_event("after_vm_dehibernate").extras == ("FROM_SNAPSHOT",)
    assert get_event("before_vm_start").extras == ()
    # setTicket's params become variables, whatever their names (checked as properties).
    assert {n for n, e in EVENTS.items() if e.open_extras} == {"before_vm_set_ticket",
                                                              "after_vm_set_ticket"}
    assert {n for n, e in EVENTS.items() if e.clean_env} == {"before_vdsm_start",
                                                            "after_vdsm_stop"}


def test_payload_variables() -> None:
    assert Payload.DOMAIN.env_var == Payload.DEVICE.env_var == "_hook_domxml"
    assert Payload.JSON.env_var == "_hook_json"


@pytest.mark.parametrize(
    "name", ["before_vm_strat", "", "/etc", "/usr/libexec/hooks/before_vm_start",
             "../before_vm_start", "before_vm_start/..", "..", "before_vm_start/x",
             "before\0vm"],
)
def test_unknown_absolute_and_dotdot_refused(name: str) -> None:
    with pytest.raises(ValueError):
        get_event(name)


def test_docs_list_every_event() -> None:
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "hooks.md").read_text()
    missing = [name for name in EVENTS if f"| `{name}` |" not in docs]
    assert not missing
