"""The shared printing helpers: tables or JSON on stdout, one red line on stderr for failures."""

from __future__ import annotations

import enum
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import typer

from diskless.cli.output import EXIT_FAILURE, emit, emit_one, fail, human_size

ROWS = [
    {"name": "win11", "versions": 2, "path": Path("/d/images/win11"), "golden": True},
    {"name": "ubuntu[lts]", "versions": 1, "path": None, "golden": False},
]


class Color(enum.Enum):
    RED = "red"


def test_emit_table_shows_the_chosen_columns(capsys: pytest.CaptureFixture[str]) -> None:
    emit(ROWS, ["name", "versions", "golden"], as_json=False, title="Images")

    out = capsys.readouterr().out
    assert "Images" in out
    assert "win11" in out
    # Square brackets in a value are text, not rich markup.
    assert "ubuntu[lts]" in out
    assert "yes" in out
    assert "no" in out
    assert "/d/images" not in out


def test_emit_json_carries_every_key(capsys: pytest.CaptureFixture[str]) -> None:
    emit(ROWS, ["name"], as_json=True)

    assert json.loads(capsys.readouterr().out) == [
        {"name": "win11", "versions": 2, "path": "/d/images/win11", "golden": True},
        {"name": "ubuntu[lts]", "versions": 1, "path": None, "golden": False},
    ]


def test_emit_empty_table_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    emit([], ["name"], as_json=False)

    assert "(none)" in capsys.readouterr().out


def test_emit_empty_json_is_an_empty_list(capsys: pytest.CaptureFixture[str]) -> None:
    emit([], ["name"], as_json=True)

    assert json.loads(capsys.readouterr().out) == []


def test_emit_one_flattens_nested_mappings(capsys: pytest.CaptureFixture[str]) -> None:
    when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    emit_one(
        {"name": "pc01", "overlay": {"size": 42, "path": Path("/o")}, "created": when},
        as_json=False,
    )

    out = capsys.readouterr().out
    assert "overlay.size" in out
    assert "42" in out
    assert "2025-01-02T03:04:05+00:00" in out


def test_emit_one_json(capsys: pytest.CaptureFixture[str]) -> None:
    when = datetime(2025, 1, 2, tzinfo=UTC)
    emit_one({"name": "pc01", "created": when, "color": Color.RED}, as_json=True)

    assert json.loads(capsys.readouterr().out) == {
        "name": "pc01",
        "created": "2025-01-02T00:00:00+00:00",
        "color": "red",
    }


def test_json_refuses_unknown_types_instead_of_guessing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(TypeError, match="object"):
        emit_one({"thing": object()}, as_json=True)


def test_fail_prints_one_line_on_stderr_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    long_message = "disk pc01 is in use by 10.0.0.7 " + "x" * 200

    with pytest.raises(typer.Exit) as caught:
        fail(long_message)

    assert caught.value.exit_code == EXIT_FAILURE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"error: {long_message}\n"


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (20 * 1024**3, "20.0 GiB"),
        (3 * 1024**5, "3072.0 TiB"),
    ],
)
def test_human_size(size: int, text: str) -> None:
    assert human_size(size) == text
