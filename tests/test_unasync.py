"""scripts/unasync.py rewrites keywords and names, never strings or comments, and keeps the layout."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

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
    """The same check as make check-proto, by syntax trees (no formatter needed): make test-fast
    catches a stale twin too."""
    made = unasync.unasync(unasync.SOURCE.read_text())
    assert ast.dump(ast.parse(made)) == ast.dump(ast.parse(unasync.TARGET.read_text())), "run make sdk"


@pytest.mark.parametrize(
    "source",
    [
        '"""doc."""\nimport asyncio\n',
        '"""doc."""\nasync def f():\n    await asyncio.sleep(1)\n',
        '"""doc."""\nclass A:\n    async def __aenter__(self): ...\n',
        '"""doc."""\nasync def f(x):\n    await x.aclose()\n',
        '"""doc."""\nfrom collections.abc import Callable, Awaitable\n',
        '"""doc."""\nX = Callable[[Awaitable[int]], None]\n',
        '"""doc."""\nasync def f(x):\n    return f"{await x}"\n',
        "# a comment first\nx = 1\n",
    ],
)
def test_what_the_rules_cannot_translate_is_refused(source: str) -> None:
    with pytest.raises(unasync.Unsupported):
        unasync.unasync(source)


def test_a_form_feed_does_not_shift_the_edits() -> None:
    source = '"""doc."""\n# \x0c a page break\nasync def f(x):\n    return await x\n'
    assert unasync.unasync(source).endswith("def f(x):\n    return x\n")
