"""README.md's examples, run top to bottom against a real `cpctl dev` cluster (doc tests).

Every fenced ``sh``/``bash`` block runs with ``bash -e`` and every ``python`` block with this
interpreter, in order, in one scratch directory that plays the repository directory: the cluster's
data directory is ``./.data`` there, as `make run` makes it, so commands find the endpoints and the
admin credential the way the README says. The venv's bin is first on PATH; HOME is a scratch one
(no personal client config leaks in). Each block runs in its own process group, which is stopped
when the block ends (so ``cpctl agent ... &`` inside a block ends with it, as ``kill %1`` would).

The cluster gets its own ports (``--base-port``), so the test runs next to a `make run`: the
README's default addresses (127.0.0.1:7101.., :7201.., :7301.., and the gateway's 127.0.0.1:8080,
the agent's 127.0.0.1:7400) are rewritten to the test's own before a block runs.

An HTML comment on the line right before a block changes how it runs (docs/testing.md):

* ``<!-- doctest: skip (REASON) -->``: not run; the reason is required.
* ``<!-- doctest: background (REASON) -->``: a daemon; started, left running while the blocks
  after it run, stopped at the end. ``wait for "TEXT"`` in the reason makes the next block wait
  until TEXT appears in its output.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import free_base_port, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

README = Path(__file__).resolve().parents[2] / "README.md"
LANGUAGES = {"sh": "sh", "bash": "sh", "python": "python"}
DIRECTIVE = re.compile(r"<!--\s*doctest:\s*(skip|background)\b\s*(.*?)\s*-->")
BLOCK_TIMEOUT_S = 120.0
DEV_UP_TIMEOUT_S = 90.0


@dataclass
class Block:
    line: int  # of the opening fence, 1-based
    language: str  # "sh" or "python"
    code: str
    mode: str  # "run", "skip" or "background"
    reason: str

    @property
    def wait_for(self) -> str | None:
        found = re.search(r'wait for "([^"]+)"', self.reason)
        return found.group(1) if found else None


def readme_blocks(text: str) -> list[Block]:
    """The README's sh, bash and python blocks in order, each with its doctest directive."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if fence is None:
            i += 1
            continue
        start, language = i, fence.group(1)
        end = start + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        mode, reason = "run", ""
        if start > 0 and (directive := DIRECTIVE.search(lines[start - 1])):
            mode, reason = directive.group(1), directive.group(2).strip("() ")
        if language in LANGUAGES:
            blocks.append(Block(start + 1, LANGUAGES[language], "\n".join(lines[start + 1 : end]) + "\n", mode, reason))
        i = end + 1
    return blocks


def test_readme_blocks_are_parsed_with_their_directives() -> None:
    text = (
        "intro\n```sh\necho one\n```\n<!-- doctest: skip (needs a GPU) -->\n```python\nprint(2)\n```\n"
        '<!-- doctest: background (a daemon; wait for "listening") -->\n```bash\nserve\n```\n```toml\nx = 1\n```\n'
    )
    blocks = readme_blocks(text)
    assert [(b.line, b.language, b.mode) for b in blocks] == [
        (2, "sh", "run"),
        (6, "python", "skip"),
        (10, "sh", "background"),
    ]
    assert blocks[1].reason == "needs a GPU"
    assert blocks[2].wait_for == "listening"
    assert blocks[0].code == "echo one\n"


def test_every_skip_in_the_readme_says_why() -> None:
    for block in readme_blocks(README.read_text()):
        if block.mode != "run":
            assert block.reason, f"README.md line {block.line}: a doctest {block.mode} needs a reason"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the block's process group (what Ctrl-C or `kill %1` does), SIGKILL if it lingers."""
    for signum, grace in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            return
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            continue
        # The leader of the group is gone; its children (a `cmd &`) may not be yet.
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


