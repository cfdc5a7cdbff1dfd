"""What a VM is made of, after the create params have been checked.

Plain records between the params validator (agent) and the XML builder (virt),
so neither has to know the other's input format.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DiskSpec:
    device: str  # "disk" | "cdrom"
    path: str | None
    format: str  # "raw" | "cow"
    iface: str  # "virtio" | "scsi" | "ide"
    readonly: bool
    boot_order: int | None
    custom: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NicSpec:
    device: str  # "bridge" | "network"
    network: str
    mac: str
    model: str  # "virtio" | "e1000" | "rtl8139"
    link_active: bool
    custom: dict[str, str] = field(default_factory=dict)


DeviceSpec = DiskSpec | NicSpec


@dataclass(frozen=True)
class VmSpec:
    vm_id: str
    name: str
    mem_mib: int
    smp: int
    devices: tuple[DeviceSpec, ...] = ()
    # What the VM may grow to live (0: as it starts): vCPUs, and memory in DIMM slots.
    max_vcpus: int = 0
    max_mem_mib: int = 0
    mem_slots: int = 0
    graphics: str = "none"  # "vnc" | "spice" | "none": a loopback console
