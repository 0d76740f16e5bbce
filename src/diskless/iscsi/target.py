"""The targets a portal serves and the sessions logged in to them.

:class:`TargetRegistry` is the portal's :class:`~diskless.iscsi.discovery.TargetDirectory`: each
target pairs its access rules with the one :class:`~diskless.scsi.LogicalUnit` (LUN 0) every
session to it shares, so iPXE's session and the booted OS's session see the same disk object.

:class:`SessionRegistry` is the login's :class:`~diskless.iscsi.login.SessionAdmission`: it hands
out TSIHs and performs session reinstatement (RFC 7143 §6.3.5) by closing the older connection.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from diskless.iscsi.discovery import TargetAccess, names_equal
from diskless.iscsi.errors import LoginRejected
from diskless.iscsi.negotiation import SessionType
from diskless.scsi import LogicalUnit, LuIdentity, naa_locally_assigned
from diskless.storage.blockdev import BlockDevice

__all__ = ["Session", "SessionRegistry", "Target", "TargetRegistry", "disk_target"]

_MAX_TSIH = 0xFFFF
# RFC 7143 §11.13.5 status 0x0302 "out of resources": we refuse logins past this many sessions.
MAX_SESSIONS = 4096


@dataclass(frozen=True, slots=True)
class Target:
    """One exported disk: who may log in, and the logical unit they all share."""

    access: TargetAccess
    logical_unit: LogicalUnit

    @property
    def name(self) -> str:
        return self.access.name


def disk_target(
    device: BlockDevice,
    access: TargetAccess,
    *,
    identity_seed: str,
    read_only: bool = False,
) -> Target:
    """A target exporting ``device`` as LUN 0.

    ``identity_seed`` (a disk's stable name) fixes the unit serial number and NAA designator, so
    Windows and Linux recognise the same disk across reboots and server restarts.
    """
    seed = identity_seed.encode("utf-8")
    serial = hashlib.sha256(b"diskless-serial\0" + seed).hexdigest()[:16]
    identity = LuIdentity(serial=serial, naa=naa_locally_assigned(seed), target_name=access.name)
    return Target(access, LogicalUnit(device, identity, read_only=read_only))


class TargetRegistry:
    """The targets of one portal, looked up by name (case-insensitively, as iSCSI names are)."""

    def __init__(self, targets: Sequence[Target] = ()) -> None:
        self._targets: dict[str, Target] = {}
        for target in targets:
            self.add(target)

    def add(self, target: Target) -> None:
        self._targets[target.name.casefold()] = target

    def remove(self, name: str) -> Target | None:
        return self._targets.pop(name.casefold(), None)

    def get(self, name: str) -> Target | None:
        return self._targets.get(name.casefold())

    def lookup(self, target_name: str) -> TargetAccess | None:
        target = self.get(target_name)
        return target.access if target is not None else None

    def visible_to(self, initiator_name: str) -> Sequence[TargetAccess]:
        return [
            target.access
            for _, target in sorted(self._targets.items())
            if target.access.allows(initiator_name)
        ]

    def __iter__(self) -> itertools.chain[Target]:
        return itertools.chain(self._targets.values())


@dataclass(slots=True, eq=False)
class Session:
    """A logged-in session; ``close`` drops its connection (set by the endpoint that owns it)."""

    tsih: int
    initiator_name: str
    isid: bytes
    target_name: str | None
    session_type: SessionType
    close: Callable[[], None] = field(default=lambda: None)

    @property
    def nexus(self) -> tuple[str, bytes]:
        """The I_T nexus: initiator port (name + ISID) to this target port."""
        return (self.initiator_name.casefold(), self.isid)


class SessionRegistry:
    """Every live session of the portal, by TSIH and by (initiator, ISID, target)."""

    def __init__(self) -> None:
        self._by_tsih: dict[int, Session] = {}
        self._next_tsih = 1

    def admit(
        self,
        initiator_name: str,
        isid: bytes,
        target_name: str | None,
        session_type: SessionType,
        tsih: int,
    ) -> int:
        for existing in list(self._by_tsih.values()):
            if (
                existing.isid == isid
                and names_equal(existing.initiator_name, initiator_name)
                and _same_target(existing.target_name, target_name)
            ):
                # RFC 7143 §6.3.5: a leading login with the same initiator port and target port
                # reinstates the session; the old one is logged out implicitly.
                self.release(existing)
                existing.close()
        if len(self._by_tsih) >= MAX_SESSIONS:
            raise LoginRejected(0x03, 0x02, "too many sessions")
        new_tsih = self._allocate()
        self._by_tsih[new_tsih] = Session(
            tsih=new_tsih,
            initiator_name=initiator_name,
            isid=isid,
            target_name=target_name,
            session_type=session_type,
        )
        return new_tsih

    def get(self, tsih: int) -> Session | None:
        return self._by_tsih.get(tsih)

    def release(self, session: Session) -> None:
        if self._by_tsih.get(session.tsih) is session:
            del self._by_tsih[session.tsih]

    def sessions(self) -> list[Session]:
        return list(self._by_tsih.values())

    def _allocate(self) -> int:
        for _ in range(_MAX_TSIH):
            tsih = self._next_tsih
            self._next_tsih = tsih % _MAX_TSIH + 1
            if tsih not in self._by_tsih:
                return tsih
        raise LoginRejected(0x03, 0x02, "no free TSIH")


def _same_target(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is b
    return names_equal(a, b)
