"""Plan a setup against the kernel's state, apply it step by step, roll back on failure.

`plan()` reads nothing and writes nothing: from a snapshot of the kernel's
state, the setup in force and a request, it checks the request against the
host (unknown NIC, foreign device, an MTU the device cannot take) and turns it
into ordered steps, each with the steps that undo it. Undo steps are known at
plan time because the phases run in a fixed order (release ports, delete,
create, enslave, MTU, up, addresses, routes), so each step's "before" is the
snapshot's value.

`execute()` runs the steps, journaling the undo of each one done; on a failure
it runs the journal backwards and raises `ApplyError` naming the step that
failed (and any undo that failed too: the host is then not as before).

Only the devices of the networks and bonds a request names are looked at:
a NIC that vanished under an untouched network does not block other work.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from errno import ENODEV
from typing import Any

from hookvisor.net.model import DEFAULT_MTU, Config, Request, config_problems
from hookvisor.net.netlink import Link, Netlink, NetlinkFailure, Route, State, default_route

ETH_MAX_MTU = 65535
_VIRTUAL = ("bridge", "vlan", "bond")
# Lower layers first: MTUs go up from the bottom and down from the top.
_LAYER = {"nic": 0, "bond": 1, "vlan": 2, "bridge": 3}


class PlanError(ValueError):
    """The request does not fit the host; `problems` names each network or bond and why."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class ApplyError(Exception):
    """A step failed; what was done is undone (`undo_failures` lists undo steps that failed)."""

    def __init__(self, step: Step, cause: NetlinkFailure, undo_failures: list[str]) -> None:
        message = f"step {step.text!r} failed: {cause}"
        if undo_failures:
            message += "; rollback incomplete: " + "; ".join(undo_failures)
        else:
            message += "; rolled back"
        super().__init__(message)
        self.step = step
        self.cause = cause
        self.undo_failures = undo_failures


@dataclass(frozen=True)
class Step:
    text: str
    action: str  # a Netlink method
    args: tuple[Any, ...]
    undo: tuple[Step, ...] = ()

    def run(self, nl: Netlink) -> None:
        getattr(nl, self.action)(*self.args)


@dataclass
class Dev:
    """A device as a setup wants it."""

    name: str
    kind: str  # nic, bridge, vlan, bond
    mtu: int
    master: str | None = None
    top: bool = False  # carries a network's addresses
    addrs: set[tuple[str, int]] = field(default_factory=set)
    vlan: tuple[str, int] | None = None
    bond_options: dict[str, str] | None = None
    networks: list[str] = field(default_factory=list)  # who uses it, for messages


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]
    config: Config  # the setup once the steps are done

    def describe(self) -> list[str]:
        return [s.text for s in self.steps]


def desired(config: Config) -> dict[str, Dev]:
    """Every device a setup needs, with its MTU, master and addresses."""
    devs: dict[str, Dev] = {}

    def dev(name: str, kind: str, user: str) -> Dev:
        d = devs.setdefault(name, Dev(name, kind, 0))
        d.networks.append(user)
        return d

    for bond in config.bonds.values():
        dev(bond.name, "bond", f"bonding {bond.name}").bond_options = dict(bond.options)
    for net in config.networks.values():
        who = f"network {net.name}"
        mtu = net.effective_mtu
        bridge = net.name if net.bridged else None
        if net.base is not None:
            base = dev(net.base, "bond" if net.bonding else "nic", who)
            base.mtu = max(base.mtu, mtu)  # VDSM: a NIC takes the largest MTU of its networks
            if net.vlan is None:
                base.master = bridge
        if net.vlan_device is not None and net.base is not None:
            v = dev(net.vlan_device, "vlan", who)
            v.mtu, v.master, v.vlan = mtu, bridge, (net.base, net.vlan or 0)
        if bridge is not None:
            dev(bridge, "bridge", who).mtu = mtu
        top = devs[net.top]
        top.top = True
        top.addrs |= {(a.address, a.prefix) for a in (net.ipv4, net.ipv6) if a is not None}
    for bond in config.bonds.values():
        b = devs[bond.name]
        if b.mtu == 0:
            b.mtu = 1500
        for nic in bond.nics:
            s = dev(nic, "nic", f"bonding {bond.name}")
            s.master, s.mtu = bond.name, b.mtu
    return devs


