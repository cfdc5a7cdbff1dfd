"""Bounds on what a client may put in a call, and a VDSM error naming the parameter (issue 7 §6-7).

Through the Agent directly (the dispatcher, as a transport calls it) and
through a served agent. Also: getHookRuns paging, and a run-dir failure
during create.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import code

from hookvisor.agent.core import reply_size
from hookvisor.agent.params import MAX_DEVICES, MAX_PROP_VALUE, MAX_PROPS
from hookvisor.errors import CODE_NAMES, Code
from hookvisor.hooks.records import RunRecord, RunRecords

TEST_HOST_MEMORY_MIB = 3072  # test:///default's node info
TEST_MAX_VCPUS = 32


def message(reply: dict[str, Any]) -> str:
    return str(reply["status"]["message"])


def params(**extra: Any) -> dict[str, Any]:
    return {"vmId": str(uuid.uuid4()), "vmName": f"hvtest-b-{uuid.uuid4().hex[:6]}",
            "memSize": 64, **extra}


def assert_error(reply: dict[str, Any], want: Code, *names: str) -> None:
    assert code(reply) == want, reply
    for name in names:
        assert name in message(reply), (name, reply)
    assert "Traceback" not in message(reply) and "unexpected" not in message(reply)
    assert len(message(reply)) < 2000, len(message(reply))


# --- create params --------------------------------------------------------------


def test_smp_and_memory_beyond_the_host_are_refused_at_once(direct_agent: Any) -> None:
    agent = direct_agent()
    started = time.monotonic()
    reply = agent.call("create", params(smp=2147483647))
    assert_error(reply, Code.CREATE_ERR, "smp", "2147483647", str(TEST_MAX_VCPUS))
    assert time.monotonic() - started < 5  # refused, not built: the OOM took minutes
    assert_error(agent.call("create", params(smp=TEST_MAX_VCPUS + 1)), Code.CREATE_ERR, "smp")
    assert_error(agent.call("create", params(memSize=TEST_HOST_MEMORY_MIB + 1)),
                 Code.CREATE_ERR, "memSize", str(TEST_HOST_MEMORY_MIB))
    assert_error(agent.call("create", params(smp="9" * 5000)), Code.CREATE_ERR, "smp")
    assert_error(agent.call("create", params(memSize="²")), Code.CREATE_ERR, "memSize")
    # The same in a client's own XML.
    for body, name in (("<memory unit='MiB'>64</memory><vcpu>2147483647</vcpu>", "<vcpu>"),
                       ("<memory unit='TiB'>64</memory><vcpu>1</vcpu>", "<memory>"),
                       ("<memory unit='parsec'>1</memory>", "<memory>"),
                       ("<memory>64</memory><vcpu>-1</vcpu>", "<vcpu>")):
        xml = (f"<domain type='test'><name>hvtest-big</name><uuid>{uuid.uuid4()}</uuid>"
               f"{body}<os><type>hvm</type></os></domain>")
        assert_error(agent.call("create", {"xml": xml}), Code.CREATE_ERR, "xml", name)
    assert agent.call("list")["vmList"] == []
    p = params(smp=TEST_MAX_VCPUS, memSize=TEST_HOST_MEMORY_MIB)
    assert code(agent.call("create", p)) == 0
    assert code(agent.call("destroy", p["vmId"])) == 0


def test_names_ids_props_and_devices_are_bounded(direct_agent: Any) -> None:
    agent = direct_agent(max_vm_name=40)
    for name in ("x" * 41, "a\x1b[31mred", "a\nb", "a/b", "", "a\x00b"):
        assert_error(agent.call("create", params(vmName=name)), Code.CREATE_ERR, "vmName")
    for vm_id in ("not-a-uuid", "x" * 100_000, 12, ["a"], {"a": 1}):
        reply = agent.call("create", params(vmId=vm_id))
        assert_error(reply, Code.CREATE_ERR, "vmId")
    many = {f"p{i}": "1" for i in range(MAX_PROPS + 1)}
    assert_error(agent.call("create", params(custom=many)), Code.CREATE_ERR, "custom",
                 str(MAX_PROPS))
    assert_error(agent.call("create", params(custom={"p": "v" * (MAX_PROP_VALUE + 1)})),
                 Code.CREATE_ERR, "custom.p")
    assert_error(agent.call("create", params(custom={"n" * 1000: "v"})), Code.CREATE_ERR,
                 "custom")
    nics = [{"type": "interface", "network": "br0"}] * (MAX_DEVICES + 1)
    assert_error(agent.call("create", params(devices=nics)), Code.CREATE_ERR, "devices",
                 str(MAX_DEVICES))
    assert_error(agent.call("create", params(devices=[{"type": "interface",
                                                        "network": "b" * 1000}])),
                 Code.CREATE_ERR, "devices[0].network")
    assert_error(agent.call("create", params(devices=[{"type": "disk", "device": ["x"],
                                                        "iface": {}}])),
                 Code.CREATE_ERR, "devices[0].device", "devices[0].iface")
    xml = ("<domain type='test'><name>" + "n" * 41 + f"</name><uuid>{uuid.uuid4()}</uuid>"
           "<memory>65536</memory></domain>")
    assert_error(agent.call("create", {"xml": xml}), Code.CREATE_ERR, "xml: <name>")
    assert agent.call("list")["vmList"] == []


# --- every verb's parameters ------------------------------------------------------


BAD_VM_IDS = [12, 1.5, True, None, [], ["x"], {}, {"a": "b"}, "not-a-uuid", "", "x" * 100_000,
              "../../etc/passwd", "\x00"]


@pytest.mark.parametrize("verb", ["destroy", "pause", "cont", "getVmStats"])
def test_a_bad_vm_id_is_named(direct_agent: Any, verb: str) -> None:
    agent = direct_agent()
    for bad in BAD_VM_IDS:
        assert_error(agent.call(verb, bad), Code.GENERAL, "vmId")
    # A well-formed id of no VM stays noVM; any case of a real one finds it.
    assert code(agent.call(verb, str(uuid.uuid4()))) == Code.NO_VM


def test_list_arguments(direct_agent: Any) -> None:
    agent = direct_agent()
    p = params()
    assert code(agent.call("create", p)) == 0
    try:
        assert_error(agent.call("list", False, [{}]), Code.GENERAL, "vmList[0]")
        assert_error(agent.call("list", False, ["nope"]), Code.GENERAL, "vmList[0]")
        assert_error(agent.call("list", False, "x"), Code.GENERAL, "vmList")
        assert_error(agent.call("list", False, {"a": 1}), Code.GENERAL, "vmList")
        for full in ("maybe", 1, [], {}, None):
            assert_error(agent.call("list", full), Code.GENERAL, "fullStatus")
        assert agent.call("list", "true", [p["vmId"].upper()])["vmList"][0]["vmName"] \
            == p["vmName"]
        assert agent.call("list", False, [str(uuid.uuid4())])["vmList"] == []
        assert agent.call("list", "false")["vmList"] == [{"vmId": p["vmId"], "status": "Up"}]
    finally:
        assert code(agent.call("destroy", p["vmId"])) == 0


def _record(i: int, vm_id: str = "vm", outcome: str = "ok", out: str = "",
            event: str = "before_vm_start") -> RunRecord:
    return RunRecord(chain_id=f"chain-{i}", time=float(i), event=event, vm_id=vm_id,
                     script=f"{i:03d}_s", checksum="0" * 64, outcome=outcome, rc=0,
                     duration=0.0, stdout=out, stdout_truncated=False, stderr=out,
                     stderr_truncated=False, diff="", message="")


def test_hook_run_filters_are_typed(direct_agent: Any) -> None:
    agent = direct_agent(hook_runs_page=50)
    agent.records.add([_record(i, outcome="failed" if i % 2 else "ok") for i in range(10)])
    runs = agent.call("getHookRuns", {"failed": "false"})
    assert len(runs["hookRuns"]) == 10  # "false" is false: every run
    assert len(agent.call("getHookRuns", {"failed": True})["hookRuns"]) == 5
    assert len(agent.call("getHookRuns", {"failed": "TRUE"})["hookRuns"]) == 5
    assert len(agent.call("getHookRuns", {"failed": False})["hookRuns"]) == 10
    assert len(agent.call("getHookRuns")["hookRuns"]) == 10
    bad: list[tuple[dict[str, Any], str]] = [
        ({"failed": "no"}, "filter.failed"),  # answered only failed runs once
        ({"failed": 1}, "filter.failed"),
        ({"failed": "yes"}, "filter.failed"),
        ({"limit": 2**64}, "filter.limit"),
        ({"limit": 0}, "filter.limit"),
        ({"limit": 51}, "filter.limit"),  # above hook_runs_page
        ({"limit": "9" * 5000}, "filter.limit"),
        ({"limit": True}, "filter.limit"),
        ({"limit": 1.5}, "filter.limit"),
        ({"vmId": 5}, "filter.vmId"),
        ({"vmId": ["a"]}, "filter.vmId"),
        ({"vmId": "v" * 10_000}, "filter.vmId"),
        ({"chainId": {"a": 1}}, "filter.chainId"),
        ({"event": "before_nothing"}, "filter.event"),
        ({"event": "../../x"}, "filter.event"),
        ({"event": 3}, "filter.event"),
        ({"before": -1}, "filter.before"),
        ({"before": "x"}, "filter.before"),
        ({"bogus": 1}, "bogus"),
        ({1: 2}, "unknown"),
    ]
    for filters, name in bad:
        assert_error(agent.call("getHookRuns", filters), Code.GENERAL, name)
    for filters in ("x", ["a"], 5, True):
        assert_error(agent.call("getHookRuns", filters), Code.GENERAL, "filter")
    assert len(agent.call("getHookRuns", {"limit": "3"})["hookRuns"]) == 3
    assert len(agent.call("getHookRuns", {"vmId": "vm", "event": "before_vm_start",
                                          "chainId": "chain-3"})["hookRuns"]) == 1


def test_hook_runs_page_with_a_cursor(direct_agent: Any) -> None:
    agent = direct_agent(hook_runs_page=7)
    agent.records.add([_record(i, vm_id="a" if i % 3 else "b") for i in range(40)])
    seen: list[int] = []
    before = None
    for _ in range(20):
        filters: dict[str, Any] = {"limit": 7, "vmId": "a"}
        if before is not None:
            filters["before"] = before
        reply = agent.call("getHookRuns", filters)
        assert code(reply) == 0 and len(reply["hookRuns"]) <= 7
        seen += [r["id"] for r in reply["hookRuns"]]
        before = reply.get("next")
        if before is None:
            break
        assert before == reply["hookRuns"][-1]["id"]
    expected = [r.id for r in agent.records.query(vm_id="a", limit=None)]
    assert seen == expected and len(seen) == 26
    # The default page is hook_runs_page when that is smaller than 100.
    assert len(agent.call("getHookRuns")["hookRuns"]) == 7


def test_the_byte_budget_cuts_a_page(direct_agent: Any) -> None:
    budget = 300_000
    agent = direct_agent(hook_runs_reply_bytes=budget)
    # Escapes at their longest: `<` and control characters grow in the reply.
    out = ("<&>\x1b\x00" * 13_000)[:64 * 1024]
    agent.records.add([_record(i, out=out) for i in range(12)])
    total = 0
    before = None
    while True:
        reply = agent.call("getHookRuns", {} if before is None else {"before": before})
        encoded = xmlrpc.client.dumps((reply,), methodresponse=True, allow_none=True)
        assert len(encoded.encode()) <= budget, len(encoded)
        assert sum(reply_size(r) for r in reply["hookRuns"]) <= budget
        total += len(reply["hookRuns"])
        before = reply.get("next")
        if before is None:
            break
    assert total == 12
    # One record larger than the whole budget is cut to fit, and says so.
    small = direct_agent(hook_runs_reply_bytes=60_000)
    reply = small.call("getHookRuns", {"limit": 1})
    run = reply["hookRuns"][0]
    assert run["stdout_truncated"] and run["stderr_truncated"]
    assert reply_size(run) <= 60_000 and reply["next"] == run["id"]


# --- a run dir that fails during create -------------------------------------------


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "ro"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        problem = f"cannot mount a read-only tmpfs: {mounted.stderr.strip()}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_read_only_run_dir_is_create_err_naming_the_path(direct_agent: Any, dirs: Any,
                                                          read_only_dir: Path) -> None:
    dirs.hook("before_vm_start", "50_noop", "exit 0\n")
    agent = direct_agent(run_dir=read_only_dir)
    for paused in (True, False):
        reply = agent.call("create", params(launchPaused=paused))
        assert_error(reply, Code.CREATE_ERR, str(read_only_dir), "Read-only file system")
    assert agent.call("list")["vmList"] == []


# --- random calls -------------------------------------------------------------------

_SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
            | st.floats(allow_nan=False) | st.text(max_size=40)
            | st.sampled_from([str(uuid.uuid4()), "hvtest-h", "true", "false", "/etc/shadow",
                               "9" * 30, "<domain/>"]))
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                       max_leaves=12)
_CREATE_KEYS = st.sampled_from(["vmId", "vmName", "memSize", "smp", "devices", "custom",
                                "launchPaused", "xml"])
_DEVICE = st.dictionaries(st.sampled_from(["type", "device", "path", "format", "iface",
                                           "readonly", "bootOrder", "custom", "network",
                                           "macAddr", "nicModel", "linkActive"]),
                          _VALUES | st.sampled_from(["disk", "interface", "cdrom", "br0"]),
                          max_size=6)
_CREATE = st.dictionaries(_CREATE_KEYS, _VALUES | st.lists(_DEVICE, max_size=3), max_size=8)
_VERBS = ["create", "destroy", "pause", "cont", "list", "getVmStats", "getAllVmStats",
          "getVdsCapabilities", "getVdsStats", "getHookRuns", "getCustomPropertyDefinitions"]


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(create=_CREATE, verb=st.sampled_from(_VERBS), args=st.lists(_VALUES, max_size=3))
def test_random_calls_get_a_vdsm_status(direct_agent: Any, create: dict[str, Any], verb: str,
                                        args: list[Any]) -> None:
    agent = _shared(direct_agent)
    for name, call_args in (("create", (create,)), (verb, tuple(args))):
        reply = agent.call(name, *call_args)
        status = reply["status"]
        assert Code(status["code"]) in CODE_NAMES, reply
        assert status["code"] != Code.UNEXPECTED, reply
        if name == "create" and status["code"] == 0:
            assert code(agent.call("destroy", reply["vmList"]["vmId"])) == 0
    for vm in agent.call("list")["vmList"]:
        with contextlib.suppress(Exception):
            agent.call("destroy", vm["vmId"])


_AGENTS: dict[int, Any] = {}


def _shared(direct_agent: Any) -> Any:
    # One agent per test (hypothesis calls the body many times with the same fixture).
    key = id(direct_agent)
    if key not in _AGENTS:
        _AGENTS.clear()
        _AGENTS[key] = direct_agent()
    return _AGENTS[key]


# --- through a served agent -------------------------------------------------------


def _rss_kib(pid: int, key: str = "VmHWM") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} for {pid}")


def test_served_agent_bounds_and_paging_keep_memory_flat(dirs: Any, serve_process: Any) -> None:
    full = 64 * 1024
    store = RunRecords(dirs.state / "hookruns.sqlite")
    try:
        for start in range(0, 300, 50):
            # (Control characters in a reply are the transport's to escape: not here.)
            store.add([_record(i, vm_id=f"vm-{i % 3}", out=("<x>&" * full)[:full])
                       for i in range(start, start + 50)])
    finally:
        store.close()
    cfg = dirs.root / "bounds.toml"
    budget = 2 * 1024 * 1024
    cfg.write_text(f"hook_runs_page = 1000\nhook_runs_reply_bytes = {budget}\n")
    agent = serve_process(extra=["--config", str(cfg)])
    api = agent.api
    reply = api.create(params(smp=2147483647))
    assert_error(reply, Code.CREATE_ERR, "smp")
    assert_error(api.list(False, [{}]), Code.GENERAL, "vmList[0]")
    assert_error(api.getHookRuns({"failed": "no"}), Code.GENERAL, "filter.failed")
    assert_error(api.destroy("x" * 100_000), Code.GENERAL, "vmId")
    base = _rss_kib(agent.proc.pid, "VmRSS")
    seen = 0
    pages = 0
    before = None
    while True:
        filters: dict[str, Any] = {"limit": 1000}
        if before is not None:
            filters["before"] = before
        reply = api.getHookRuns(filters)
        assert code(reply) == 0
        size = len(xmlrpc.client.dumps((reply,), methodresponse=True).encode())
        assert size <= budget, size
        seen += len(reply["hookRuns"])
        pages += 1
        before = reply.get("next")
        if before is None:
            break
    assert seen == 300 and pages > 1
    # A reply of all 300 runs would be ~80 MB; the pages keep the peak near the budget.
    grown = _rss_kib(agent.proc.pid) - base
    assert grown < 64 * 1024, f"agent peak RSS grew {grown} KiB while paging"
    assert code(api.list()) == 0


def test_host_limits_come_from_libvirt() -> None:
    from hookvisor.virt.host import Host

    host = Host("test:///default")
    try:
        assert host.max_vcpus() == TEST_MAX_VCPUS
        assert host.memory_mib() == TEST_HOST_MEMORY_MIB
        assert "/usr/bin/test-hv" in host.emulators()
    finally:
        host.close()


def test_iothreads_beyond_the_host_are_refused_at_once(direct_agent: Any) -> None:
    # <iothreads>100000000</iothreads> grew the agent (test driver, in-process) to
    # 4.7 GB in 10 s: libvirt allocates an entry per iothread before anything runs.
    agent = direct_agent()
    started = time.monotonic()
    for count in ("2147483647", str(TEST_MAX_VCPUS + 1), "-1", "x"):
        xml = (f"<domain type='test'><name>hvtest-io</name><uuid>{uuid.uuid4()}</uuid>"
               f"<memory unit='MiB'>64</memory><vcpu>1</vcpu><iothreads>{count}</iothreads>"
               "<os><type>hvm</type></os></domain>")
        assert_error(agent.call("create", {"xml": xml}), Code.CREATE_ERR, "xml", "<iothreads>")
    assert time.monotonic() - started < 5
    xml = (f"<domain type='test'><name>hvtest-io</name><uuid>{uuid.uuid4()}</uuid>"
           f"<memory unit='MiB'>64</memory><vcpu>1</vcpu><iothreads>2</iothreads>"
           "<os><type>hvm</type></os></domain>")
    reply = agent.call("create", {"xml": xml})
    assert code(reply) == 0, reply
    assert code(agent.call("destroy", reply["vmList"]["vmId"])) == 0


def test_a_deeply_nested_domain_xml_is_refused_not_a_traceback(direct_agent: Any) -> None:
    # 100,000 nested elements inside <devices> (700 KB, under every size bound)
    # made the xml policy's walk raise RecursionError: `unexpected` with a traceback.
    agent = direct_agent()
    depth = 100_000
    xml = (f"<domain type='test'><name>hvtest-deep</name><uuid>{uuid.uuid4()}</uuid>"
           "<memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type>hvm</type></os><devices>"
           + "<x>" * depth + "</x>" * depth + "</devices></domain>")
    assert_error(agent.call("create", {"xml": xml}), Code.CREATE_ERR, "xml", "nested deeper")


@pytest.mark.parametrize("body, message", [
    # json.loads of [[[[...]]]] 100,000 deep raises RecursionError, not ValueError:
    # it went through the engine's output check and the verb answered `unexpected`.
    ("python3 -c \"print('[' * 100000 + ']' * 100000)\"", "nested too deeply"),
    # 900 levels parse (under Python's recursion limit) but no reply may carry them:
    # the marshaller recursed into a RecursionError, or the client's parser would.
    ("python3 -c \"print('{\\\"a\\\": ' + '[' * 900 + ']' * 900 + '}')\"",
     "nested too deeply (more than 64 levels)"),
], ids=["deeper-than-python-parses", "deeper-than-a-reply-may-be"])
def test_a_hook_leaving_too_deeply_nested_json_is_invalid_output(
        direct_agent: Any, dirs: Any, body: str, message: str) -> None:
    dirs.hook("after_get_stats", "10_deep", body + " > \"$_hook_json\"\n")
    agent = direct_agent()
    reply = agent.call("getVdsStats")
    assert code(reply) == 0, reply
    runs = agent.call("getHookRuns", {"event": "after_get_stats"})["hookRuns"]
    assert runs and runs[0]["outcome"] == "invalid-output", runs
    assert message in runs[0]["message"]
