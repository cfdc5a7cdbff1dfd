"""`hookvisor vm ...`: a thin XML-RPC client of a running agent, for operators.

It speaks the same VDSM verbs as any engine would, so what works here works
for a real client: over the agent's Unix socket by default, over mutual TLS
with --agent HOST:PORT (hookvisor.rpc.client does the talking). Errors print
as one line with VDSM's code name and number.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hookvisor.cli.common import (
    UsageError,
    add_global_options,
    parse_assignment,
    settings_from_args,
)
from hookvisor.rpc.client import AgentClient, AgentError, address_for

__all__ = ["AgentError", "add_client_options", "call", "register"]

# NIC option keys that are creation params; any other key is a custom property.
_NIC_PARAMS = {"mac": "macAddr", "model": "nicModel", "link": "linkActive"}


def _client(args: argparse.Namespace) -> AgentClient:
    """One client per command: the Unix socket by default, TLS with --agent."""
    cached: AgentClient | None = getattr(args, "_client", None)
    if cached is None:
        settings = settings_from_args(args, unix_socket=args.socket, pki_dir=args.pki_dir,
                                      host_cert=args.cert, host_key=args.key)
        cached = AgentClient(address_for(settings, args.agent, args.insecure), settings)
        args._client = cached
    return cached


def call(args: argparse.Namespace, verb: str, *params: Any) -> dict[str, Any]:
    """Call one verb; raise AgentError with VDSM's code name unless status is 0."""
    return _client(args).call(verb, *params)


def parse_nic(text: str) -> dict[str, Any]:
    """'NETWORK[,mac=..,model=..,PROP=VALUE...]' -> a VDSM interface device."""
    network, *options = text.split(",")
    if not network:
        raise UsageError(f"--nic: a network (bridge) name comes first, got {text!r}")
    device: dict[str, Any] = {"type": "interface", "device": "bridge", "network": network,
                              "nicModel": "virtio"}
    custom: dict[str, str] = {}
    for option in options:
        name, value = parse_assignment(option, "--nic")
        if name in _NIC_PARAMS:
            device[_NIC_PARAMS[name]] = value
        else:
            custom[name] = value
    if "linkActive" in device:
        device["linkActive"] = device["linkActive"].lower() in ("1", "true", "yes", "up")
    if custom:
        device["custom"] = custom
    return device


def build_create_params(args: argparse.Namespace) -> dict[str, Any]:
    vm_id = args.vm_id or str(uuid.uuid4())
    params: dict[str, Any] = {"vmId": vm_id}
    if args.xml:
        params["xml"] = Path(args.xml).read_text()
    else:
        # libvirt refuses two domains of one name: default to one as unique as the id.
        params.update({"vmName": args.name or f"vm-{vm_id[:8]}", "memSize": args.mem,
                       "smp": args.smp})
        devices = [parse_nic(n) for n in args.nic]
        devices += [{"type": "disk", "device": "disk", "path": p, "format": "raw",
                     "iface": "virtio"} for p in args.disk]
        params["devices"] = devices
    if args.prop:
        params["custom"] = dict(parse_assignment(p, "--prop") for p in args.prop)
    if args.paused:
        params["launchPaused"] = True
    return params


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, default=str)
    print()


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*r)
    Console().print(table)


