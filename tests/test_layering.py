"""Import rules that keep the layers apart, checked on the source with ``ast``.

Protocol logic and the disk engine are sans-I/O: they never own sockets or an event loop, so
they can be driven by tests, fuzzers and executor threads alike. Only the I/O shells may import
``asyncio``, ``socket`` or ``aiohttp``: ``*/endpoint.py`` modules, the ``http`` and ``api``
packages, ``runtime.py`` and the ``cli`` package. And only the command line itself may import
``diskless.cli``: nothing below it may print or exit on its own.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import diskless

SOURCE_ROOT = Path(diskless.__file__).parent
IO_MODULES = frozenset({"asyncio", "socket", "aiohttp"})


def _module_files() -> list[Path]:
    return sorted(SOURCE_ROOT.rglob("*.py"))


def _relative(path: Path) -> str:
    return path.relative_to(SOURCE_ROOT).as_posix()


def _imports(source: str, package: tuple[str, ...]) -> Iterator[tuple[int, str]]:
    """(line, dotted name) for every import in ``source``, a module of ``package``.

    Relative imports are resolved, and ``from a import b`` yields both ``a`` and ``a.b``, since
    ``b`` may be a submodule (``from diskless import cli``).
    """
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join((*base, node.module) if node.module else base)
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"


def _imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    package = ("diskless", *path.relative_to(SOURCE_ROOT).parent.parts)
    return _imports(path.read_text(encoding="utf-8"), package)


def _may_do_io(relative: str) -> bool:
    parts = relative.split("/")
    return (
        relative == "runtime.py" or parts[0] in {"cli", "http", "api"} or parts[-1] == "endpoint.py"
    )


def test_the_source_tree_is_found() -> None:
    assert (SOURCE_ROOT / "runtime.py").is_file()
    assert (SOURCE_ROOT / "storage").is_dir()


def test_only_io_shells_import_asyncio_or_sockets() -> None:
    violations = [
        f"{_relative(path)}:{line} imports {module}"
        for path in _module_files()
        if not _may_do_io(_relative(path))
        for line, module in _imported_modules(path)
        if module.split(".")[0] in IO_MODULES
    ]

    assert violations == []


@pytest.mark.parametrize("path", sorted((SOURCE_ROOT / "storage").rglob("*.py")), ids=_relative)
def test_storage_never_imports_asyncio_or_socket(path: Path) -> None:
    imported = {module.split(".")[0] for _, module in _imported_modules(path)}

    assert imported.isdisjoint(IO_MODULES)


def test_only_the_command_line_imports_the_cli_package() -> None:
    violations = [
        f"{_relative(path)}:{line} imports {module}"
        for path in _module_files()
        if _relative(path).split("/")[0] not in {"cli", "__main__.py"}
        for line, module in _imported_modules(path)
        if module == "diskless.cli" or module.startswith("diskless.cli.")
    ]

    assert violations == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from . import errors", "diskless.storage.errors"),
        ("from .qcow2 import image", "diskless.storage.qcow2.image"),
        ("from .. import cli", "diskless.cli"),
        ("from diskless import cli", "diskless.cli"),
        ("import asyncio.events", "asyncio.events"),
    ],
)
def test_the_checker_resolves_imports(source: str, expected: str) -> None:
    # Guards the guard: each spelling of an import must resolve to the module it names.
    modules = {module for _, module in _imports(source, ("diskless", "storage"))}

    assert expected in modules
