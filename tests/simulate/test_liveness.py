"""The vramgate policy on every shipped trace: every request ends (none stranded behind a plan that can never be
admitted), no lease is leaked, and the table shows failed and leaked figures."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vramgate.simulate import load_trace, parse_devices
from vramgate.simulate.report import render_table
from vramgate.simulate.run import simulate

TRACES = Path(__file__).resolve().parents[2] / "bench" / "traces"
SHIPPED = (
    ("burst-24gb.jsonl", "RTX4090-24GB"),
    ("mixed-8xh100.jsonl", "8xH100-80GB"),
    ("day-diurnal.jsonl", "2xH100-80GB,RTX4090-24GB"),
    ("mixed-hetero.jsonl", "2xH100-80GB,2xRTX4090-24GB"),
)


@pytest.mark.parametrize(("file", "devices"), SHIPPED)
def test_vramgate_ends_every_request_without_failures_or_leaks(file: str, devices: str) -> None:
    result, sim = simulate(load_trace(TRACES / file), parse_devices(devices), "vramgate")
    stranded = [job.request_id for job in sim.jobs if job.reason.startswith("stranded")]
    assert stranded == []
    assert result.failed == 0
    assert result.leaked_leases == 0
    assert result.terminal_violations == 0
    assert result.completed + result.rejected + result.cancelled + result.timed_out == result.requests


def test_burst_rejects_what_a_24gb_card_can_never_take_and_runs_the_rest() -> None:
    result, sim = simulate(load_trace(TRACES / "burst-24gb.jsonl"), parse_devices("RTX4090-24GB"), "vramgate")
    budget = 24_564 - 1_229 - sim.measured_other_mb(0)
    rejected = [job for job in sim.jobs if job.state == "rejected"]
    assert result.completed + len(rejected) == result.requests
    assert result.completed > 21  # before, 16 requests waited for good behind one that could never start
    for job in rejected:  # rejected as the gate rejects: with what the closest plan needs and where it fits
        assert re.search(r"needs [0-9][0-9.,]* (MiB|GiB)", job.reason), job.reason
    assert all(job.run is None or job.run.planned_mb <= budget for job in sim.jobs)


def test_the_table_shows_failed_and_leaked_figures() -> None:
    result, _ = simulate(load_trace(TRACES / "burst-24gb.jsonl"), parse_devices("RTX4090-24GB"), "vramgate")
    table = render_table([result])
    header = table.splitlines()[0]
    assert "failed" in header.replace("failed OOM", "")
    assert "leaked" in header
    markdown = render_table([result], markdown=True).splitlines()
    columns = [c.strip() for c in markdown[0].strip("|").split("|")]
    row = [c.strip() for c in markdown[2].strip("|").split("|")]
    assert row[columns.index("failed")] == str(result.failed)
    assert row[columns.index("leaked")] == str(result.leaked_leases)
