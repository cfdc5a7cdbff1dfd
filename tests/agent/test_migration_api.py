"""The migration verbs' checks on test:///default (no migration happens here; the
two-host tests are tests/guest/test_migration.py): migrationCreate holds the
source's XML to the client policy and the properties to this host's own
definitions, its hooks veto, an aborted incoming VM leaves nothing; migrate's
source-side refusals answer at once.
"""

from __future__ import annotations

import uuid
from typing import Any

from support import code, domain_exists, wait_for

from hookvisor.virt import domain_xml as dx

MAC = "52:54:00:00:0e:01"


def src_xml(vm_id: str, extra: str = "", vm_props: dict[str, str] | None = None,
            speed: str | None = None) -> str:
    xml = f"""<domain type='test'><name>hvtest-in-{vm_id[:8]}</name><uuid>{vm_id}</uuid>
  <memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os>
  <devices><interface type='ethernet'><mac address='{MAC}'/></interface>{extra}</devices>
</domain>"""
    device = {f"interface:{MAC}": {"speed": speed}} if speed is not None else {}
    return dx.set_metadata(xml, dx.Metadata(vm_props or {}, device, {"vmId": vm_id}))


def incoming(agent: Any, xml: str, vm_id: str) -> dict[str, Any]:
    reply: dict[str, Any] = agent.api.migrationCreate({"vmId": vm_id, "_srcDomXML": xml})
    return reply


def test_migration_create_refusals_name_the_cause(dirs: Any, inproc_agent: Any) -> None:
    dirs.define("UserDefinedVMProperties", "tag=^[a-z]+$")
    dirs.define("CustomDeviceProperties", "{type=interface;prop={speed=^[0-9]+$}}")
    agent = inproc_agent()
    vm_id = str(uuid.uuid4())
    # The source's domain may name no file outside storage_dirs (its metadata aside).
    bad = src_xml(vm_id, "<disk type='file'><source file='/etc/shadow'/>"
                  "<target dev='vda'/></disk>")
    reply = incoming(agent, bad, vm_id)
    assert code(reply) == 12 and "/etc/shadow" in reply["status"]["message"], reply
    # Properties are checked against this host's definitions, each named.
    reply = incoming(agent, src_xml(vm_id, vm_props={"color": "red"}), vm_id)
    assert code(reply) == 12 and "'color'" in reply["status"]["message"], reply
    reply = incoming(agent, src_xml(vm_id, speed="fast"), vm_id)
    assert code(reply) == 12 and "speed" in reply["status"]["message"], reply
    reply = agent.api.migrationCreate({"vmId": vm_id})
    assert code(reply) == 12 and "_srcDomXML" in reply["status"]["message"]
    assert agent.api.list()["vmList"] == []


def test_destination_hooks_veto_in_order(dirs: Any, inproc_agent: Any) -> None:
    dirs.define("CustomDeviceProperties", "{type=interface;prop={speed=^[0-9]+$}}")
    log = dirs.root / "hooks.log"
    dirs.hook("before_device_migrate_destination", "50_log",
              f'echo "device $speed" >> {log}\n')
    dirs.hook("before_vm_migrate_destination", "50_veto",
              f'grep -q "{MAC}" "$_hook_domxml" && echo vm >> {log}\n'
              'echo "not on this host" >&2\nexit 2\n')
    agent = inproc_agent()
    vm_id = str(uuid.uuid4())
    reply = incoming(agent, src_xml(vm_id, speed="100"), vm_id)
    assert code(reply) == 78 and "not on this host" in reply["status"]["message"], reply
    assert log.read_text().split("\n")[:2] == ["device 100", "vm"]
    assert agent.api.list()["vmList"] == []


def test_an_aborted_incoming_vm_leaves_nothing(dirs: Any, inproc_agent: Any) -> None:
    agent = inproc_agent()
    vm_id = str(uuid.uuid4())
    reply = incoming(agent, src_xml(vm_id), vm_id)
    assert code(reply) == 0, reply
    assert reply["params"]["status"] == "Migration Destination"
    assert reply["libvirtUri"] and "migrationUri" in reply
    assert code(incoming(agent, src_xml(vm_id), vm_id)) == 4  # exist
    assert agent.api.migrateStatus(vm_id)["migrationStats"]["state"] == "incoming"
    # What the source sends when it gives up.
    agent.api.destroy(vm_id)
    wait_for(lambda: agent.api.list()["vmList"] == [])
    stats = agent.api.migrateStatus(vm_id)["migrationStats"]
    assert stats["state"] == "failed" and "aborted" in stats["message"]
    assert not domain_exists(vm_id)


def test_migrate_source_checks(dirs: Any, inproc_agent: Any) -> None:
    dirs.define("UserDefinedVMProperties", "cantmigrate=^(true|false)$")
    dirs.hook("before_vm_migrate_source", "50_no",
              'test "$cantmigrate" = true && { echo "pinned here" >&2; exit 2; }\nexit 0\n')
    agent = inproc_agent()
    vm_id = str(uuid.uuid4())
    created = agent.api.create({"vmId": vm_id, "vmName": f"hvtest-m-{vm_id[:6]}",
                                "memSize": 64, "custom": {"cantmigrate": "true"}})
    assert code(created) == 0, created
    try:
        assert agent.api.migrateStatus(vm_id)["migrationStats"]["state"] == "none"
        reply = agent.api.migrate({"vmId": vm_id, "dst": "127.0.0.1:1"})
        assert code(reply) == 78 and "pinned here" in reply["status"]["message"], reply
        assert agent.api.migrateStatus(vm_id)["migrationStats"]["state"] == "vetoed"
        assert agent.api.list(False, [vm_id])["vmList"][0]["status"] == "Up"
        assert code(agent.api.migrate({"vmId": str(uuid.uuid4()), "dst": "h:1"})) == 1
        assert code(agent.api.migrateCancel(vm_id)) == 100
    finally:
        agent.api.destroy(vm_id)


def test_progress_from_libvirt_job_stats() -> None:
    from hookvisor.agent.migration import progress_of
    from hookvisor.cli.vm_migrate_cmd import describe

    stats = {"type": 2, "data_total": 400 * 2**20, "data_processed": 150 * 2**20,
             "data_remaining": 300 * 2**20, "memory_bps": 2**20}
    out = progress_of(stats, "running")
    assert out["progress"] == 25 and out["dataRemaining"] == 300 * 2**20
    assert out["memoryBps"] == 2**20 and "downtime" not in out
    # Never 100 before libvirt is done; always 100 once it is.
    assert progress_of({"data_total": 10, "data_remaining": 0}, "running")["progress"] == 99
    assert progress_of({}, "done")["progress"] == 100
    assert progress_of({}, "running")["progress"] == 0
    line = describe({"state": "running", **out, "elapsed": 1.5})
    assert line == "running 25%, 150.0 MiB sent, 300.0 MiB left of 400.0 MiB, 1.5s"
    line = describe({"state": "done", "progress": 100, "downtime": 80, "message": "ok"})
    assert line == "done 100%, downtime 80 ms: ok"
