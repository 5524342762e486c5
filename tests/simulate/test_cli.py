from __future__ import annotations

from pathlib import Path

import msgspec
from click.testing import CliRunner

from vramgate.cli import main
from vramgate.simulate import encode_trace

from ._helpers import arrivals

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path) -> Path:
    path = tmp_path / "t.jsonl"
    path.write_bytes(encode_trace(arrivals(6, every=10.0)))
    return path


def test_all_policies_side_by_side(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["simulate", "--trace", str(write(tmp_path)), "--devices", "RTX4090-24GB"])
    assert result.exit_code == 0, result.output
    for name in ("vramgate", "serial", "check-then-run", "retry-on-oom", "seed", "bound"):
        assert name in result.output


def test_json_is_the_same_for_the_same_seed(tmp_path: Path) -> None:
    args = [
        "simulate",
        "--trace",
        str(write(tmp_path)),
        "--devices",
        "2xH100-80GB",
        "--policy",
        "vramgate,serial",
        "--json",
        "--faults",
        "all",
        "--seed",
        "5",
    ]
    first = CliRunner().invoke(main, args)
    again = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    rows = [msgspec.json.decode(line) for line in first.output.splitlines()]
    assert [r["policy"] for r in rows] == ["vramgate", "serial"]
    strip = [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]
    assert strip == [
        {k: v for k, v in msgspec.json.decode(line).items() if k != "wall_s"} for line in again.output.splitlines()
    ]


def test_plot_writes_a_png(tmp_path: Path) -> None:
    png = tmp_path / "m.png"
    result = CliRunner().invoke(
        main,
        [
            "simulate",
            "--trace",
            str(write(tmp_path)),
            "--devices",
            "RTX4090-24GB",
            "--policy",
            "vramgate",
            "--plot",
            str(png),
        ],
    )
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_trace_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path)
    path.write_bytes(path.read_bytes() + b'{"type": "outside", "at": 1, "device": 0, "mb": "lots", "until": 5}\n')
    result = CliRunner().invoke(main, ["simulate", "--trace", str(path), "--devices", "RTX4090-24GB"])
    assert result.exit_code == 2
    assert "line 7" in result.output
    assert "$.mb" in result.output


def test_bad_devices_and_policy(tmp_path: Path) -> None:
    path = str(write(tmp_path))
    result = CliRunner().invoke(main, ["simulate", "--trace", path, "--devices", "3xB300"])
    assert result.exit_code == 2
    assert "unknown GPU" in result.output
    result = CliRunner().invoke(main, ["simulate", "--trace", path, "--devices", "24GB", "--policy", "fifo"])
    assert result.exit_code == 2
    assert "unknown policy" in result.output


def test_shipped_traces_decode() -> None:
    from vramgate.simulate import load_trace

    for path in sorted((ROOT / "bench" / "traces").glob("*.jsonl")):
        assert load_trace(path).arrivals