def _names(config: Config, nets: Iterable[str], bonds: Iterable[str]) -> set[str]:
    out: set[str] = set()
    for name in nets:
        net = config.networks.get(name)
        if net is None:
            continue
        out |= {d for d in (net.base, net.vlan_device, net.top) if d}
        if net.bridged:
            out.add(net.name)
    for name in bonds:
        bond = config.bonds.get(name)
        if bond is not None:
            out |= {bond.name, *bond.nics}
    return out


def _routes(config: Config, nets: Iterable[str]) -> list[tuple[Route, str]]:
    """The default routes the named networks of a setup want, with their device."""
    out = []
    for name in nets:
        net = config.networks.get(name)
        if net is None or not net.default_route:
            continue
        for addr, family in ((net.ipv4, socket.AF_INET), (net.ipv6, socket.AF_INET6)):
            if addr is not None and addr.gateway:
                out.append((default_route(family, addr.gateway), net.top))
    return out


def _same_route(a: Route, b: Route) -> bool:
    return (a.family, a.dst, a.dst_len, a.gateway, a.table) == \
        (b.family, b.dst, b.dst_len, b.gateway, b.table)


def _check_host(snapshot: State, old: Config, new: Config, request: Request,
                old_devs: dict[str, Dev], new_devs: dict[str, Dev], touched: set[str]) -> None:
    problems: list[str] = []
    for name in sorted(request.remove_networks - set(old.networks)):
        problems.append(f"network {name}: not configured here, cannot remove it")
    for name in sorted(request.remove_bonds - set(old.bonds)):
        problems.append(f"bonding {name}: not configured here, cannot remove it")
    problems += config_problems(new)
    ours = set(old_devs)
    for name in sorted(touched & set(new_devs)):
        want = new_devs[name]
        who = want.networks[0]
        link = snapshot.link(name)
        if want.kind == "nic":
            if link is None:
                problems.append(f"{who}: nic {name} does not exist on the host")
                continue
            if link.kind in _VIRTUAL and name not in ours:
                problems.append(f"{who}: {name} is a {link.kind}, not a NIC")
            master = snapshot.name_of(link.master)
            if master is not None and master not in ours:
                problems.append(f"{who}: nic {name} is already enslaved to {master}, "
                                "which hookvisor does not manage")
        elif link is not None and (name not in ours or old_devs[name].kind != want.kind):
            what = link.kind or "NIC"
            problems.append(f"{who}: device {name} already exists on the host ({what}) "
                            "and hookvisor does not manage it")
            continue
        problems += _mtu_problems(snapshot, want, new_devs, who)
    if problems:
        raise PlanError(problems)


def _mtu_problems(snapshot: State, want: Dev, devs: dict[str, Dev], who: str) -> list[str]:
    link = snapshot.link(want.name)
    if want.kind == "vlan" and want.vlan is not None:
        base = snapshot.link(want.vlan[0])
        low, high = 68, base.max_mtu if base is not None and base.max_mtu else ETH_MAX_MTU
    elif link is not None:
        low, high = link.min_mtu or 68, link.max_mtu or ETH_MAX_MTU
    else:
        low, high = 68, ETH_MAX_MTU
    if not low <= want.mtu <= high:
        return [f"{who}: mtu {want.mtu} is out of what {want.name} can take ({low}..{high})"]
    return []


