"""The one table of API verbs: what every transport and every metric is driven by.

A verb is its VDSM name, the agent method that serves it, whether the agent
must be ready for it (recovery done, libvirt reachable) and the key its
payload travels under in the reply. A transport (XML-RPC today, VDSM's
JSON-RPC over STOMP next) looks verbs up here and never names one itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hookvisor.agent.core import Agent

# Verbs of SPEC §4 not built yet: `noimpl`, never a traceback.
NOT_BUILT: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Verb:
    name: str
    handler: Callable[..., Any]
    # Refused (recovery 99 / unavail 40) until the agent is ready for VM work.
    gated: bool
    # Key of the payload in the reply; None: the reply is the status alone.
    reply_key: str | None
    # Changes state (logged at INFO); reports are polled often (DEBUG).
    changes: bool = False


def verb_table(agent: Agent) -> dict[str, Verb]:
    table = (
        Verb("create", agent.create, True, "vmList", changes=True),
        Verb("destroy", agent.destroy, True, None, changes=True),
        Verb("pause", agent.pause, True, None, changes=True),
        Verb("cont", agent.cont, True, None, changes=True),
        Verb("hibernate", agent.hibernate, True, None, changes=True),
        # The live-device verbs answer with the VM's updated device list (VDSM's shape).
        Verb("hotplugNic", agent.hotplug_nic, True, "vmList", changes=True),
        Verb("hotunplugNic", agent.hotunplug_nic, True, "vmList", changes=True),
        Verb("hotplugDisk", agent.hotplug_disk, True, "vmList", changes=True),
        Verb("hotunplugDisk", agent.hotunplug_disk, True, "vmList", changes=True),
        Verb("vmUpdateDevice", agent.vm_update_device, True, "vmList", changes=True),
        # Live migration: migrate returns at once; migrationCreate is the peer agent's call.
        Verb("migrate", agent.migrate, True, None, changes=True),
        Verb("migrationCreate", agent.migration_create, True, "params", changes=True),
        Verb("migrateStatus", agent.migrate_status, True, "migrationStats"),
        Verb("migrateCancel", agent.migrate_cancel, True, None, changes=True),
        Verb("list", agent.list_vms, True, "vmList"),
        Verb("dumpxmls", agent.dumpxmls, True, "domxmls"),
        Verb("getVmStats", agent.get_vm_stats, True, "statsList"),
        Verb("getAllVmStats", agent.get_all_vm_stats, True, "statsList"),
        Verb("getVdsCapabilities", agent.get_vds_capabilities, False, "info"),
        Verb("getVdsStats", agent.get_vds_stats, False, "info"),
        Verb("getHookRuns", agent.get_hook_runs, False, "hookRuns"),
        Verb("setupNetworks", agent.setup_networks, False, None, changes=True),
        Verb("confirmConnectivity", agent.confirm_connectivity, False, None),
        Verb("setSafeNetworkConfig", agent.set_safe_network_config, False, None, changes=True),
        # VDSM's verbs of the hook points beyond the seeds (issue 13).
        Verb("hotplugMemory", agent.hotplug_memory, True, "vmList", changes=True),
        Verb("setNumberOfCpus", agent.set_number_of_cpus, True, "vmList", changes=True),
        Verb("setTicket", agent.set_ticket, True, None, changes=True),
        Verb("hostdevListByCaps", agent.hostdev_list_by_caps, False, "deviceList"),
        Verb("getCustomPropertyDefinitions", agent.get_custom_property_definitions, False,
             "definitions"),
    )
    return {v.name: v for v in table}
