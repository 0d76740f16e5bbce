"""CmdSN ordering and window edges, including 32-bit wrap-around."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from diskless.iscsi.window import CommandWindow, serial_add, serial_lt


def test_in_order_commands_run_at_once() -> None:
    window: CommandWindow[str] = CommandWindow(10, depth=4)
    assert window.submit(10, "a") == ["a"]
    assert window.submit(11, "b") == ["b"]
    assert (window.expcmdsn, window.maxcmdsn) == (12, 15)


def test_early_command_waits_for_the_gap() -> None:
    window: CommandWindow[str] = CommandWindow(10, depth=8)
    assert window.submit(12, "c") == []
    assert window.submit(11, "b") == []
    assert window.submit(10, "a") == ["a", "b", "c"]
    assert window.expcmdsn == 13


def test_outside_window_and_duplicates_are_silently_ignored() -> None:
    window: CommandWindow[str] = CommandWindow(100, depth=4)
    assert window.submit(104, "too high") == []
    assert window.submit(99, "too low") == []
    assert window.submit(101, "early") == []
    assert window.submit(101, "duplicate") == []
    assert window.submit(100, "now") == ["now", "early"]


def test_immediate_commands_consume_nothing() -> None:
    window: CommandWindow[str] = CommandWindow(5)
    assert window.submit(5, "nop", immediate=True) == ["nop"]
    assert window.expcmdsn == 5


def test_wraps_around_32_bits() -> None:
    top = 0xFFFFFFFF
    window: CommandWindow[int] = CommandWindow(top, depth=4)
    assert window.maxcmdsn == 2
    assert window.submit(0, 0) == []
    assert window.submit(top, top) == [top, 0]
    assert window.expcmdsn == 1


def test_skip_unblocks_waiters() -> None:
    window: CommandWindow[str] = CommandWindow(1, depth=8)
    assert window.submit(2, "b") == []
    assert window.skip(1) == ["b"]
    assert window.expcmdsn == 3


@settings(max_examples=200, derandomize=True, database=None)
@given(st.integers(0, 0xFFFFFFFF), st.integers(0, 0x7FFFFFFE))
def test_serial_order_is_antisymmetric(a: int, step: int) -> None:
    b = serial_add(a, step + 1)
    assert serial_lt(a, b)
    assert not serial_lt(b, a)


@settings(max_examples=100, derandomize=True, database=None)
@given(st.integers(0, 0xFFFFFFFF), st.permutations(list(range(16))))
def test_any_arrival_order_delivers_in_cmdsn_order(start: int, order: list[int]) -> None:
    window: CommandWindow[int] = CommandWindow(start, depth=16)
    delivered: list[int] = []
    for offset in order:
        delivered.extend(window.submit(serial_add(start, offset), offset))
    assert delivered == list(range(16))
