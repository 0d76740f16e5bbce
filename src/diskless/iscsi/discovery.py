"""What the portal exposes to initiators, and SendTargets discovery (RFC 7143 Appendix C, §13.3).

Owns the view the login and discovery code have of the configured targets: a
:class:`TargetAccess` per target (who may log in, with which CHAP secrets), the
:class:`TargetDirectory` protocol the server implements to look them up, the portal's own
:class:`PortalInfo`, and the answer to ``SendTargets``. Discovery never lists a target the
initiator may not log in to: one client must not learn the name of another client's disk.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from diskless.errors import ConfigError

from .chap import ChapCredentials
from .negotiation import OPERATIONAL_KEYS, SessionType
from .text import MAX_VALUE_LENGTH as MAX_TEXT_VALUE_LENGTH
from .text import encode_text

__all__ = [
    "ISCSI_PORT",
    "MAX_NAME_LENGTH",
    "PortalInfo",
    "TargetAccess",
    "TargetDirectory",
    "answer_text_request",
    "names_equal",
    "send_targets",
]

ISCSI_PORT: Final = 3260  # the IANA-assigned iSCSI port
# RFC 3720 §3.2.6.1 / RFC 7143 §4.2.7.1: iSCSI names are at most 223 bytes of UTF-8.
MAX_NAME_LENGTH: Final = 223
_SEND_TARGETS_ALL: Final = "All"


def names_equal(a: str, b: str) -> bool:
    """iSCSI names compare case-insensitively (RFC 3722 stringprep folds them to lower case)."""
    return a.casefold() == b.casefold()


@dataclass(frozen=True, slots=True)
class TargetAccess:
    """One target as the login sees it: its name and who may use it.

    An empty ``allowed_initiators`` admits anyone. ``chap`` makes CHAP mandatory (the initiator
    proves itself with these credentials); ``mutual_chap`` is what the target answers with when
    the initiator asks it to prove itself too.
    """

    name: str
    alias: str | None = None
    allowed_initiators: frozenset[str] = frozenset()
    chap: ChapCredentials | None = None
    mutual_chap: ChapCredentials | None = None

    def __post_init__(self) -> None:
        if not self.name or "\0" in self.name or len(self.name.encode("utf-8")) > MAX_NAME_LENGTH:
            raise ConfigError(f"iSCSI target name must be 1..{MAX_NAME_LENGTH} bytes")
        if self.alias is not None and len(self.alias.encode("utf-8")) > MAX_TEXT_VALUE_LENGTH:
            raise ConfigError(
                f"target {self.name}: alias longer than {MAX_TEXT_VALUE_LENGTH} bytes"
            )
        if self.mutual_chap is not None and self.chap is None:
            # iPXE refuses this mix too ("Bad credential mix"): mutual CHAP rides on one-way.
            raise ConfigError(f"target {self.name}: mutual CHAP needs initiator CHAP as well")
        if (
            self.chap is not None
            and self.mutual_chap is not None
            and self.chap.secret == self.mutual_chap.secret
        ):
            raise ConfigError(
                f"target {self.name}: the initiator and target CHAP secrets must differ "
                "(RFC 7143 §12.1.3)"
            )

    def allows(self, initiator_name: str) -> bool:
        """Whether ``initiator_name`` may log in to (and discover) this target."""
        if not self.allowed_initiators:
            return True
        return any(names_equal(initiator_name, allowed) for allowed in self.allowed_initiators)


class TargetDirectory(Protocol):
    """The server's targets, as the login and discovery code query them."""

    def lookup(self, target_name: str) -> TargetAccess | None:
        """The target called ``target_name`` (compared case-insensitively), if any."""
        ...

    def visible_to(self, initiator_name: str) -> Sequence[TargetAccess]:
        """The targets ``initiator_name`` may discover, in a stable order."""
        ...


@dataclass(frozen=True, slots=True)
class PortalInfo:
    """This portal group: its tag and the ``(host, port)`` addresses initiators reach it at."""

    target_portal_group_tag: int = 1
    addresses: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.target_portal_group_tag <= 0xFFFF:
            raise ConfigError("TargetPortalGroupTag is a 16-bit value (RFC 7143 §13.9)")

    def target_addresses(self) -> list[str]:
        """``TargetAddress`` values: ``host:port,tag`` with IPv6 hosts in brackets (§13.8)."""
        return [
            f"{_bracketed(host)}:{port},{self.target_portal_group_tag}"
            for host, port in self.addresses
        ]


def _bracketed(host: str) -> str:
    try:
        is_v6 = isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        is_v6 = False  # a DNS name
    return f"[{host}]" if is_v6 else host


def send_targets(
    request_value: str,
    initiator_name: str,
    directory: TargetDirectory,
    portal: PortalInfo,
    *,
    session_type: SessionType = SessionType.DISCOVERY,
    current_target: str | None = None,
) -> bytes:
    """The Text Response data for ``SendTargets=<request_value>`` (RFC 7143 Appendix C).

    ``All`` lists every target the initiator may use (discovery sessions only); a target name
    lists that target if the initiator may use it; an empty value lists the session's own
    target (normal sessions). Each target is ``TargetName=`` followed by one ``TargetAddress=``
    per portal address. The caller splits the result across PDUs (C bit) if it exceeds the
    initiator's MaxRecvDataSegmentLength.
    """
    if request_value == _SEND_TARGETS_ALL and session_type is SessionType.DISCOVERY:
        targets: Iterable[TargetAccess] = directory.visible_to(initiator_name)
    elif request_value == _SEND_TARGETS_ALL:
        return encode_text([("SendTargets", "Reject")])  # Appendix C: "All" is for discovery
    else:
        name = request_value or current_target
        found = directory.lookup(name) if name else None
        targets = [found] if found is not None else []
    pairs: list[tuple[str, str]] = []
    for target in targets:
        if not target.allows(initiator_name):
            continue  # never trust the directory alone with another client's disk name
        pairs.append(("TargetName", target.name))
        pairs.extend(("TargetAddress", address) for address in portal.target_addresses())
    return encode_text(pairs)


def answer_text_request(
    pairs: Sequence[tuple[str, str]],
    initiator_name: str,
    directory: TargetDirectory,
    portal: PortalInfo,
    *,
    session_type: SessionType,
    current_target: str | None = None,
) -> bytes:
    """The Text Response data for a full-feature-phase Text Request's keys.

    ``SendTargets`` is answered as above. This target does not renegotiate during full feature
    phase, so known operational keys are answered ``Reject`` and unknown ones ``NotUnderstood``
    (RFC 7143 §6.2).
    """
    out = bytearray()
    for key, value in pairs:
        if key == "SendTargets":
            out += send_targets(
                value,
                initiator_name,
                directory,
                portal,
                session_type=session_type,
                current_target=current_target,
            )
        else:
            answer = "Reject" if key in OPERATIONAL_KEYS else "NotUnderstood"
            out += encode_text([(key, answer)])
    return bytes(out)
