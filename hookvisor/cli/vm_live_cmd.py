"""`hookvisor vm hibernate|restore|nic-add|nic-remove|disk-add|disk-remove|nic-update`.

The live-VM verbs, registered into `hookvisor vm` by vm_cmd.register. Each
prints the VM's devices after the change (or the reply as JSON with --json).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hookvisor.cli.common import UsageError, parse_assignment
from hookvisor.cli.vm_cmd import _guard, _print_json, call, parse_nic

_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_DISK_NAME = re.compile(r"^[vhs]d[a-z]+$")


def _props(items: list[str]) -> dict[str, str]:
    return dict(parse_assignment(p, "--prop") for p in items)


def _show(args: argparse.Namespace, reply: dict[str, Any]) -> int:
    vm = reply.get("vmList", {})
    if args.json:
        _print_json(vm)
        return 0
    print(f"{args.vm_id}: {reply['status'].get('message', 'Done')}")
    for dev in vm.get("devices", []):
        ident = dev.get("macAddr") or dev.get("path") or ""
        extra = dev.get("network") or dev.get("name") or ""
        custom = ", ".join(f"{k}={v}" for k, v in sorted((dev.get("custom") or {}).items()))
        print(f"  {dev.get('type', '')} {dev.get('alias', '-')} {ident} {extra} {custom}"
              .rstrip())
    return 0


def cmd_hibernate(args: argparse.Namespace) -> int:
    reply = call(args, "hibernate", args.vm_id, str(args.path))
    print(f"{args.vm_id}: {reply['status'].get('message', 'Done')} (saved to {args.path})")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"restoreState": str(args.path)}
    if args.vm_id:
        params["vmId"] = args.vm_id
    if args.from_snapshot:
        params["restoreFromSnapshot"] = True
    vm = call(args, "create", params).get("vmList", {})
    if args.json:
        _print_json(vm)
    else:
        print(f"{vm.get('vmId')} {vm.get('vmName', '')} {vm.get('status', '')}")
    return 0


def _device_params(args: argparse.Namespace, key: str, device: dict[str, Any] | None
                   ) -> dict[str, Any]:
    params: dict[str, Any] = {"vmId": args.vm_id}
    if args.xml:
        params["xml"] = Path(args.xml).read_text()
        if args.prop:
            params["custom"] = _props(args.prop)
    elif device is not None:
        params[key] = device
    return params


def cmd_nic_add(args: argparse.Namespace) -> int:
    if not args.xml and not args.nic:
        raise UsageError("nic-add: give NETWORK[,mac=..,PROP=..] or --xml FILE")
    device = parse_nic(args.nic) if args.nic else None
    return _show(args, call(args, "hotplugNic", _device_params(args, "nic", device)))


def cmd_nic_remove(args: argparse.Namespace) -> int:
    nic = {"macAddr": args.nic} if _MAC.match(args.nic) else {"alias": args.nic}
    return _show(args, call(args, "hotunplugNic", {"vmId": args.vm_id, "nic": nic}))


def cmd_disk_add(args: argparse.Namespace) -> int:
    if not args.xml and not args.path:
        raise UsageError("disk-add: give PATH or --xml FILE")
    drive = None
    if args.path:
        drive = {"path": str(args.path), "format": args.format, "iface": args.iface,
                 "readonly": args.readonly}
        if args.name:
            drive["name"] = args.name
        if args.prop:
            drive["custom"] = _props(args.prop)
    return _show(args, call(args, "hotplugDisk", _device_params(args, "drive", drive)))


def cmd_disk_remove(args: argparse.Namespace) -> int:
    which = args.disk
    if which.startswith("/"):
        drive = {"path": which}
    elif _DISK_NAME.match(which):
        drive = {"name": which}
    else:
        drive = {"alias": which}
    return _show(args, call(args, "hotunplugDisk", {"vmId": args.vm_id, "drive": drive}))


def cmd_nic_update(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"deviceType": "interface"}
    params["macAddr" if _MAC.match(args.nic) else "alias"] = args.nic
    if args.link is not None:
        params["linkActive"] = args.link == "up"
    if args.network:
        params["network"] = args.network
    if args.prop:
        params["custom"] = _props(args.prop)
    return _show(args, call(args, "vmUpdateDevice", args.vm_id, params))


def _device_options(p: argparse.ArgumentParser, element: str, prop_help: str,
                    func: Callable[[argparse.Namespace], int]) -> None:
    """A hot-plug verb's --xml and --prop (as _device_params reads them) and --json."""
    p.add_argument("--xml", metavar="FILE", help=f"the <{element}> XML instead")
    p.add_argument("--prop", action="append", default=[], metavar="NAME=VALUE", help=prop_help)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guard(func))


