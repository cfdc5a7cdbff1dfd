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
    visible,
)
from hookvisor.cli.output import Out, spinner
from hookvisor.rpc.client import AgentClient, AgentError, address_for

__all__ = ["AgentError", "add_client_options", "call", "is_vm_id", "register", "resolve_vm",
           "vm_named"]

# NIC option keys that are creation params; any other key is a custom property.
_NIC_PARAMS = {"mac": "macAddr", "model": "nicModel", "link": "linkActive"}


def _client(args: argparse.Namespace) -> AgentClient:
    """One client per command: the Unix socket by default, TLS with --agent."""
    cached: AgentClient | None = getattr(args, "_client", None)
    if cached is None:
        settings = settings_from_args(args, unix_socket=args.socket, pki_dir=args.pki_dir,
                                      host_cert=args.cert, host_key=args.key)
        # --agent, else the `agent` setting (HOOKVISOR_AGENT, config file), else the socket.
        cached = AgentClient(address_for(settings, args.agent, args.insecure), settings)
        args._client = cached
    return cached


def call(args: argparse.Namespace, verb: str, *params: Any) -> dict[str, Any]:
    """Call one verb; raise AgentError with VDSM's code name unless status is 0.

    On a terminal a spinner names the verb in flight: a create runs the
    agent's hooks, which may take their whole timeout.
    """
    client = _client(args)
    if verb not in _RUNS_HOOKS:
        return client.call(verb, *params)
    with spinner(f"{verb}: waiting for the agent at {client.address} (it runs the "
                 f"{_RUNS_HOOKS[verb]} hooks)"):
        return client.call(verb, *params)


# Verbs whose reply waits for a hook chain, and which chain.
_RUNS_HOOKS = {"create": "before_vm_start", "destroy": "before_vm_destroy",
               "pause": "before_vm_pause", "cont": "before_vm_cont"}
_UUID_LEN = 36


def resolve_vm(args: argparse.Namespace, ref: str) -> str:
    """A vmId for `ref`: a UUID as is, else the one VM of that name."""
    if is_vm_id(ref):
        return str(uuid.UUID(ref))
    return vm_named(_client(args).call("list", True).get("vmList", []), ref)


def is_vm_id(ref: str) -> bool:
    """Whether `ref` is a vmId (a UUID written out whole) rather than a VM name."""
    try:
        return len(ref) == _UUID_LEN and bool(uuid.UUID(ref))
    except ValueError:
        return False


def vm_named(vms: list[dict[str, Any]], name: str) -> str:
    """The vmId of the one VM called `name` in `vms` (a full `list` reply's vmList)."""
    ids = [str(v.get("vmId")) for v in vms if v.get("vmName") == name]
    if len(ids) == 1:
        return ids[0]
    if ids:
        raise UsageError(f"{len(ids)} VMs are named {name!r}: give a vmId ({', '.join(ids)})")
    raise AgentError(f"noVM (1): no VM named {name!r} and not a vmId", 1)


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
    # Piped: plain, one VM per line, nothing cut; on a terminal the vmId is never cut.
    Out(sys.stdout).table(None, columns, rows, keep=("vmId", "name"))


def cmd_create(args: argparse.Namespace) -> int:
    reply = call(args, "create", build_create_params(args))
    vm = reply.get("vmList", {})
    if args.json:
        _print_json(vm)
    else:
        print(visible(f"{vm.get('vmId')} {vm.get('vmName', '')} {vm.get('status', '')}"))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    reply = call(args, "list", True, [resolve_vm(args, v) for v in args.vm_ids])
    vms: list[dict[str, Any]] = reply.get("vmList", [])
    if args.json:
        _print_json(vms)
        return 0
    if not vms:
        print("no VMs" + (" of those vmIds" if args.vm_ids else ""))
        return 0
    rows = [[str(v.get("vmId")), str(v.get("vmName", "")), str(v.get("status", "")),
             ", ".join(f"{k}={val}" for k, val in sorted((v.get("custom") or {}).items()))]
            for v in vms]
    _table("VMs", ["vmId", "name", "status", "custom"], rows)
    return 0


def cmd_dumpxml(args: argparse.Namespace) -> int:
    vm_id = resolve_vm(args, args.vm)
    xml: str = call(args, "dumpxmls", [vm_id]).get("domxmls", {}).get(vm_id, "")
    sys.stdout.write(xml if xml.endswith("\n") else xml + "\n")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    reply = (call(args, "getVmStats", resolve_vm(args, args.vm_id)) if args.vm_id
             else call(args, "getAllVmStats"))
    stats: list[dict[str, Any]] = reply.get("statsList", [])
    if args.json:
        _print_json(stats)
        return 0
    keys = ["vmId", "status", "cpuUser", "cpuSys", "memUsage", "elapsedTime"]
    _table("VM stats", keys, [[str(s.get(k, "")) for k in keys] for s in stats])
    return 0


