"""The CmdSN command window of one session (RFC 7143 §4.2.2.1), as a pure state machine.

Non-immediate commands are numbered by CmdSN and must reach the SCSI layer in that order; the
target advertises ``[ExpCmdSN, MaxCmdSN]`` and silently ignores anything outside it. Early
arrivals inside the window wait here until the gap before them is filled.
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["DEFAULT_WINDOW", "CommandWindow", "serial_add", "serial_lt"]

_T = TypeVar("_T")

_SN_MODULO = 1 << 32
_SN_HALF = 1 << 31
# Commands the initiator may queue ahead of the one we execute: tgt's default depth; enough for
# open-iscsi's queue_depth 32 and Windows' 255 pending requests to keep the link busy.
DEFAULT_WINDOW = 128


def serial_add(number: int, increment: int) -> int:
    """RFC 1982 serial-number addition on 32 bits."""
    return (number + increment) % _SN_MODULO


def serial_lt(a: int, b: int) -> bool:
    """RFC 1982 ``a < b`` on 32-bit serial numbers."""
    return a != b and ((a < b and b - a < _SN_HALF) or (a > b and a - b > _SN_HALF))


class CommandWindow(Generic[_T]):
    """Orders non-immediate commands by CmdSN and tracks ExpCmdSN/MaxCmdSN."""

    def __init__(self, initial_cmdsn: int, depth: int = DEFAULT_WINDOW) -> None:
        if not 1 <= depth < _SN_HALF:
            raise ValueError(f"window depth {depth} out of range")
        self._expected = initial_cmdsn % _SN_MODULO
        self._depth = depth
        self._waiting: dict[int, _T] = {}

    @property
    def expcmdsn(self) -> int:
        return self._expected

    @property
    def maxcmdsn(self) -> int:
        return serial_add(self._expected, self._depth - 1)

    def in_window(self, cmdsn: int) -> bool:
        return not serial_lt(cmdsn, self._expected) and not serial_lt(self.maxcmdsn, cmdsn)

    def submit(self, cmdsn: int, item: _T, *, immediate: bool = False) -> list[_T]:
        """Offer a command; returns the commands now ready to run, in order.

        An immediate command runs at once and consumes no CmdSN. A non-immediate one outside the
        window, or a duplicate of one already waiting, is dropped (RFC 7143 §4.2.2.1: "silently
        ignored"): the result is then empty.
        """
        if immediate:
            return [item]
        if cmdsn == self._expected and not self._waiting:
            # In order with nothing held back: what nearly every command is.
            self._expected = (cmdsn + 1) % _SN_MODULO
            return [item]
        if not self.in_window(cmdsn) or cmdsn in self._waiting:
            return []
        if cmdsn != self._expected:
            self._waiting[cmdsn] = item
            return []
        ready = [item]
        self._expected = serial_add(self._expected, 1)
        while self._expected in self._waiting:
            ready.append(self._waiting.pop(self._expected))
            self._expected = serial_add(self._expected, 1)
        return ready

    def skip(self, cmdsn: int) -> list[_T]:
        """Treat ``cmdsn`` as received without running it (ABORT TASK of a command never seen)."""
        if cmdsn == self._expected:
            self._expected = serial_add(self._expected, 1)
            ready: list[_T] = []
            while self._expected in self._waiting:
                ready.append(self._waiting.pop(self._expected))
                self._expected = serial_add(self._expected, 1)
            return ready
        return []

    def discard_waiting(self) -> list[_T]:
        """Remove every command still waiting for a gap to close (task set abort, logout)."""
        dropped = list(self._waiting.values())
        self._waiting.clear()
        return dropped

    def remove_waiting(self, item: _T) -> bool:
        for cmdsn, waiting in list(self._waiting.items()):
            if waiting is item:
                del self._waiting[cmdsn]
                return True
        return False

    @property
    def waiting(self) -> list[_T]:
        return list(self._waiting.values())
