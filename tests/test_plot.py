"""Timeline plots of a recorded log: drawn from the demo's own log, a valid PNG of the size it says."""

from __future__ import annotations

import struct
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner
from rich.console import Console

from vramgate.cli import main
from vramgate.demo import demo_requests, run_demo
from vramgate.plot import RunBar, figure_size, lanes, plot_timeline, read_timeline


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.fixture(scope="module")
def demo_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """The demo's log: its first five requests, time compressed 10,000x, on its simulated GPUs."""
    path = tmp_path_factory.mktemp("plot") / "demo.jsonl"
    requests = demo_requests()[:5]

    async def go() -> dict[str, int]:
        result = await run_demo(
            log_path=str(path),
            simulate=True,
            time_scale=1e-4,
            requests=requests,
            console=Console(quiet=True),
            live=False,
        )
        states: dict[str, int] = {}
        for row in result.rows:
            states[row.state] = states.get(row.state, 0) + 1
        return states

    return path, anyio.run(go)


def test_timeline_of_the_demo_log(demo_log: tuple[Path, dict[str, int]]) -> None:
    path, states = demo_log
    timeline = read_timeline(path)
    assert [d.name for d in timeline.devices] == ["RTX4090-24GB", "H100-80GB"]
    assert all(d.used for d in timeline.devices)
    assert all(d.margin_mb is not None and 0 < d.margin_mb < d.capacity_mb for d in timeline.devices)
    counts = timeline.counts()
    ran = sum(counts.get(k, 0) for k in ("admitted", "optimized", "oom", "error", "cancelled"))
    assert ran == states.get("completed", 0) + states.get("failed", 0)
    assert all(run.end is not None and run.end >= run.start for run in timeline.runs)
    for track in timeline.devices:
        assert track.reserved[-1][1] == 0  # every reservation returned by the end
        assert max(v for _, v in track.reserved) <= track.capacity_mb - (track.margin_mb or 0)


def test_plot_is_a_png_of_the_expected_size(demo_log: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    path, _ = demo_log
    timeline = read_timeline(path)
    out = tmp_path / "timeline.png"
    size = plot_timeline(timeline, out, width_px=1200)
    assert size == figure_size(timeline, width_px=1200)
    assert png_size(out) == size
    assert size[0] == 1200
    assert size[1] > 400


def test_plot_command(demo_log: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    path, _ = demo_log
    out = tmp_path / "t.png"
    result = CliRunner().invoke(main, ["plot", str(path), "-o", str(out), "--width", "900"])
    assert result.exit_code == 0, result.output
    assert "2 devices" in result.output
    assert png_size(out)[0] == 900
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"type": "nonsense"}\n')
    failed = CliRunner().invoke(main, ["plot", str(broken), "-o", str(tmp_path / "x.png")])
    assert failed.exit_code != 0
    assert "LogHeader" in failed.output or "$" in failed.output


def test_lanes_never_overlap() -> None:
    spans = [(0.0, 5.0), (1.0, 2.0), (2.0, 3.0), (4.0, 9.0), (5.0, 6.0), (8.5, None)]
    runs = [
        RunBar(request_id=str(i), device=0, start=s, end=e, kind="admitted", reservation_mb=1)
        for i, (s, e) in enumerate(spans)
    ]
    assigned = lanes(runs, end=10.0)
    for i, a in enumerate(runs):
        for j, b in enumerate(runs[:i]):
            if assigned[i] == assigned[j]:
                assert (b.end if b.end is not None else 10.0) <= a.start
    assert assigned == [0, 1, 1, 1, 0, 0]  # never more than two at once


def test_the_timeline_of_an_appended_log_shows_every_run(demo_log: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    path, _ = demo_log
    once = read_timeline(path)
    twice = tmp_path / "restarted.jsonl"
    twice.write_bytes(path.read_bytes() * 2)  # the same run again, appended as a restarted process does
    timeline = read_timeline(twice)
    assert len(timeline.runs) == 2 * len(once.runs)
    assert timeline.counts() == {kind: 2 * n for kind, n in once.counts().items()}
    assert timeline.restarts == [once.duration_s]
    assert timeline.duration_s == pytest.approx(2 * once.duration_s)
    second = [run for run in timeline.runs if run.start >= once.duration_s]
    assert len(second) == len(once.runs)  # the second run's bars follow the first run's, on the same time axis
    for track in timeline.devices:
        assert len(track.used) == 2 * len(next(d for d in once.devices if d.index == track.index).used)
        times = [t for t, _ in track.reserved]
        assert times == sorted(times)
        assert (once.duration_s, 0) in track.reserved  # nothing reserved when the new process starts
    out = tmp_path / "t.png"
    size = plot_timeline(timeline, out, width_px=900)
    assert png_size(out) == size
