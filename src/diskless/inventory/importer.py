"""Machines from files: the TOML machines file of ``boot.machines_file``, and CSV for bulk adds.

Both turn into :class:`MachineSpec` lists that :meth:`Inventory.import_machines` writes in one
transaction. Errors name the file, the entry (TOML ``machine[N]`` or CSV ``line N``) and the
field, so an operator can fix the file.

CSV: the first row names the columns, in any order; ``mac`` and ``hostname`` are required::

    mac,hostname,ip,group,image,version,mode,boot,initiator_name,chap_secret,notes
    52:54:00:18:00:10,seat-01,198.18.0.170,classroom,win11,,reset-on-boot,,,,front row
    52:54:00:18:00:11,seat-02,,classroom,,,,local,,,

``boot`` is a boot target kind without parameters (``sanboot``, ``local``, ``netbootxyz``) or a
JSON object (``{"kind": "linux", "kernel": "debian/linux"}``). Empty cells mean "not set" (the
group's value applies).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from diskless.boot.machines import load_machine_book
from diskless.errors import ConfigError

from .errors import InvalidFieldError
from .records import MachineSpec, field_error

__all__ = [
    "CSV_COLUMNS",
    "specs_from_csv",
    "specs_from_csv_file",
    "specs_from_machines_file",
]

CSV_COLUMNS = (
    "mac",
    "hostname",
    "ip",
    "group",
    "image",
    "version",
    "mode",
    "boot",
    "initiator_name",
    "chap_secret",
    "notes",
)
# CSV column → MachineSpec field, where they differ (short names for spreadsheets).
_CSV_FIELDS = {"version": "image_version", "mode": "disk_mode"}
_MAX_CSV_ROWS = 100_000


def specs_from_machines_file(path: Path) -> list[MachineSpec]:
    """The machines of a TOML machines file, with the file's own validation and errors."""
    book = load_machine_book(path)
    specs: list[MachineSpec] = []
    for index, machine in enumerate(book):
        values: dict[str, Any] = {
            "mac": machine.mac,
            "hostname": machine.hostname,
            "ip": machine.ip,
            "group": machine.group,
            "boot": machine.boot,
            "next_boot_once": machine.next_boot_once,
            "initiator_name": machine.initiator_name,
            "chap_secret": machine.chap_secret,
        }
        try:
            specs.append(MachineSpec.model_validate(values))
        except ValidationError as exc:
            error = field_error(exc, prefix=f"machine[{index}].")
            raise ConfigError(f"{path}: {error}") from exc
    return specs


def _boot_cell(cell: str) -> Any:
    if cell.startswith("{"):
        try:
            return json.loads(cell)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON: {exc.msg}") from exc
    return {"kind": cell}


def specs_from_csv(text: str, *, source: str = "CSV") -> list[MachineSpec]:
    """Parse CSV text (first row: column names) into specs; errors name ``line N.field``."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = [name.strip().lower() for name in reader.fieldnames or ()]
    if not columns:
        raise InvalidFieldError(f"{source}: line 1", "no header row (mac,hostname,...)")
    unknown = [name for name in columns if name not in CSV_COLUMNS]
    if unknown:
        raise InvalidFieldError(
            f"{source}: line 1.{unknown[0]}",
            f"unknown column (known: {', '.join(CSV_COLUMNS)})",
        )
    for required in ("mac", "hostname"):
        if required not in columns:
            raise InvalidFieldError(f"{source}: line 1.{required}", "missing column")
    reader.fieldnames = columns
    specs: list[MachineSpec] = []
    for row in reader:
        line = reader.line_num
        if len(specs) >= _MAX_CSV_ROWS:
            raise InvalidFieldError(f"{source}: line {line}", f"more than {_MAX_CSV_ROWS} rows")
        if None in row:
            raise InvalidFieldError(f"{source}: line {line}", "more cells than columns")
        cells = {name: (value or "").strip() for name, value in row.items() if name is not None}
        if not any(cells.values()):
            continue
        values: dict[str, Any] = {}
        for name, cell in cells.items():
            if not cell:
                continue
            if name == "boot":
                try:
                    values["boot"] = _boot_cell(cell)
                except ValueError as exc:
                    raise InvalidFieldError(f"{source}: line {line}.boot", str(exc)) from exc
            else:
                values[_CSV_FIELDS.get(name, name)] = cell
        try:
            specs.append(MachineSpec.model_validate(values))
        except ValidationError as exc:
            error = field_error(exc)
            column = next(
                (csv_name for csv_name, spec in _CSV_FIELDS.items() if spec == error.field),
                error.field,
            )
            raise InvalidFieldError(f"{source}: line {line}.{column}", error.reason) from exc
    return specs


def specs_from_csv_file(path: Path) -> list[MachineSpec]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: CSV file not found") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text") from exc
    return specs_from_csv(text, source=str(path))
