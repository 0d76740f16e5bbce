"""Progress bars and confirmations for the long or destructive image and disk commands.

Bars go to stderr and only when it is a terminal: a script reading ``--json`` from stdout, or a
test runner, sees nothing but the result. Destructive commands ask before acting when a person is
at the terminal, and otherwise insist on ``--yes`` rather than guessing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from diskless.cli.output import fail

__all__ = ["ProgressBar", "confirm_or_fail", "progress_bar"]


class ProgressBar:
    """One rich progress display; each phase of an operation gets its own bar."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[str, TaskID] = {}

    def update(self, label: str, done: int, total: int) -> None:
        task = self._tasks.get(label)
        if task is None:
            task = self._progress.add_task(label, total=total)
            self._tasks[label] = task
        self._progress.update(task, completed=done, total=total)

    def callback(self, label: str) -> Callable[[int, int], None]:
        """A ``(done, total)`` callback drawing the bar called ``label``."""
        return lambda done, total: self.update(label, done, total)

    def phase_callback(self, labels: Mapping[str, str]) -> Callable[[str, int, int], None]:
        """A ``(phase, done, total)`` callback; ``labels`` renames phases for display."""
        return lambda phase, done, total: self.update(labels.get(phase, phase), done, total)


@contextmanager
def progress_bar() -> Iterator[ProgressBar]:
    """A progress display on stderr, silent when stderr is not a terminal."""
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
        transient=False,
    )
    with progress:
        yield ProgressBar(progress)


def confirm_or_fail(question: str, *, yes: bool) -> None:
    """Return if ``yes`` or the person at the terminal agrees; otherwise exit with an error."""
    if yes:
        return
    if not sys.stdin.isatty():
        fail(f"{question.rstrip('?')}: refusing without --yes (no terminal to ask on)")
    if not typer.confirm(question, default=False, err=True):
        fail("cancelled")