def plan(snapshot: State, old: Config, request: Request) -> Plan:
    """The steps that take the host from `old` (in force, as `snapshot` shows) to the request."""
    new = request.merged(old)
    nets = set(request.networks) | request.remove_networks
    bonds = set(request.bonds) | request.remove_bonds
    old_devs, new_devs = desired(old), desired(new)
    touched = _names(old, nets, bonds) | _names(new, nets, bonds)
    # A NIC shared with an untouched network gets its MTU recomputed too.
    _check_host(snapshot, old, new, request, old_devs, new_devs, touched)

    s = snapshot
    steps: list[Step] = []

    def is_recreated(name: str) -> bool:
        o, n = old_devs.get(name), new_devs.get(name)
        if o is None or n is None or o.kind not in _VIRTUAL:
            return False
        return o.kind != n.kind or o.vlan != n.vlan or (
            o.kind == "bond" and (o.bond_options or {}).get("mode")
            != (n.bond_options or {}).get("mode"))

    deleted = sorted(
        (name for name in touched
         if name in old_devs and old_devs[name].kind in _VIRTUAL and s.link(name) is not None
         and (name not in new_devs or is_recreated(name))),
        key=lambda n: (-_LAYER[old_devs[n].kind], n))
    created = sorted(
        (name for name in touched
         if name in new_devs and new_devs[name].kind in _VIRTUAL
         and (s.link(name) is None or name in deleted)),
        key=lambda n: (_LAYER[new_devs[n].kind], n))
    gone = set(deleted)
    fresh = set(created)

    # 1. Routes that go: the old networks' default routes, any default route a new one
    # replaces, and whatever runs through a device about to be deleted.
    wanted_routes = _routes(new, nets)
    old_routes = _routes(old, nets)
    drop: list[Route] = []
    for route in s.routes:
        if route.kernel_made:
            continue
        dev = s.name_of(route.oif)
        replaced = route.dst is None and route.table == 254 and any(
            w.family == route.family for w, _ in wanted_routes) and not any(
            _same_route(route, w) and dev == d for w, d in wanted_routes)
        was_ours = any(_same_route(route, o) and dev == d for o, d in old_routes) and not any(
            _same_route(route, w) and dev == d and d not in gone for w, d in wanted_routes)
        if replaced or was_ours or dev in gone:
            drop.append(route)
    for route in drop:
        dev = s.name_of(route.oif)
        steps.append(Step(f"remove route {_rtext(route, dev)}", "del_route", (route, dev),
                          (Step(f"re-add route {_rtext(route, dev)}", "add_route", (route, dev)),)))

    # 2. Addresses that go: not wanted on a touched top device, or on a device deleted.
    for name in sorted(touched):
        if s.link(name) is None:
            continue
        current = {(a.address, a.prefix) for a in s.addrs_of(name)}
        if name in gone:
            remove = current
        elif name in new_devs and new_devs[name].top:
            remove = current - new_devs[name].addrs
        elif name in old_devs and old_devs[name].top:
            remove = current & old_devs[name].addrs
        else:
            remove = set()
        for address, prefix in sorted(remove):
            steps.append(Step(f"remove address {address}/{prefix} from {name}", "del_addr",
                              (name, address, prefix),
                              (Step(f"re-add address {address}/{prefix} to {name}", "add_addr",
                                    (name, address, prefix)),)))

    # 3. Ports whose master changes leave it first (then a deleted bridge has none).
    released: set[str] = set()
    for link in s.links:
        master = s.name_of(link.master)
        if master is None:
            continue
        if link.name not in touched and master not in touched:
            continue
        want = new_devs[link.name].master if link.name in new_devs else None
        if link.name not in touched:
            want = master if master not in gone else None
        if want != master or master in gone:
            released.add(link.name)
            steps.append(Step(f"release {link.name} from {master}", "set_master",
                              (link.name, None),
                              (Step(f"re-enslave {link.name} to {master}", "set_master",
                                    (link.name, master)),)))

    # 4. Devices that go, top first; each undo re-creates it as it was.
    for name in deleted:
        dlink = s.link(name)
        assert dlink is not None
        steps.append(Step(f"delete {dlink.kind} {name}", "delete_link", (name,),
                          _recreate(s, dlink)))

    # 5. Devices that come, bottom first.
    for name in created:
        cdev = new_devs[name]
        undo = (Step(f"delete {cdev.kind} {name}", "delete_link", (name,)),)
        if cdev.kind == "bridge":
            steps.append(Step(f"create bridge {name}", "add_bridge", (name,), undo))
        elif cdev.kind == "vlan":
            assert cdev.vlan is not None
            steps.append(Step(f"create vlan {name}", "add_vlan", (name, *cdev.vlan), undo))
        else:
            steps.append(Step(f"create bond {name}", "add_bond",
                              (name, dict(cdev.bond_options or {})), undo))

    # 6. Masters: bond slaves must be down to join.
    downed: set[str] = set()
    for name in sorted(touched & set(new_devs), key=lambda n: (_LAYER[new_devs[n].kind], n)):
        target = new_devs[name].master
        plink = s.link(name)
        before = None if (plink is None or name in released or name in fresh) \
            else s.name_of(plink.master)
        if target is None or target == before:
            continue
        if new_devs[target].kind == "bond" and plink is not None and plink.up:
            downed.add(name)
            steps.append(Step(f"set {name} down to join {target}", "set_up", (name, False),
                              (Step(f"set {name} up", "set_up", (name, True)),)))
        steps.append(Step(f"enslave {name} to {target}", "set_master", (name, target),
                          (Step(f"release {name} from {target}", "set_master", (name, None)),)))

    # 7. MTUs: lowered from the top down, then raised from the bottom up (a VLAN can
    # never be above its base). A created device always gets its own MTU set: a
    # bridge otherwise follows its ports'.
    changes: list[tuple[int, int, str, int, int | None]] = []
    for name in sorted(touched & set(new_devs)):
        mdev = new_devs[name]
        mlink = s.link(name)
        if name in fresh or mlink is None:
            changes.append((1, _LAYER[mdev.kind], name, mdev.mtu, None))
        elif mlink.mtu != mdev.mtu:
            changes.append((0 if mdev.mtu < mlink.mtu else 1,
                            -_LAYER[mdev.kind] if mdev.mtu < mlink.mtu else _LAYER[mdev.kind],
                            name, mdev.mtu, mlink.mtu))
    for name in sorted(touched - set(new_devs)):
        # A NIC no network uses any more goes back to the default MTU (VDSM's behaviour).
        mlink = s.link(name)
        if name in old_devs and old_devs[name].kind == "nic" and mlink is not None \
                and mlink.mtu != DEFAULT_MTU:
            lower = mlink.mtu > DEFAULT_MTU
            changes.append((0 if lower else 1, 0, name, DEFAULT_MTU, mlink.mtu))
    for _, _, name, mtu, prior in sorted(changes):
        mundo: tuple[Step, ...] = () if prior is None else (
            Step(f"set mtu {prior} on {name}", "set_mtu", (name, prior)),)
        steps.append(Step(f"set mtu {mtu} on {name}", "set_mtu", (name, mtu), mundo))

    # 8. Up, bottom first.
    for name in sorted(touched & set(new_devs), key=lambda n: (_LAYER[new_devs[n].kind], n)):
        ulink = s.link(name)
        if name in fresh or ulink is None:
            steps.append(Step(f"set {name} up", "set_up", (name, True)))
        elif not ulink.up or name in downed:
            steps.append(Step(f"set {name} up", "set_up", (name, True),
                              (Step(f"set {name} down", "set_up", (name, False)),)))

    # A slave leaving a bond is closed by the kernel: up again as it was.
    for name in sorted(released - set(new_devs)):
        ulink = s.link(name)
        bond = s.name_of(ulink.master) if ulink is not None else None
        if ulink is not None and ulink.up and bond in old_devs and old_devs[bond].kind == "bond":
            steps.append(Step(f"set {name} up", "set_up", (name, True),
                              (Step(f"set {name} down", "set_up", (name, False)),)))

    # 9. Addresses that come.
    for name in sorted(touched & set(new_devs)):
        adev = new_devs[name]
        if not adev.top:
            continue
        have = set() if name in fresh else {(a.address, a.prefix) for a in s.addrs_of(name)}
        for address, prefix in sorted(adev.addrs - have):
            steps.append(Step(f"add address {address}/{prefix} to {name}", "add_addr",
                              (name, address, prefix),
                              (Step(f"remove address {address}/{prefix} from {name}",
                                    "del_addr", (name, address, prefix)),)))

    # 10. Routes that come.
    for route, dev in wanted_routes:
        present = any(_same_route(r, route) and s.name_of(r.oif) == dev for r in s.routes
                      if r not in drop)
        if present and dev not in fresh:
            continue
        steps.append(Step(f"add route {_rtext(route, dev)}", "add_route", (route, dev),
                          (Step(f"remove route {_rtext(route, dev)}", "del_route",
                                (route, dev)),)))
    return Plan(tuple(steps), new)