def _simple(verb: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        vm_id = resolve_vm(args, args.vm_id)
        reply = call(args, verb, vm_id)
        print(visible(f"{vm_id}: {reply['status'].get('message', 'Done')}"))
        return 0

    return run


def _guard(func: Callable[[argparse.Namespace], int],
           errors: tuple[type[Exception], ...] = (AgentError, OSError),
           ) -> Callable[[argparse.Namespace], int]:
    """An agent error (by default, an OSError too) is one line on stderr and exit 1; never a
    traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except BrokenPipeError:
            raise  # `| head` has what it wanted: main() exits quietly
        except errors as e:
            # A hook's stderr comes back in a hookError: shown, not obeyed.
            print(f"hookvisor: {visible(str(e))}", file=sys.stderr)
            return 1

    return run


def add_client_options(parser: argparse.ArgumentParser, after: bool = False) -> None:
    """How a client command reaches the agent: shared by `vm`, `net` and `hooks`.

    `after`: for a sub-command's own parser, so that the options may follow it
    (`hookvisor vm list --agent H:P`); SUPPRESS keeps a value given before it.
    """
    kw: dict[str, Any] = {"default": argparse.SUPPRESS} if after else {}
    if not after:
        add_global_options(parser)
    parser.add_argument("--agent", metavar="HOST:PORT", **kw,
                        help="a remote agent, over mutual TLS with this host's certificate "
                        "(default: the `agent` setting or HOOKVISOR_AGENT, else the local "
                        "agent's Unix socket)")
    parser.add_argument("--insecure", action="store_true", **kw,
                        help="with --agent: plain TCP, for an agent serving --insecure")
    parser.add_argument("--socket", type=Path, **kw, help="the local agent's socket (default "
                        "<run dir>/hookvisor.sock; or HOOKVISOR_SOCKET, HOOKVISOR_RUN_DIR)")
    parser.add_argument("--pki-dir", type=Path, **kw, help="CA, certificate and key for "
                        "--agent (default /etc/pki/hookvisor; or HOOKVISOR_PKI_DIR)")
    parser.add_argument("--cert", type=Path, **kw, help="with --agent: a client certificate "
                        "(`hookvisor pki issue`) (default: the host's, in --pki-dir)")
    parser.add_argument("--key", type=Path, **kw,
                        help="with --agent: the key of --cert (default: the host's, in --pki-dir)")


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
    lst.add_argument("vm_ids", nargs="*", metavar="VM", help="only these VMs, by vmId or name")
    lst.add_argument("--json", action="store_true", help="the reply as JSON")
    lst.set_defaults(func=_guard(cmd_list))

    stats = verbs.add_parser("stats", help="VM statistics")
    stats.add_argument("vm_id", nargs="?", metavar="VM",
                       help="one VM, by vmId or name (default: all)")
    stats.add_argument("--json", action="store_true", help="the reply as JSON")
    stats.set_defaults(func=_guard(cmd_stats))

    for verb, rpc_verb, help_text in (("destroy", "destroy", "stop a VM and forget it"),
                                      ("pause", "pause", "pause a VM"),
                                      ("cont", "cont", "continue a paused VM")):
        p = verbs.add_parser(verb, help=help_text)
        p.add_argument("vm_id", metavar="VM", help="vmId or name")
        p.set_defaults(func=_guard(_simple(rpc_verb)))

    dump = verbs.add_parser("dumpxml", help="the domain XML the VM really got (after its "
                            "hooks), as libvirt has it now")
    dump.add_argument("vm", metavar="VM", help="vmId or name")
    dump.set_defaults(func=_guard(cmd_dumpxml))


    # hibernate, restore, nic-add, ...: their own module (imported here: it uses this one).
    from hookvisor.cli import vm_live_cmd

    vm_live_cmd.register(verbs)

    # mem-add, cpus, ticket: VDSM's other hook-point verbs.
    from hookvisor.cli import vm_extra_cmd

    vm_extra_cmd.register(verbs)

    # migrate, migrate-status, migrate-cancel (issue 9): their own module too.
    from hookvisor.cli import vm_migrate_cmd

    vm_migrate_cmd.register(verbs)

    for verb_parser in verbs.choices.values():
        add_client_options(verb_parser, after=True)
        add_global_options(verb_parser)
