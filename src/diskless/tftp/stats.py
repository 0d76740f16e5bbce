"""Counters of the TFTP server, for logs, a later metrics endpoint, and the tests."""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["TftpStats"]


@dataclass(slots=True)
class TftpStats:
    """Running totals since the server started; plain ints, bumped on the hot path."""

    requests: int = 0
    """Read and write requests received (duplicates included)."""
    requests_refused: int = 0
    """Requests answered with an ERROR: not found, traversal, WRQ, server busy."""
    duplicate_requests: int = 0
    """Requests repeated by a client whose transfer is already running; ignored."""
    transfers_completed: int = 0
    transfers_failed: int = 0
    """Ended by the client's ERROR, a socket error, a newer request or shutdown."""
    transfers_timed_out: int = 0
    bytes_sent: int = 0
    """DATA payload bytes sent, retransmissions included."""
    retransmissions: int = 0
    """DATA packets sent again after a timeout."""
    packets_malformed: int = 0
    """Datagrams that were truncated, oversized or not TFTP; dropped."""
    packets_ignored: int = 0
    """Well-formed packets that were not requests, sent to the listening port; dropped."""
    packets_unknown_tid: int = 0
    """Packets to a transfer's port from another address; answered with ERROR 5."""

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
