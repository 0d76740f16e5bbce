"""Next-boot-once: an override served once, then forgotten.

A machine's ``next_boot_once`` target wins over its ``boot`` target until its script has been
served once (:func:`~diskless.boot.decide` flags such a plan ``once``). Forgetting it durably is
the inventory's job; until the inventory lands, :class:`ConsumedInMemory` remembers which
override was served to which MAC, so the next request gets the normal target, and calls an
optional hook where the inventory will persist it. A restart forgets what was consumed (the
machines file still holds the override), and an override is served again if the record changes
to a *different* override.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from diskless.boot import BootTarget, Machine

__all__ = ["ConsumedInMemory", "NextBootOnceStore"]


class NextBootOnceStore(Protocol):
    """Where the HTTP boot plane reports a served override, and learns which are gone."""

    def effective(self, machine: Machine) -> Machine:
        """``machine`` as the boot decision should see it (an override already served removed)."""

    def consume(self, machine: Machine) -> None:
        """``machine``'s ``next_boot_once`` was just served: forget it from now on."""


class ConsumedInMemory:
    """Served overrides kept in memory; ``on_consumed`` is told about each one."""

    def __init__(self, on_consumed: Callable[[Machine], None] | None = None) -> None:
        self._served: dict[bytes, BootTarget] = {}
        self._on_consumed = on_consumed

    def effective(self, machine: Machine) -> Machine:
        served = self._served.get(machine.mac)
        if served is None:
            return machine
        if machine.next_boot_once != served:
            # The record no longer holds the override we served: forgotten upstream, or replaced
            # by a new one, which is served in turn.
            del self._served[machine.mac]
            return machine
        return machine.model_copy(update={"next_boot_once": None})

    def consume(self, machine: Machine) -> None:
        if machine.next_boot_once is None:
            return
        self._served[machine.mac] = machine.next_boot_once
        if self._on_consumed is not None:
            self._on_consumed(machine)
