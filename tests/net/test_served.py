"""The verbs over XML-RPC from a served agent whose `net_netns` is the test's namespace."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from net_support import Namespace


@pytest.fixture
def served(inproc_agent: Callable[..., Any], ns: Namespace) -> Any:
    """An agent serving in this process (conftest's InProcessAgent on test:///default),
    configuring `ns`."""
    ns.veth("eth1")
    ns.veth("eth2")
    return inproc_agent(net_netns=ns.name)


def test_caps_report_the_namespaces_nics(served: Any) -> None:
    info = served.api.getVdsCapabilities()["info"]
    assert {"eth1", "eth2"} <= set(info["nics"]) and "lo" not in info["nics"]
    assert info["bridges"] == {} and info["networks"] == {}
    assert "before_network_setup" in info["supportedHookEvents"]


def test_setup_confirmed_by_a_second_call_is_kept_and_reported(served: Any) -> None:
    net = {"nic": "eth1", "ipaddr": "10.0.0.2", "netmask": "255.255.255.0",
           "gateway": "10.0.0.1", "defaultRoute": True, "mtu": 1400}
    replies: list[Any] = []
    t = threading.Thread(target=lambda: replies.append(served.api.setupNetworks(
        {"net1": net}, {}, {"connectivityCheck": True, "connectivityTimeout": 20})))
    t.start()
    # As the engine does: call again and again until the setup answers. Only a call
    # after the setup is applied confirms it (one during the apply does not).
    deadline = time.monotonic() + 30
    while t.is_alive() and time.monotonic() < deadline:
        assert served.api.confirmConnectivity()["status"]["code"] == 0
        time.sleep(0.1)
    t.join(30)
    assert replies[0]["status"] == {"code": 0, "message": "Done"}
    info = served.api.getVdsCapabilities()["info"]
    assert info["bridges"]["net1"]["ports"] == ["eth1"]
    assert info["bridges"]["net1"]["mtu"] == "1400"
    entry = info["networks"]["net1"]
    assert (entry["iface"], entry["bridged"], entry["addr"], entry["netmask"],
            entry["gateway"], entry["ipv4defaultroute"], entry["nics"]) == \
        ("net1", True, "10.0.0.2", "255.255.255.0", "10.0.0.1", True, ["eth1"])
    assert served.api.setSafeNetworkConfig()["status"]["code"] == 0
    removed = served.api.setupNetworks({"net1": {"remove": True}}, {}, {})
    assert removed["status"]["code"] == 0
    assert served.api.getVdsCapabilities()["info"]["networks"] == {}


def test_a_bad_request_gets_a_clear_status(served: Any) -> None:
    reply = served.api.setupNetworks({"net1": {"nic": "eth1", "vlan": 9999}}, {}, {})
    assert reply["status"]["code"] == 100
    assert "network net1.vlan: 9999 is out of range 1..4094" in reply["status"]["message"]
    reply = served.api.setupNetworks({"net1": {"nic": "eth1"}}, {}, {})
    assert reply["status"]["code"] == 0


def test_cli_setup_list_save(served: Any, ns: Namespace, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from hookvisor.cli.main import main

    agent = str(served.socket)
    assert main(["net", "--socket", agent, "setup", "--network",
                 "net1:nic=eth1,ipaddr=10.0.0.2,prefix=24,mtu=1400"]) == 0
    assert ns.netlink().state().slaves_of("net1") == ["eth1"]
    capsys.readouterr()
    assert main(["net", "--socket", agent, "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["networks"]["net1"]["ipv4addrs"] == ["10.0.0.2/24"]
    assert main(["net", "--socket", agent, "save"]) == 0
    assert (served.dirs.state / "net" / "safe.json").exists()
    request = tmp_path / "req.json"
    request.write_text(json.dumps({"networks": {"net2": {"nic": "eth2", "vlan": 0}}}))
    assert main(["net", "--socket", agent, "setup", str(request), "--remove", "net1"]) == 1
    assert "network net2.vlan: 0 is out of range" in capsys.readouterr().err
    assert main(["net", "--socket", agent, "setup", "--remove", "net1"]) == 0
    assert ns.netlink().state().link("net1") is None


def test_a_restarted_agent_restores_the_saved_setup(
        served: Any, ns: Namespace, inproc_agent: Callable[..., Any]) -> None:
    api = served.api
    assert api.setupNetworks({"keep": {"nic": "eth1", "ipaddr": "10.0.0.2", "prefix": 24}},
                             {}, {})["status"]["code"] == 0
    assert api.setSafeNetworkConfig()["status"]["code"] == 0
    saved = ns.netlink().state().comparable()
    assert api.setupNetworks({"keep": {"remove": True}, "tmp": {"nic": "eth2"}},
                             {}, {})["status"]["code"] == 0
    served.stop()
    # Same state dir: the unconfirmed setup is rolled back.
    again = inproc_agent(net_netns=ns.name)
    assert ns.netlink().state().comparable() == saved
    assert set(again.api.getVdsCapabilities()["info"]["networks"]) == {"keep"}
