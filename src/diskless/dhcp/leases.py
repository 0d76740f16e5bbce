"""Address leases of full-mode DHCP: the pool, reservations, and a journal that survives restarts.

Leases are keyed by the client's hardware address, not by option 61: a PXE ROM and the iPXE it
loads send different client identifiers but the same MAC, and keying on the MAC gives both boot
stages one address instead of two (Warewulf #802: PXE + iPXE exhausting half the pool).

Persistence is an append-only journal of JSON lines (``bind``/``release``), written with one
``write`` per change and compacted on start and when it grows past a few times the live lease
count. Like Kea's memfile backend it does not fsync: a lease survives a crash of the process, and
after a power loss clients simply renew (RFC 2131 §3.2: the client keeps its address if it is
still free).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from diskless.boot.machines import format_mac, parse_mac

__all__ = ["Lease", "LeaseTable"]

OFFER_HOLD_SECONDS = 30.0
"""How long an offered address stays held for the client it was offered to."""
DECLINE_HOLD_SECONDS = 600.0
"""How long an address a client declined (found in use) is left alone."""
_DECLINED = b"declined"


@dataclass(slots=True)
class Lease:
    mac: bytes
    address: int
    expires: float
    bound: bool
    """``False`` while only offered."""


class LeaseTable:
    """The pool ``[first, last]`` plus reservations, with leases in memory and in a journal."""

    def __init__(
        self,
        first: IPv4Address,
        last: IPv4Address,
        *,
        reservations: Mapping[bytes, IPv4Address] | None = None,
        journal: Path | None = None,
    ) -> None:
        if int(last) < int(first):
            raise ValueError(f"pool end {last} is before its start {first}")
        self._first = int(first)
        self._last = int(last)
        self._reserved_by_mac: dict[bytes, int] = {}
        self._reserved_addresses: set[int] = set()
        self._by_mac: dict[bytes, Lease] = {}
        self._by_address: dict[int, Lease] = {}
        self._cursor = self._first
        self._journal_path = journal
        self._journal_fd: int | None = None
        self._journal_lines = 0
        self.set_reservations(reservations or {})
        if journal is not None:
            self._load(journal)

    # -- queries -------------------------------------------------------------------------------

    def in_pool(self, address: int) -> bool:
        return self._first <= address <= self._last

    def lease(self, mac: bytes) -> Lease | None:
        return self._by_mac.get(mac)

    def holder(self, address: int, now: float) -> bytes | None:
        """The MAC that holds ``address`` (offered or bound, not expired), if any."""
        lease = self._by_address.get(address)
        if lease is None or lease.expires <= now or len(lease.mac) != 6:
            return None
        return lease.mac

    def active_leases(self, now: float) -> list[Lease]:
        return [lease for lease in self._by_mac.values() if lease.bound and lease.expires > now]

    def reservation(self, mac: bytes) -> int | None:
        return self._reserved_by_mac.get(mac)

    def set_reservations(self, reservations: Mapping[bytes, IPv4Address]) -> None:
        """Replace the reservations (the machine book changed); leases that clash are dropped."""
        self._reserved_by_mac = {mac: int(address) for mac, address in reservations.items()}
        self._reserved_addresses = set(self._reserved_by_mac.values())
        for address in self._reserved_addresses:
            lease = self._by_address.get(address)
            if lease is not None and self._reserved_by_mac.get(lease.mac) != address:
                self._forget(lease)

    # -- the DHCP operations -------------------------------------------------------------------

    def offer(self, mac: bytes, requested: int | None, now: float) -> int | None:
        """An address to offer ``mac`` (held briefly), or ``None`` when the pool is exhausted."""
        reserved = self._reserved_by_mac.get(mac)
        if reserved is not None:
            return self._hold(mac, reserved, now)
        lease = self._by_mac.get(mac)
        if lease is not None and lease.address not in self._reserved_addresses:
            if lease.bound and lease.expires > now:
                return lease.address
            return self._hold(mac, lease.address, now)
        if requested is not None and self._available(requested, mac, now):
            return self._hold(mac, requested, now)
        free = self._find_free(now)
        return None if free is None else self._hold(mac, free, now)

    def may_bind(self, mac: bytes, address: int, now: float) -> bool:
        """Whether ``mac`` may have ``address``: its reservation, its lease or a free address."""
        reserved = self._reserved_by_mac.get(mac)
        if reserved is not None:
            return address == reserved
        return self._available(address, mac, now)

    def bind(self, mac: bytes, address: int, lease_time: float, now: float) -> Lease:
        """Record that ``mac`` holds ``address`` for ``lease_time`` (ask :meth:`may_bind` first)."""
        lease = self._set(mac, address, now + lease_time, bound=True)
        # Formatted by hand: this runs for every ACK, and json.dumps costs several times more.
        self._append_line(
            f'{{"op": "bind", "mac": "{format_mac(mac)}", '
            f'"ip": "{".".join(map(str, address.to_bytes(4, "big")))}", '
            f'"expires": {lease.expires:.1f}}}'
        )
        return lease

    def release(self, mac: bytes, address: int) -> bool:
        lease = self._by_mac.get(mac)
        if lease is None or lease.address != address:
            return False
        self._forget(lease)
        self._append({"op": "release", "mac": format_mac(mac)})
        return True

    def decline(self, mac: bytes, address: int, now: float) -> None:
        """A client found ``address`` in use: keep everyone off it for a while."""
        lease = self._by_mac.get(mac)
        if lease is not None and lease.address == address:
            self._forget(lease)
        if self.in_pool(address) and address not in self._reserved_addresses:
            self._set(
                _DECLINED + address.to_bytes(4, "big"),
                address,
                now + DECLINE_HOLD_SECONDS,
                bound=True,
            )

    def forget_offer(self, mac: bytes) -> None:
        """The client chose another server: free an address only offered to it."""
        lease = self._by_mac.get(mac)
        if lease is not None and not lease.bound:
            self._forget(lease)

    def close(self) -> None:
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None

    # -- internals -----------------------------------------------------------------------------

    def _available(self, address: int, mac: bytes, now: float) -> bool:
        if not self.in_pool(address) or address in self._reserved_addresses:
            return False
        holder = self._by_address.get(address)
        return holder is None or holder.mac == mac or holder.expires <= now

    def _find_free(self, now: float) -> int | None:
        size = self._last - self._first + 1
        candidate = self._cursor
        for _ in range(size):
            if candidate > self._last:
                candidate = self._first
            holder = self._by_address.get(candidate)
            if candidate not in self._reserved_addresses and (
                holder is None or holder.expires <= now
            ):
                self._cursor = candidate + 1
                if holder is not None:
                    self._forget(holder)
                return candidate
            candidate += 1
        return None

    def _hold(self, mac: bytes, address: int, now: float) -> int:
        lease = self._by_mac.get(mac)
        if lease is not None and lease.address == address and lease.bound:
            return address
        self._set(mac, address, now + OFFER_HOLD_SECONDS, bound=False)
        return address

    def _set(self, mac: bytes, address: int, expires: float, *, bound: bool) -> Lease:
        previous = self._by_mac.get(mac)
        if previous is not None and previous.address != address:
            self._by_address.pop(previous.address, None)
        holder = self._by_address.get(address)
        if holder is not None and holder.mac != mac:
            self._by_mac.pop(holder.mac, None)
        lease = Lease(mac, address, expires, bound)
        self._by_mac[mac] = lease
        self._by_address[address] = lease
        return lease

    def _forget(self, lease: Lease) -> None:
        if self._by_mac.get(lease.mac) is lease:
            del self._by_mac[lease.mac]
        if self._by_address.get(lease.address) is lease:
            del self._by_address[lease.address]

    def _load(self, path: Path) -> None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        for line in text.splitlines():
            try:
                record = json.loads(line)
                mac = parse_mac(record["mac"])
                if record["op"] == "bind":
                    address = int(IPv4Address(record["ip"]))
                    if self.in_pool(address) or self._reserved_by_mac.get(mac) == address:
                        self._set(mac, address, float(record["expires"]), bound=True)
                elif record["op"] == "release":
                    lease = self._by_mac.get(mac)
                    if lease is not None:
                        self._forget(lease)
            except (ValueError, KeyError, TypeError):
                continue  # A torn last line after a crash, or a hand edit: skip that record.
        self._compact(path)

    def _compact(self, path: Path) -> None:
        if self._journal_fd is not None:
            os.close(self._journal_fd)
        lines = [
            json.dumps(
                {
                    "op": "bind",
                    "mac": format_mac(lease.mac),
                    "ip": str(IPv4Address(lease.address)),
                    "expires": round(lease.expires, 1),
                }
            )
            for lease in self._by_mac.values()
            if lease.bound and len(lease.mac) == 6
        ]
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        os.replace(temporary, path)
        self._journal_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._journal_lines = len(lines)

    def _append(self, record: dict[str, object]) -> None:
        self._append_line(json.dumps(record))

    def _append_line(self, line: str) -> None:
        if self._journal_fd is None or self._journal_path is None:
            return
        os.write(self._journal_fd, (line + "\n").encode("ascii"))
        self._journal_lines += 1
        if self._journal_lines > 4 * len(self._by_mac) + 1024:
            self._compact(self._journal_path)
