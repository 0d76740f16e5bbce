"""Logging set-up: structlog and plain stdlib records rendered alike, as key=value or JSON."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from diskless.config import LoggingSettings
from diskless.observe.log import configure_logging, get_logger


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_the_event_and_its_keys() -> None:
    stream = io.StringIO()
    configure_logging(LoggingSettings(format="json"), stream=stream)

    get_logger("diskless.test").info("disk opened", disk="pc01", size=42)

    [record] = json_lines(stream)
    assert record["event"] == "disk opened"
    assert record["disk"] == "pc01"
    assert record["size"] == 42
    assert record["level"] == "info"
    assert record["logger"] == "diskless.test"
    assert isinstance(record["timestamp"], str)


def test_console_lines_are_key_value() -> None:
    stream = io.StringIO()
    configure_logging(LoggingSettings(format="console"), stream=stream)

    get_logger("diskless.test").warning("slow flush", disk="pc01")

    line = stream.getvalue()
    assert "slow flush" in line
    assert "disk=pc01" in line
    assert "warning" in line
    # Not a terminal: no colour escapes in a file or a journal.
    assert "\x1b[" not in line


def test_level_filters_structlog_events() -> None:
    stream = io.StringIO()
    configure_logging(LoggingSettings(level="warning", format="json"), stream=stream)
    log = get_logger("diskless.test")

    log.info("hidden")
    log.error("shown")

    assert [record["event"] for record in json_lines(stream)] == ["shown"]


def test_stdlib_records_use_the_same_format() -> None:
    stream = io.StringIO()
    configure_logging(LoggingSettings(format="json"), stream=stream)

    logging.getLogger("some.library").warning("retrying %s", "twice")

    [record] = json_lines(stream)
    assert record["event"] == "retrying twice"
    assert record["logger"] == "some.library"
    assert record["level"] == "warning"


def test_exceptions_are_rendered_in_json() -> None:
    stream = io.StringIO()
    configure_logging(LoggingSettings(format="json"), stream=stream)

    try:
        raise ValueError("bad cluster")
    except ValueError:
        get_logger("diskless.test").exception("crashed")

    [record] = json_lines(stream)
    assert "bad cluster" in json.dumps(record["exception"])


def test_reconfiguring_replaces_the_handler_instead_of_adding_one() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(LoggingSettings(format="json"), stream=first)
    configure_logging(LoggingSettings(format="json"), stream=second)

    get_logger("diskless.test").info("once")

    assert first.getvalue() == ""
    assert [record["event"] for record in json_lines(second)] == ["once"]


def test_a_logger_made_before_configuration_follows_it() -> None:
    log = get_logger("diskless.early")
    stream = io.StringIO()
    configure_logging(LoggingSettings(format="json"), stream=stream)

    log.info("after")

    assert [record["event"] for record in json_lines(stream)] == ["after"]
