"""Which disks are exported to which machines, and with which iSCSI identities (pure).

Every machine whose boot target (or next-boot-once override, or a menu item) is ``sanboot`` gets
one target, named and protected from its record alone (:func:`diskless.boot.iscsi_names`): only
its own initiator name may log in, with its CHAP secret when it has one. The iPXE script sets
that initiator name and iPXE hands it to the booted OS in the iBFT, so both stages pass.

With the inventory, each export also carries what its disk is assigned to be made of (a
:class:`~diskless.storage.disks.DiskSpec`): the disk is created from it when missing and follows
it at each boot of the machine.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace

from diskless.boot.machines import BootTarget, Machine, MachineBook, MenuTarget, SanbootTarget
from diskless.boot.policy import iscsi_names
from diskless.iscsi.chap import ChapCredentials
from diskless.iscsi.discovery import TargetAccess
from diskless.storage.disks import DiskSpec

__all__ = ["DiskExport", "plan_exports"]


@dataclass(frozen=True, slots=True)
class DiskExport:
    """One machine's disk as an iSCSI target."""

    mac: bytes
    hostname: str
    disk: str
    access: TargetAccess
    spec: DiskSpec | None = None
    """What the disk is assigned to be made of; ``None``: whatever it is (a machines file)."""

    @property
    def target_name(self) -> str:
        return self.access.name

    def same_target(self, other: DiskExport) -> bool:
        """Whether ``other`` is this export but for its spec, which takes effect at the next
        boot rather than ending the sessions of a running machine."""
        return replace(other, spec=self.spec) == self


def _sanboot_targets(target: BootTarget | None) -> Iterator[SanbootTarget]:
    if isinstance(target, SanbootTarget):
        yield target
    elif isinstance(target, MenuTarget):
        for item in target.items:
            if isinstance(item.target, SanbootTarget):
                yield item.target


def _export(machine: Machine, sanboot: SanbootTarget, iqn_prefix: str) -> DiskExport:
    names = iscsi_names(machine, iqn_prefix, sanboot.disk)
    chap = (
        ChapCredentials(names.initiator, machine.chap_secret.encode("utf-8"))
        if machine.chap_secret
        else None
    )
    return DiskExport(
        mac=machine.mac,
        hostname=machine.hostname,
        disk=(sanboot.disk or machine.hostname).lower(),
        access=TargetAccess(
            name=names.target,
            alias=machine.hostname,
            allowed_initiators=frozenset({names.initiator}),
            chap=chap,
        ),
    )


def plan_exports(
    book: MachineBook, iqn_prefix: str, specs: Mapping[str, DiskSpec] | None = None
) -> list[DiskExport]:
    """One export per (machine, disk) that some boot target of the machine sanboots.

    ``specs`` maps disk names (lower case) to their assignment, from the inventory.
    """
    exports: dict[str, DiskExport] = {}
    for machine in book:
        for target in (machine.boot, machine.next_boot_once):
            for sanboot in _sanboot_targets(target):
                export = _export(machine, sanboot, iqn_prefix)
                if specs is not None and export.disk in specs:
                    export = replace(export, spec=specs[export.disk])
                exports.setdefault(export.target_name, export)
    return list(exports.values())
