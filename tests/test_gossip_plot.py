"""`cpctl gossip plot` without a cluster: the PNG it draws from rounds (accuracy, loss, consensus),
and its refusals (a file that is not a PNG, matplotlib missing) before it reaches any server."""

from __future__ import annotations

import struct
import subprocess
import sys
import tomllib
from pathlib import Path

from controlplane.cli.gossip import MATPLOTLIB_REQUIREMENT, PLOT_DPI, PLOT_SIZE_IN, plot_rounds
from controlplane.client import NodeMetrics, Round, RoundState, TrainingMetrics
from controlplane.client._gossip import Pair

ROOT = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def round_(number: int, *, probe: bool = False, running: bool = False, metrics: bool = True) -> Round:
    records = tuple(
        NodeMetrics(node, TrainingMetrics(loss=2.0 / number + k * 0.1, accuracy=min(1.0, 0.1 * number + k * 0.05)))
        for k, node in enumerate(("a", "b", "c", "d"))
    )
    mean_loss = sum(r.metrics.loss or 0.0 for r in records) / len(records)
    mean_accuracy = sum(r.metrics.accuracy or 0.0 for r in records) / len(records)
    return Round(
        group="g",
        number=number,
        participants=("a", "b", "c", "d"),
        matrix_version=1,
        seed=number,
        policy="probe" if probe else "saps",
        pairs=(Pair("a", "b"), Pair("c", "d")),
        idle=(),
        spec=None,
        started_unix_ms=1000 * number,
        deadline_unix_ms=1000 * number + 5000,
        state=RoundState.RUNNING if running else RoundState.DONE,
        reported=("a", "b", "c", "d"),
        failures=(),
        bytes_total=4096,
        bottleneck_bps=1e6,
        seconds_max=0.1,
        ended_unix_ms=0 if running else 1000 * number + 500,
        create_revision=number,
        mod_revision=number,
        mixed=0 if probe else 4,
        mix_delta_sq=0.0 if probe else 1.0 / number**2,
        node_metrics=records if metrics and not probe else (),
        metrics=TrainingMetrics(loss=mean_loss, accuracy=mean_accuracy) if metrics and not probe else None,
    )


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, data[:8]
    assert data[12:16] == b"IHDR"  # the first chunk, right after the signature and its length
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_the_plot_is_a_png_of_the_finished_training_rounds(tmp_path: Path) -> None:
    training = [round_(n) for n in range(3, 12)]
    rounds = [round_(1, probe=True), round_(2, probe=True), *training, round_(12, running=True)]
    out = tmp_path / "rounds.png"
    assert plot_rounds(rounds, out, "gossip group g") == 9  # probe and running rounds are left out
    assert png_size(out) == (int(PLOT_SIZE_IN[0] * PLOT_DPI), int(PLOT_SIZE_IN[1] * PLOT_DPI))
    assert out.stat().st_size > 10_000  # three panels with lines, labels and bands, not an empty canvas


def test_rounds_without_metrics_still_plot_their_consensus(tmp_path: Path) -> None:
    out = tmp_path / "plain.png"
    assert plot_rounds([round_(n, metrics=False) for n in range(1, 6)], out, "no metrics") == 5
    assert png_size(out) == (int(PLOT_SIZE_IN[0] * PLOT_DPI), int(PLOT_SIZE_IN[1] * PLOT_DPI))


def run_plot(*args: str, block_matplotlib: bool = False) -> subprocess.CompletedProcess[str]:
    probe = (
        "import sys\n"
        + ("sys.modules['matplotlib'] = None\n" if block_matplotlib else "")
        + "from controlplane.cli import main\n"
        + f"sys.argv = ['cpctl', 'gossip', 'plot', *{list(args)!r}]\n"
        + "main()\n"
    )
    # The callers name endpoints nobody listens on: every case here is refused before any connection.
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_the_command_refuses_a_file_that_is_not_a_png_and_says_when_matplotlib_is_missing(tmp_path: Path) -> None:
    wrong = run_plot("g", "--out", str(tmp_path / "rounds.txt"), "--endpoints", "127.0.0.1:9")
    assert wrong.returncode == 2 and "ending in .png" in wrong.stderr, wrong.stderr
    nowhere = run_plot("g", "--out", str(tmp_path / "missing" / "r.png"), "--endpoints", "127.0.0.1:9")
    assert nowhere.returncode == 2 and "does not exist" in nowhere.stderr, nowhere.stderr
    missing = run_plot("g", "--out", str(tmp_path / "r.png"), "--endpoints", "127.0.0.1:9", block_matplotlib=True)
    assert missing.returncode == 1 and "pip install 'controlplane[plot]'" in missing.stderr, missing.stderr
    assert "Traceback" not in missing.stderr
    assert not (tmp_path / "r.png").exists()


def test_the_requirement_the_message_names_is_the_projects() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["plot"] == [MATPLOTLIB_REQUIREMENT]  # an extra: running a cluster does not need matplotlib
    assert "matplotlib" not in str(extras["all"]) and "matplotlib" not in str(extras["server"])
