"""The events of SPEC §2 as one table of data.

One runner serves every event; what differs between events (the payload, whether
the final data is used, whether a failure vetoes, which extra variables the
caller may pass) is read from this table, never coded per event.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Payload(enum.Enum):
    DOMAIN = "domain"  # the whole domain XML, in _hook_domxml
    DEVICE = "device"  # one device's XML, in _hook_domxml
    JSON = "json"  # a JSON document, in _hook_json
    NONE = "none"

    @property
    def is_xml(self) -> bool:
        return self in (Payload.DOMAIN, Payload.DEVICE)

    @property
    def env_var(self) -> str:
        # VDSM hands payload-less events an empty file in _hook_domxml too.
        return "_hook_json" if self is Payload.JSON else "_hook_domxml"


@dataclass(frozen=True)
class Event:
    name: str
    payload: Payload
    modifies: bool  # the chain's final data is what the operation uses
    vetoes: bool  # a failure stops the operation
    extras: tuple[str, ...] = ()  # extra environment names the caller may pass
    # Agent start/stop hooks run as root with PATH, HOME, LANG only.
    clean_env: bool = False
    # The caller's own parameters become variables (VDSM's setTicket `params`):
    # any name, each checked as a custom property is (no PATH, LD_*, _hook_*...).
    open_extras: bool = False


D, d, J, N = Payload.DOMAIN, Payload.DEVICE, Payload.JSON, Payload.NONE

# (name, payload, modifies, vetoes, extras): SPEC §2, one row per event.
_TABLE: tuple[tuple[str, Payload, bool, bool, tuple[str, ...]], ...] = (
    ("before_vm_start", D, True, True, ()),
    ("after_vm_start", D, False, False, ()),
    ("before_device_create", d, True, True, ()),
    ("after_device_create", d, False, False, ()),
    ("before_vm_pause", D, False, True, ()),
    ("after_vm_pause", D, False, False, ()),
    ("before_vm_cont", D, False, True, ()),
    ("after_vm_cont", D, False, False, ()),
    ("before_vm_hibernate", D, False, True, ()),
    ("after_vm_hibernate", D, False, False, ()),
    ("before_vm_dehibernate", D, False, True, ("FROM_SNAPSHOT",)),
    ("after_vm_dehibernate", D, False, False, ("FROM_SNAPSHOT",)),
    ("before_vm_migrate_source", D, False, True, ()),
    ("after_vm_migrate_source", D, False, False, ()),
    ("before_vm_migrate_destination", D, False, True, ()),
    ("after_vm_migrate_destination", D, False, False, ()),
    ("before_device_migrate_source", d, False, True, ()),
    ("after_device_migrate_source", d, False, False, ()),
    ("before_device_migrate_destination", d, False, True, ()),
    ("after_device_migrate_destination", d, False, False, ()),
    ("before_vm_destroy", D, False, False, ()),
    ("after_vm_destroy", D, False, False, ()),
    ("before_device_destroy", d, False, True, ()),
    ("after_device_destroy", d, False, False, ()),
    ("before_nic_hotplug", d, True, True, ()),
    ("after_nic_hotplug", d, False, False, ()),
    ("after_nic_hotplug_fail", d, False, False, ()),
    ("before_nic_hotunplug", d, False, True, ()),
    ("after_nic_hotunplug", d, False, False, ()),
    ("after_nic_hotunplug_fail", d, False, False, ()),
    ("before_disk_hotplug", d, True, True, ()),
    ("after_disk_hotplug", d, False, False, ()),
    ("after_disk_hotplug_fail", d, False, False, ()),
    ("before_disk_hotunplug", d, False, True, ()),
    ("after_disk_hotunplug", d, False, False, ()),
    ("after_disk_hotunplug_fail", d, False, False, ()),
    ("before_update_device", d, True, True, ()),
    ("after_update_device", d, False, False, ()),
    ("after_update_device_fail", d, False, False, ()),
    ("before_network_setup", J, True, True, ()),
    ("after_network_setup", J, False, False, ()),
    ("after_network_setup_fail", J, False, False, ()),
    # Reports: the before_ hook may veto, the after_ hook replaces the result.
    ("before_get_caps", J, True, True, ()),
    ("after_get_caps", J, True, False, ()),
    ("before_get_stats", J, True, True, ()),
    ("after_get_stats", J, True, False, ()),
    ("before_get_vm_stats", J, True, True, ()),
    ("after_get_vm_stats", J, True, False, ()),
    ("before_get_all_vm_stats", J, True, True, ()),
    ("after_get_all_vm_stats", J, True, False, ()),
    # VDSM's own hook points that the seeds do not list (lib/vdsm/common/hooks.py).
    ("before_memory_hotplug", d, True, True, ()),
    ("after_memory_hotplug", d, False, False, ()),
    ("before_set_num_of_cpus", N, False, True, ()),
    ("after_set_num_of_cpus", N, False, False, ()),
    # after_disk_prepare: VDSM's localdisk hook swaps the drive's path here.
    ("after_disk_prepare", J, True, True, ()),
    # VDSM runs it with raiseError=False: its result replaces the list, a failure is logged.
    ("after_hostdev_list_by_caps", J, True, False, ()),
)

# setTicket's hooks: the domain XML, the client's `params` as variables; a failing
# before_ hook is logged and the ticket is set anyway (VDSM: raiseError=False).
_TICKET = ("before_vm_set_ticket", "after_vm_set_ticket")

EVENTS: dict[str, Event] = {
    "before_vdsm_start": Event("before_vdsm_start", N, False, False, clean_env=True),
    "after_vdsm_stop": Event("after_vdsm_stop", N, False, False, clean_env=True),
    **{row[0]: Event(*row) for row in _TABLE},
    **{name: Event(name, D, False, False, open_extras=True) for name in _TICKET},
}


def check_event_name(name: str) -> None:
    """Refuse what could escape the hooks dir before anything else looks at it."""
    if not name or name.startswith("/") or ".." in name or "/" in name or "\0" in name:
        raise ValueError(f"refused event name {name!r}: not a plain event name")


def get_event(name: str) -> Event:
    """The catalogue entry; ValueError for a path-like or unknown name."""
    check_event_name(name)
    try:
        return EVENTS[name]
    except KeyError:
        raise ValueError(f"unknown hook event {name!r}") from None