def cmd_create(args: argparse.Namespace) -> int:
    reply = call(args, "create", build_create_params(args))
    vm = reply.get("vmList", {})
    if args.json:
        _print_json(vm)
    else:
        print(f"{vm.get('vmId')} {vm.get('vmName', '')} {vm.get('status', '')}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    reply = call(args, "list", True, list(args.vm_ids))
    vms: list[dict[str, Any]] = reply.get("vmList", [])
    if args.json:
        _print_json(vms)
        return 0
    rows = [[str(v.get("vmId")), str(v.get("vmName", "")), str(v.get("status", "")),
             ", ".join(f"{k}={val}" for k, val in sorted((v.get("custom") or {}).items()))]
            for v in vms]
    _table("VMs", ["vmId", "name", "status", "custom"], rows)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    reply = call(args, "getVmStats", args.vm_id) if args.vm_id else call(args, "getAllVmStats")
    stats: list[dict[str, Any]] = reply.get("statsList", [])
    if args.json:
        _print_json(stats)
        return 0
    keys = ["vmId", "status", "cpuUser", "cpuSys", "memUsage", "elapsedTime"]
    _table("VM stats", keys, [[str(s.get(k, "")) for k in keys] for s in stats])
    return 0


def _simple(verb: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        reply = call(args, verb, args.vm_id)
        print(f"{args.vm_id}: {reply['status'].get('message', 'Done')}")
        return 0

    return run


def _guard(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """An agent error is one line on stderr and exit 1; never a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except AgentError as e:
            print(f"hookvisor: {e}", file=sys.stderr)
            return 1
        except OSError as e:
            print(f"hookvisor: {e}", file=sys.stderr)
            return 1

    return run


def add_client_options(parser: argparse.ArgumentParser) -> None:
    """How a client command reaches the agent: shared by `vm` and `net`."""
    add_global_options(parser)
    parser.add_argument("--agent", metavar="HOST:PORT",
                        help="a remote agent, over mutual TLS with this host's certificate "
                        "(default: the local agent's Unix socket)")
    parser.add_argument("--insecure", action="store_true",
                        help="with --agent: plain TCP, for an agent serving --insecure")
    parser.add_argument("--socket", type=Path, help="the local agent's socket (default "
                        "<run dir>/hookvisor.sock; or HOOKVISOR_SOCKET, HOOKVISOR_RUN_DIR)")
    parser.add_argument("--pki-dir", type=Path, help="CA, certificate and key for --agent "
                        "(default /etc/pki/hookvisor; or HOOKVISOR_PKI_DIR)")
    parser.add_argument("--cert", type=Path, help="with --agent: a client certificate "
                        "(`hookvisor pki issue`) instead of the host's")
    parser.add_argument("--key", type=Path, help="with --agent: the key of --cert")


def register(sub: Any) -> None:
    parser = sub.add_parser("vm", help="manage VMs on a running agent (XML-RPC client)")
    add_client_options(parser)
    verbs = parser.add_subparsers(dest="vm_command", metavar="VERB", required=True)

    create = verbs.add_parser("create", help="create and start a VM")
    create.add_argument("--name", help="VM name (default vm-<first 8 of the id>)")
    create.add_argument("--vm-id", help="VM UUID (default: a new one)")
    create.add_argument("--mem", type=int, default=256, help="memory, MiB (default 256)")
    create.add_argument("--smp", type=int, default=1, help="vCPUs (default 1)")
    create.add_argument("--nic", action="append", default=[],
                        metavar="NETWORK[,mac=M,model=M,PROP=V...]",
                        help="a bridged NIC; keys other than mac/model/link are its "
                        "custom properties (repeatable)")
    create.add_argument("--disk", action="append", default=[], metavar="PATH",
                        help="a raw virtio disk (repeatable)")
    create.add_argument("--xml", metavar="FILE", help="a complete domain XML, used as is")
    create.add_argument("--prop", action="append", default=[], metavar="NAME=VALUE",
                        help="VM custom property (repeatable)")
    create.add_argument("--paused", action="store_true", help="start paused")
    create.add_argument("--json", action="store_true", help="print the reply as JSON")
    create.set_defaults(func=_guard(cmd_create))

    lst = verbs.add_parser("list", help="list VMs with status and custom properties")
    lst.add_argument("vm_ids", nargs="*", metavar="VMID", help="only these VMs")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_guard(cmd_list))

    stats = verbs.add_parser("stats", help="VM statistics")
    stats.add_argument("vm_id", nargs="?", metavar="VMID", help="one VM (default: all)")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=_guard(cmd_stats))

    for verb, rpc_verb, help_text in (("destroy", "destroy", "stop a VM and forget it"),
                                      ("pause", "pause", "pause a VM"),
                                      ("cont", "cont", "continue a paused VM")):
        p = verbs.add_parser(verb, help=help_text)
        p.add_argument("vm_id", metavar="VMID")
        p.set_defaults(func=_guard(_simple(rpc_verb)))

    # hibernate, restore, nic-add, ...: their own module (imported here: it uses this one).
    from hookvisor.cli import vm_live_cmd

    vm_live_cmd.register(verbs)

    # migrate, migrate-status, migrate-cancel (issue 9): their own module too.
    from hookvisor.cli import vm_migrate_cmd

    vm_migrate_cmd.register(verbs)