def _removal(verbs: Any, name: str, help_text: str, dest: str, metavar: str,
             func: Callable[[argparse.Namespace], int]) -> None:
    """A hot-unplug verb: VMID, the device, --json."""
    p = verbs.add_parser(name, help=help_text)
    p.add_argument("vm_id", metavar="VMID")
    p.add_argument(dest, metavar=metavar)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guard(func))


def register(verbs: Any) -> None:
    """Add the live-VM subcommands to `hookvisor vm`'s subparsers."""
    p = verbs.add_parser("hibernate", help="save a VM's memory to a file; the VM goes Down")
    p.add_argument("vm_id", metavar="VMID")
    p.add_argument("path", type=Path, metavar="PATH",
                   help="image to write (under the agent's storage_dirs)")
    p.set_defaults(func=_guard(cmd_hibernate))

    p = verbs.add_parser("restore", help="start a VM again from its hibernation image")
    p.add_argument("path", type=Path, metavar="PATH")
    p.add_argument("--vm-id", help="the VM's id (checked against the image)")
    p.add_argument("--from-snapshot", action="store_true",
                   help="the image is a memory snapshot (hooks see FROM_SNAPSHOT=True)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guard(cmd_restore))

    p = verbs.add_parser("nic-add", help="hot-plug a NIC")
    p.add_argument("vm_id", metavar="VMID")
    p.add_argument("nic", nargs="?", metavar="NETWORK[,mac=M,model=M,PROP=V...]",
                   help="a bridged NIC; keys other than mac/model/link are custom properties")
    _device_options(p, "interface", "custom property of an --xml NIC (repeatable)", cmd_nic_add)
    _removal(verbs, "nic-remove", "hot-unplug a NIC (waits for the guest)",
             "nic", "MAC|ALIAS", cmd_nic_remove)

    p = verbs.add_parser("disk-add", help="hot-plug a disk")
    p.add_argument("vm_id", metavar="VMID")
    p.add_argument("path", nargs="?", metavar="PATH",
                   help="disk image (under the agent's storage_dirs)")
    p.add_argument("--format", choices=("raw", "cow"), default="raw")
    p.add_argument("--iface", choices=("virtio", "scsi", "ide"), default="virtio")
    p.add_argument("--name", metavar="DEV", help="target dev (default: the next free one)")
    p.add_argument("--readonly", action="store_true")
    _device_options(p, "disk", "custom property (repeatable)", cmd_disk_add)
    _removal(verbs, "disk-remove", "hot-unplug a disk (waits for the guest)",
             "disk", "PATH|DEV|ALIAS", cmd_disk_remove)

    p = verbs.add_parser("nic-update", help="change a live NIC: link, network, properties")
    p.add_argument("vm_id", metavar="VMID")
    p.add_argument("nic", metavar="MAC|ALIAS")
    p.add_argument("--link", choices=("up", "down"))
    p.add_argument("--network", help="move it to this bridge")
    p.add_argument("--prop", action="append", default=[], metavar="NAME=VALUE",
                   help="its custom properties, replacing the old ones (repeatable)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guard(cmd_nic_update))
