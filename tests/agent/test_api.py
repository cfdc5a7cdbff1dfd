"""End to end on test:///default: a real XML-RPC client against an agent served in-process.

In-process so the test reads the live domain from the same test driver the
agent uses (test:///default's state is per process).
"""

from __future__ import annotations

import hashlib
import time
import uuid
import xml.etree.ElementTree as ET
from typing import Any

import libvirt
import pytest
from support import code, deny_hook_listing, domain_exists, live_xml, wait_for

from hookvisor.virt import domain_xml as dx

TEST_URI = "test:///default"
MAC0, MAC1 = "52:54:00:00:00:a0", "52:54:00:00:00:a1"


def params(name: str, custom: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"vmId": str(uuid.uuid4()), "vmName": f"hvtest-{name}", "memSize": 64, "smp": 1,
            "custom": custom or {}, **extra}


def nic(mac: str, custom: dict[str, str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "interface", "device": "bridge", "network": "br0",
                           "macAddr": mac, "nicModel": "virtio"}
    if custom:
        out["custom"] = custom
    return out


def nic_models(xml: str) -> dict[str, str]:
    root = ET.fromstring(xml)
    return {i.find("mac").get("address"): i.find("model").get("type")  # type: ignore[union-attr]
            for i in root.iter("interface")}


@pytest.fixture
def props(dirs: Any) -> Any:
    dirs.define("UserDefinedVMProperties", "mark=^[a-z]+$;other=^[0-9]+$")
    dirs.define("CustomDeviceProperties", "{type=interface;prop={speed=^[0-9]+$}}")
    return dirs


def test_hooks_change_the_started_domain(props: Any, inproc_agent: Any) -> None:
    dirs = props
    dirs.hook("before_vm_start", "50_desc",
              'sed -i "s|</name>|</name><description>$mark</description>|" "$_hook_domxml"\n')
    # Only the NIC with custom properties goes through before_device_create.
    dirs.hook("before_device_create", "50_model",
              'sed -i "s|type=\\"virtio\\"|type=\\"e1000\\"|" "$_hook_domxml"\n'
              'echo "speed=$speed mark=$mark" >&2\n')
    agent = inproc_agent()
    p = params("hooked", {"mark": "hello"},
               devices=[nic(MAC0, {"speed": "100"}), nic(MAC1)])
    reply = agent.api.create(p)
    assert code(reply) == 0, reply
    assert reply["vmList"]["status"] == "Up"
    assert reply["vmList"]["custom"] == {"mark": "hello"}

    live = live_xml(p["vmId"])
    assert "<description>hello</description>" in live
    assert nic_models(live) == {MAC0: "e1000", MAC1: "virtio"}
    meta = dx.get_metadata(live)
    assert meta is not None
    assert meta.vm_props == {"mark": "hello"}
    assert meta.device_props == {f"interface:{MAC0}": {"speed": "100"}}

    full = agent.api.list(True, [p["vmId"]])["vmList"]
    assert [v["custom"] for v in full] == [{"mark": "hello"}]
    assert full[0]["devices"][0]["custom"] == {"speed": "100"}
    runs = agent.api.getHookRuns({"vmId": p["vmId"], "event": "before_device_create"})
    assert "speed=100 mark=hello" in runs["hookRuns"][0]["stderr"]
    assert code(agent.api.destroy(p["vmId"])) == 0
    assert not domain_exists(p["vmId"])
    assert dirs.leftover_files() == []


def test_device_hook_replaces_in_place_keeping_order(props: Any, inproc_agent: Any) -> None:
    dirs = props
    dirs.hook("before_device_create", "50_cp", 'cp "$_hook_domxml" "$_hook_domxml.seen"\n'
              'sed -i "s|br0|br$speed|" "$_hook_domxml"\n'
              f'cat "$_hook_domxml" >> {dirs.root}/devices.log\n')
    dirs.hook("before_vm_start", "50_cp", f'cp "$_hook_domxml" {dirs.root}/domain.xml\n')
    agent = inproc_agent()
    p = params("order", devices=[nic(MAC0), nic(MAC1, {"speed": "7"}),
                                 {"type": "disk", "device": "cdrom", "iface": "ide"}])
    assert code(agent.api.create(p)) == 0
    try:
        handed = dx.devices((dirs.root / "domain.xml").read_text())
        assert [(r.kind, r.key) for r in handed] == [
            ("interface", f"interface:{MAC0}"), ("interface", f"interface:{MAC1}"),
            ("disk", "disk:hda"), ("graphics", None)]  # the console the agent adds, last
        assert "br0" in handed[0].xml and "br7" in handed[1].xml
        assert (dirs.root / "devices.log").read_text().count("<interface") == 1
    finally:
        assert code(agent.api.destroy(p["vmId"])) == 0


def test_veto_leaves_nothing(props: Any, inproc_agent: Any) -> None:
    dirs = props
    dirs.hook("before_vm_start", "10_ok", "exit 0\n")
    dirs.hook("before_vm_start", "20_no", "echo 'not on this host' >&2\nexit 2\n")
    agent = inproc_agent()
    p = params("veto")
    reply = agent.api.create(p)
    assert code(reply) == 78
    assert "20_no" in reply["status"]["message"]
    assert "not on this host" in reply["status"]["message"]
    assert not domain_exists(p["vmId"])
    assert agent.api.list()["vmList"] == []
    assert code(agent.api.getVmStats(p["vmId"])) == 1
    assert dirs.leftover_files() == []
    # The same vmId can be created once the hook allows it.
    (dirs.hooks / "before_vm_start" / "20_no").unlink()
    assert code(agent.api.create(p)) == 0
    assert code(agent.api.destroy(p["vmId"])) == 0


def test_device_veto_leaves_nothing(props: Any, inproc_agent: Any) -> None:
    props.hook("before_device_create", "10_no", "echo 'speed too high' >&2\nexit 1\n")
    agent = inproc_agent()
    p = params("devveto", devices=[nic(MAC0, {"speed": "9"})])
    reply = agent.api.create(p)
    assert code(reply) == 78 and "speed too high" in reply["status"]["message"]
    assert not domain_exists(p["vmId"])
    assert agent.api.list()["vmList"] == []


def test_bad_custom_properties_are_all_named_and_nothing_starts(props: Any,
                                                                inproc_agent: Any) -> None:
    dirs = props
    dirs.hook("before_vm_start", "50_touch", f"touch {dirs.root}/hook-ran\n")
    agent = inproc_agent()
    p = params("badprop", {"mark": "UPPER", "nosuch": "1"},
               devices=[nic(MAC0, {"speed": "fast"})])
    reply = agent.api.create(p)
    assert code(reply) == 9
    message = reply["status"]["message"]
    for word in ("mark", "nosuch", "speed"):
        assert word in message, message
    assert not domain_exists(p["vmId"])
    assert not (dirs.root / "hook-ran").exists()
    assert agent.api.list()["vmList"] == []


def test_bad_params_are_named(inproc_agent: Any) -> None:
    agent = inproc_agent()
    reply = agent.api.create({"vmId": "nope", "memSize": "lots", "smp": 0,
                              "devices": [{"type": "tape"}, {"type": "interface"}]})
    assert code(reply) == 9
    message = reply["status"]["message"]
    for name in ("vmId", "vmName", "memSize", "smp", "devices[0].type",
                 "devices[1].network"):
        assert name in message, message


def test_destroy_runs_its_hooks_with_the_modified_xml(props: Any, inproc_agent: Any) -> None:
    dirs = props
    log = dirs.root / "events.log"
    dirs.hook("before_vm_start", "50_desc",
              'sed -i "s|</name>|</name><description>modified</description>|" "$_hook_domxml"\n')
    for event in ("before_vm_destroy", "before_device_destroy", "after_device_destroy",
                  "after_vm_destroy"):
        dirs.hook(event, "50_log", f'echo "{event} $speed" >> {log}\n')
    dirs.hook("after_vm_destroy", "60_copy", f'cp "$_hook_domxml" {dirs.root}/last.xml\n')
    agent = inproc_agent()
    p = params("destroy", devices=[nic(MAC0, {"speed": "10"}), nic(MAC1)])
    assert code(agent.api.create(p)) == 0
    assert code(agent.api.destroy(p["vmId"])) == 0
    assert [line.strip() for line in log.read_text().splitlines()] == [
        "before_vm_destroy", "before_device_destroy 10", "after_device_destroy 10",
        "after_vm_destroy"]
    assert "<description>modified</description>" in (dirs.root / "last.xml").read_text()
    assert not domain_exists(p["vmId"])
    assert agent.api.list()["vmList"] == []
    assert code(agent.api.destroy(p["vmId"])) == 1


def test_vm_destroyed_behind_the_agents_back(dirs: Any, inproc_agent: Any) -> None:
    died = dirs.root / "died.log"
    dirs.hook("after_vm_destroy", "50_log", f'echo "$vmId" >> {died}\n')
    agent = inproc_agent()
    p = params("behind")
    assert code(agent.api.create(p)) == 0
    conn = libvirt.open(TEST_URI)
    try:
        conn.lookupByUUIDString(p["vmId"]).destroy()
    finally:
        conn.close()

    def down() -> list[dict[str, Any]]:
        vms = agent.api.list(True)["vmList"]
        return [v for v in vms if v["status"] == "Down"]

    vm = wait_for(down)[0]
    assert vm["vmId"] == p["vmId"] and vm["exitMessage"]
    wait_for(died.exists)
    time.sleep(0.5)  # a second run would come now
    assert died.read_text().splitlines() == [p["vmId"]]
    stats = agent.api.getVmStats(p["vmId"])["statsList"][0]
    assert stats["status"] == "Down"
    # The client collects the Down VM; its hooks do not run again.
    assert code(agent.api.destroy(p["vmId"])) == 0
    assert agent.api.list()["vmList"] == []
    assert died.read_text().splitlines() == [p["vmId"]]


def test_launch_flags_start_paused_then_pause_cont(dirs: Any, inproc_agent: Any) -> None:
    dirs.hook("before_vm_start", "50_paused", """
        import os
        import hooking
        hooking.dump_vm_launch_flags_to_file(os.environ["vmId"], 1)
        """, python=True)
    log = dirs.root / "events.log"
    for event in ("before_vm_pause", "after_vm_pause", "before_vm_cont", "after_vm_cont"):
        dirs.hook(event, "50_log", f'echo {event} >> {log}\n')
    agent = inproc_agent()
    p = params("paused")
    reply = agent.api.create(p)
    assert code(reply) == 0 and reply["vmList"]["status"] == "Paused"
    conn = libvirt.open(TEST_URI)
    try:
        dom = conn.lookupByUUIDString(p["vmId"])
        assert dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED
        assert code(agent.api.cont(p["vmId"])) == 0
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert code(agent.api.pause(p["vmId"])) == 0
        assert dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED
        assert agent.api.list()["vmList"][0]["status"] == "Paused"
        assert code(agent.api.cont(p["vmId"])) == 0
    finally:
        conn.close()
    assert log.read_text().split() == ["before_vm_cont", "after_vm_cont", "before_vm_pause",
                                       "after_vm_pause", "before_vm_cont", "after_vm_cont"]
    assert dirs.leftover_files() == []
    assert code(agent.api.destroy(p["vmId"])) == 0


def test_pause_veto_keeps_the_vm_running(dirs: Any, inproc_agent: Any) -> None:
    dirs.hook("before_vm_pause", "50_no", "echo no pausing >&2\nexit 1\n")
    agent = inproc_agent()
    p = params("nopause", launchPaused=False)
    assert code(agent.api.create(p)) == 0
    reply = agent.api.pause(p["vmId"])
    assert code(reply) == 78 and "no pausing" in reply["status"]["message"]
    assert agent.api.list()["vmList"][0]["status"] == "Up"
    assert code(agent.api.destroy(p["vmId"])) == 0


def test_launch_paused_param(inproc_agent: Any) -> None:
    agent = inproc_agent()
    p = params("lp", launchPaused=True)
    assert agent.api.create(p)["vmList"]["status"] == "Paused"
    assert code(agent.api.destroy(p["vmId"])) == 0


def test_json_hooks_around_reports(dirs: Any, inproc_agent: Any) -> None:
    add_key = """
        import hooking
        data = hooking.read_json()
        for item in (data if isinstance(data, list) else [data]):
            item["hooked"] = "yes"
        hooking.write_json(data)
        """
    for event in ("after_get_vm_stats", "after_get_all_vm_stats", "after_get_caps",
                  "after_get_stats"):
        dirs.hook(event, "50_add", add_key, python=True)
    script = dirs.hook("before_vm_start", "10_noop", "exit 0\n")
    agent = inproc_agent()
    p = params("stats")
    assert code(agent.api.create(p)) == 0
    try:
        one = agent.api.getVmStats(p["vmId"])["statsList"]
        assert one[0]["hooked"] == "yes" and one[0]["status"] == "Up"
        every = agent.api.getAllVmStats()["statsList"]
        assert [s["vmId"] for s in every] == [p["vmId"]] and every[0]["hooked"] == "yes"
        assert agent.api.getVdsStats()["info"]["hooked"] == "yes"
        caps = agent.api.getVdsCapabilities()["info"]
        assert caps["hooked"] == "yes"
        digest = hashlib.sha256(script.read_bytes()).hexdigest()
        assert caps["hooks"]["before_vm_start"]["10_noop"]["checksum"] == digest
        assert "after_vm_destroy" in caps["supportedHookEvents"]
        dirs.hook("before_get_caps", "50_no", "echo caps refused >&2\nexit 2\n")
        reply = agent.api.getVdsCapabilities()
        assert code(reply) == 78 and "caps refused" in reply["status"]["message"]
    finally:
        assert code(agent.api.destroy(p["vmId"])) == 0


def test_error_codes_and_envelope(props: Any, inproc_agent: Any) -> None:
    agent = inproc_agent()
    p = params("codes")
    assert code(agent.api.create(p)) == 0
    try:
        assert code(agent.api.create(p)) == 4
        assert code(agent.api.create({"vmId": p["vmId"]})) == 4
        missing = str(uuid.uuid4())
        for verb in ("destroy", "pause", "cont", "getVmStats"):
            reply = getattr(agent.api, verb)(missing)
            assert code(reply) == 1, (verb, reply)
        assert code(agent.api.noSuchVerb({})) == 44
        # Built (issue 9): refused by its checks, naming the parameter.
        reply = agent.api.migrate({})
        assert code(reply) == 100 and "vmId" in reply["status"]["message"]
        assert code(agent.api.migrateStatus(missing)) == 1
        # Refused by its checks, before any netlink call (this agent is in the host's namespace).
        assert code(agent.api.setupNetworks({"n": {"nic": "x/y"}}, {}, {})) == 100
        # Built (issue 8): a VM verb without a VM is refused by its checks.
        assert code(agent.api.hibernate({})) in (1, 100)
        assert code(agent.api.destroy()) == 100  # bad arguments: a status, not a Fault
        assert code(agent.api.list(False, "x")) == 100
        assert code(agent.api.getHookRuns({"bogus": 1})) == 100
        defs = agent.api.getCustomPropertyDefinitions()["definitions"]
        assert defs["vm"]["mark"] == "^[a-z]+$"
        assert defs["device"]["interface"]["speed"] == "^[0-9]+$"
        assert agent.api.list()["vmList"] == [{"vmId": p["vmId"], "status": "Up"}]
    finally:
        assert code(agent.api.destroy(p["vmId"])) == 0


def test_xml_param_used_as_given(dirs: Any, inproc_agent: Any) -> None:
    agent = inproc_agent()
    vm_id = str(uuid.uuid4())
    xml = (f"<domain type='test'><name>hvtest-xml</name><uuid>{vm_id}</uuid>"
           "<memory unit='MiB'>64</memory><vcpu>3</vcpu>"
           "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices/></domain>")
    reply = agent.api.create({"xml": xml, "custom": {}})
    assert code(reply) == 0, reply
    try:
        assert reply["vmList"]["vmId"] == vm_id
        assert "<vcpu placement='static'>3</vcpu>" in live_xml(vm_id)
        assert dx.get_metadata(live_xml(vm_id)) is not None
    finally:
        assert code(agent.api.destroy(vm_id)) == 0
    bad = agent.api.create({"xml": "<domain"})
    assert code(bad) == 9 and "xml" in bad["status"]["message"]


def test_pause_and_resume_outside_the_agent_update_the_status(inproc_agent: Any) -> None:
    agent = inproc_agent()
    p = params("outside")
    assert code(agent.api.create(p)) == 0
    conn = libvirt.open(TEST_URI)
    try:
        dom = conn.lookupByUUIDString(p["vmId"])
        dom.suspend()
        wait_for(lambda: agent.api.list()["vmList"][0]["status"] == "Paused")
        dom.resume()
        wait_for(lambda: agent.api.list()["vmList"][0]["status"] == "Up")
    finally:
        conn.close()
    assert code(agent.api.destroy(p["vmId"])) == 0


def test_restarted_agent_adopts_running_vms(props: Any, inproc_agent: Any) -> None:
    dirs = props
    dirs.hook("after_vm_start", "50_log", f'echo "$vmId" >> {dirs.root}/started.log\n')
    # test:///default lives while a connection is open: keep one across the restart.
    keep = libvirt.open(TEST_URI)
    try:
        first = inproc_agent()
        p = params("adopt", {"mark": "kept"}, devices=[nic(MAC0, {"speed": "5"})])
        assert code(first.api.create(p)) == 0
        q = params("adoptp", launchPaused=True)
        assert code(first.api.create(q)) == 0
        first.stop()
        second = inproc_agent()
        vms = {v["vmId"]: v for v in second.api.list(True)["vmList"]}
        assert vms[p["vmId"]]["status"] == "Up" and vms[q["vmId"]]["status"] == "Paused"
        assert vms[p["vmId"]]["custom"] == {"mark": "kept"}
        assert vms[p["vmId"]]["devices"][0]["custom"] == {"speed": "5"}
        assert len((dirs.root / "started.log").read_text().split()) == 2
        assert code(second.api.destroy(p["vmId"])) == 0
        assert code(second.api.destroy(q["vmId"])) == 0
    finally:
        keep.close()


def test_unreadable_event_dir_vetoes_rather_than_means_no_hooks(
        dirs: Any, inproc_agent: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = inproc_agent()
    deny_hook_listing(monkeypatch)
    p = params("denied")
    reply = agent.api.create(p)
    assert code(reply) == 78, reply
    assert "cannot list" in reply["status"]["message"]
    assert not domain_exists(p["vmId"])
    monkeypatch.undo()
    runs = agent.api.getHookRuns({"vmId": p["vmId"]})["hookRuns"]
    assert [r["event"] for r in runs] == ["before_vm_start"]
