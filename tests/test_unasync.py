"""scripts/unasync.py rewrites keywords and names, never strings or comments, and keeps the layout."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "unasync.py"
spec = importlib.util.spec_from_file_location("unasync", SCRIPT)
assert spec is not None and spec.loader is not None
unasync = importlib.util.module_from_spec(spec)
spec.loader.exec_module(unasync)

SOURCE = '''"""The async module."""

from collections.abc import Awaitable, Callable
from typing import Any

AsyncUnary = Callable[[Any], Awaitable[Any]]


class AsyncThings:
    """Says "await the AsyncThings" in its docstring."""

    def __init__(self, unary: AsyncUnary) -> None:
        self._unary = unary

    async def get(self, key: str) -> str:
        # await stays in a comment, AsyncThings too
        async with self._lock:
            async for item in self._items():
                pass
        return await self._unary(AsyncThings.GET, "await")
'''

EXPECTED = '''from collections.abc import Callable
from typing import Any

SyncUnary = Callable[[Any], Any]


class Things:
    """Says "await the AsyncThings" in its docstring."""

    def __init__(self, unary: SyncUnary) -> None:
        self._unary = unary

    def get(self, key: str) -> str:
        # await stays in a comment, AsyncThings too
        with self._lock:
            for item in self._items():
                pass
        return self._unary(Things.GET, "await")
'''


def test_keywords_and_names_change_strings_and_comments_do_not() -> None:
    out = unasync.unasync(SOURCE)
    assert out.startswith(unasync.DOCSTRING)
    assert out.removeprefix(unasync.DOCSTRING).lstrip("\n") == EXPECTED


def test_the_committed_twin_is_what_the_script_makes() -> None:
    """The same check as make check-proto, less the formatting: every async method has its twin."""
    sync = unasync.TARGET.read_text()
    for line in unasync.SOURCE.read_text().splitlines():
        if line.lstrip().startswith("async def "):
            assert line.replace("async def ", "def ", 1).split("(")[0] in sync