def _recreate(s: State, link: Link) -> tuple[Step, ...]:
    """Steps that bring a deleted device back as the snapshot shows it (its ports and its
    own master come back through the undo of their release, addresses and routes through
    theirs)."""
    name = link.name
    if link.kind == "bridge":
        first = Step(f"re-create bridge {name}", "add_bridge", (name, link.mac))
    elif link.kind == "vlan":
        base = s.name_of(link.link)
        first = Step(f"re-create vlan {name}", "add_vlan", (name, base, link.vlan_id))
    else:
        first = Step(f"re-create bond {name}", "add_bond",
                     (name, {"mode": link.bond_mode or "balance-rr"}, link.mac))
    # Its master, if any, comes back through the undo of its release (phase 3).
    out = [first, Step(f"set mtu {link.mtu} on {name}", "set_mtu", (name, link.mtu))]
    if link.up:
        out.append(Step(f"set {name} up", "set_up", (name, True)))
    return tuple(out)


def _rtext(route: Route, dev: str | None) -> str:
    dst = f"{route.dst}/{route.dst_len}" if route.dst else "default"
    via = f" via {route.gateway}" if route.gateway else ""
    return f"{dst}{via}" + (f" dev {dev}" if dev else "")


def execute(nl: Netlink, steps: Sequence[Step]) -> None:
    """Run `steps`; on a failure undo the ones done (newest first) and raise ApplyError."""
    journal: list[Step] = []
    for step in steps:
        try:
            step.run(nl)
        except NetlinkFailure as e:
            raise ApplyError(step, e, rollback(nl, journal)) from e
        journal.append(step)


def rollback(nl: Netlink, journal: Sequence[Step]) -> list[str]:
    """Undo `journal` newest first; every undo is tried, the failures are returned."""
    failures = []
    for step in reversed(journal):
        for undo in step.undo:
            try:
                undo.run(nl)
            except NetlinkFailure as e:
                if e.missing is not None and e.missing == undo.args[0]:
                    # The device itself is gone (deleted, or vanished under us):
                    # there is nothing of it left to restore.
                    continue
                if undo.action == "delete_link" and e.errno == ENODEV:
                    continue  # gone already: what the undo wanted
                failures.append(f"{undo.text}: {e}")
    nl.forget()
    return failures


def apply(nl: Netlink, old: Config, request: Request) -> Config:
    """Plan against the kernel's state now and execute; the setup now in force."""
    result = plan(nl.state(), old, request)
    execute(nl, result.steps)
    return result.config


__all__ = ["ApplyError", "Plan", "PlanError", "Step", "apply", "execute", "plan",
           "rollback"]
