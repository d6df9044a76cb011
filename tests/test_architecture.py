"""The architecture holds: a pure core, small modules, a testing kit that behaves as a stream.

The import layers themselves are enforced by import-linter (``nox -s lint``,
contracts in pyproject.toml); this checks what it does not.
"""

from __future__ import annotations

import ast
import pathlib

import trio
import trio.testing

from genesis_trio.testing import FaultyStream, LinkFaults

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "genesis_trio"
CORE_MAY_IMPORT = {"attrs", "msgpack", "orjson", "wsproto", "__future__"}
"""Third-party (and future) imports the sans-IO core may use; all else is stdlib or itself."""
IO_MODULES = {"trio", "anyio", "socket", "ssl", "asyncio", "threading", "sqlite3", "select"}


def imported_modules(path: pathlib.Path) -> set[str]:
    """Modules imported at run time (``if TYPE_CHECKING:`` blocks are types only)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_core_does_no_io() -> None:
    for path in sorted((PACKAGE / "_core").glob("*.py")):
        used = imported_modules(path)
        assert not used & IO_MODULES, f"{path.name} imports {sorted(used & IO_MODULES)}"
        third_party = {m for m in used if m not in __import__("sys").stdlib_module_names}
        assert third_party <= CORE_MAY_IMPORT, f"{path.name} imports {sorted(third_party)}"


def test_no_module_is_far_over_400_lines() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = len(path.read_text().splitlines())
        assert lines <= 450, f"{path.relative_to(PACKAGE)} has {lines} lines: split it by job"


async def test_faulty_stream_is_a_half_closeable_stream() -> None:
    async def pair() -> tuple[FaultyStream, trio.abc.HalfCloseableStream]:
        left, right = trio.testing.memory_stream_pair()
        return FaultyStream(left, LinkFaults()), right

    async def clogged() -> tuple[FaultyStream, trio.abc.HalfCloseableStream]:
        left, right = trio.testing.lockstep_stream_pair()
        return FaultyStream(left, LinkFaults()), right

    await trio.testing.check_half_closeable_stream(pair, clogged)