class Scratch:
    """The directory the README's commands run in, with the dev cluster in ./.data."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.home.mkdir()
        self.base_port = free_base_port(22000)
        self.gateway_port = _free_port()
        self.agent_port = _free_port()
        bin_dir = str(Path(sys.executable).parent)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CP_")}
        self.env.update(
            PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            HOME=str(self.home),
            PYTHONPATH=os.pathsep.join(p for p in [str(README.parent), os.environ.get("PYTHONPATH", "")] if p),
            MPLBACKEND="Agg",
        )
        self.background: list[tuple[Block, subprocess.Popen[bytes], Path]] = []

    def localize(self, code: str) -> str:
        """The README's default addresses, moved to this test's ports."""

        def client_or_peer(match: re.Match[str]) -> str:
            return f"127.0.0.1:{self.base_port + (int(match.group(1)) - 1) * 100 + int(match.group(2))}"

        code = re.sub(r"127\.0\.0\.1:7([123])0(\d)", client_or_peer, code)
        code = code.replace("127.0.0.1:8080", f"127.0.0.1:{self.gateway_port}")
        return code.replace("127.0.0.1:7400", f"127.0.0.1:{self.agent_port}")

    def command(self, block: Block) -> list[str]:
        script = self.root / f"block-{block.line}.{'py' if block.language == 'python' else 'sh'}"
        script.write_text(self.localize(block.code))
        return [sys.executable, str(script)] if block.language == "python" else ["bash", "-e", str(script)]

    def start(self, block: Block) -> subprocess.Popen[bytes]:
        log = self.root / f"block-{block.line}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                self.command(block),
                cwd=self.root,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if block.mode == "background":
            self.background.append((block, process, log))
        return process

    def run(self, block: Block) -> tuple[int | None, str]:
        """Run a block to its end (None: it timed out); its output."""
        process = self.start(block)
        try:
            code: int | None = process.wait(BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            _stop_group(process)
        return code, (self.root / f"block-{block.line}.log").read_text(errors="replace")

    def start_background(self, block: Block) -> None:
        """Start a daemon block; wait for its ready text if it names one; it must still run."""
        process = self.start(block)
        log = self.root / f"block-{block.line}.log"
        ready = block.wait_for
        if ready is not None:
            wait_until(
                lambda: ready in log.read_text(errors="replace") or process.poll() is not None,
                BLOCK_TIMEOUT_S,
                f'README.md line {block.line} (background) to print "{ready}"',
                detail=lambda: log.read_text(errors="replace"),
            )
        assert process.poll() is None, (
            f"README.md line {block.line}: the background command exited with status {process.returncode}:\n"
            f"{block.code}\n--- output ---\n{log.read_text(errors='replace')}"
        )

    def stop_background(self) -> None:
        # Every daemon is told at once (each takes a moment to leave), then each is waited for.
        for _, process, _ in self.background:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for _, process, _ in reversed(self.background):
            _stop_group(process)


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Scratch]:
    """`make run` in a scratch directory: `cpctl dev --servers 3 --data-dir .data --demo`, own ports."""
    place = Scratch(tmp_path)
    log = tmp_path / "dev.log"
    with open(log, "wb") as out:
        dev = subprocess.Popen(
            [sys.executable, "-m", "controlplane", "dev", "--servers", "3", "--data-dir", ".data", "--demo",
             "--base-port", str(place.base_port)],
            cwd=tmp_path, env=place.env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_until(
            lambda: "running;" in log.read_text(errors="replace") or dev.poll() is not None,
            DEV_UP_TIMEOUT_S,
            "cpctl dev to be up",
            detail=lambda: log.read_text(errors="replace"),
        )
        assert dev.poll() is None, f"cpctl dev exited:\n{log.read_text(errors='replace')}"
        yield place
    finally:
        place.stop_background()
        if dev.poll() is None:
            dev.send_signal(signal.SIGINT)
            try:
                dev.wait(60)
            except subprocess.TimeoutExpired:
                dev.kill()  # its servers die with it
                dev.wait(10)


def test_the_readme_runs_top_to_bottom_against_make_run(scratch: Scratch) -> None:
    blocks = readme_blocks(README.read_text())
    assert sum(b.mode == "run" for b in blocks) >= 8, "the README lost its examples, or the parser lost them"
    for block in blocks:
        if block.mode == "skip":
            continue
        if block.mode == "background":
            scratch.start_background(block)
            continue
        code, output = scratch.run(block)
        assert code == 0, (
            f"README.md line {block.line} ({block.language} block) "
            + ("timed out" if code is None else f"exited with status {code}")
            + f":\n{block.code}\n--- output ---\n{output}"
        )
