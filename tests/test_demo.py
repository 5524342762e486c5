"""The demo, the product's main job: it runs, ends every request, and its log replays to the same decisions."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import anyio
import pytest
from rich.console import Console

from vramgate._live import memory
from vramgate.demo import demo_requests, run_demo, summary_table
from vramgate.replay import replay

pytestmark = pytest.mark.anyio


async def test_demo_runs_and_its_log_replays(tmp_path: Path) -> None:
    log = tmp_path / "demo.jsonl"
    burst = demo_requests()
    assert len(burst) == 20
    chosen = [burst[i] for i in (0, 1, 2, 4, 6, 8)]  # includes the request that cannot fit
    console = Console(file=io.StringIO(), width=200)
    result = await run_demo(
        log_path=str(log), simulate=True, time_scale=0.0005, requests=chosen, console=console, live=False
    )
    console.print(summary_table(result))
    assert "demo-01" in console.file.getvalue()  # type: ignore[attr-defined]
    narrow = Console(file=io.StringIO(), width=80, color_system=None)
    narrow.print(summary_table(result, 80))
    text: str = narrow.file.getvalue()  # type: ignore[attr-defined]
    assert "…" not in text
    for row in result.rows:  # each row's id and end on one line, its reason whole (wrapped), figures with units
        assert re.search(rf"^{row.request_id}\s+{row.state}\s", text, re.MULTILINE), text
        assert " ".join(row.reason.split()) in " ".join(text.split()) or row.state == "completed"
        if row.reservation_mb is not None:
            assert memory(row.reservation_mb) in text
            assert memory(row.reservation_mb).endswith(" GiB")
    states = [row.state for row in result.rows]
    assert states.count("rejected") == 1
    assert states.count("completed") == 5
    assert result.over_commits == 0
    rejected = next(row for row in result.rows if row.state == "rejected")
    assert "no plan within level 'none' fits" in rejected.reason
    assert all(
        row.peak_mb is not None and row.reservation_mb is not None for row in result.rows if row.device is not None
    )
    assert all(row.peak_mb <= row.reservation_mb for row in result.rows if row.peak_mb and row.reservation_mb)

    outcome = replay(log)
    assert outcome.identical, outcome.summary()
    assert set(outcome.cores) == {"gate", "estimator", "optimizer", "admission"}  # "gate": the request core
    assert outcome.outputs > 10

    # Alter one recorded decision: replay names it.
    lines = log.read_bytes().splitlines()
    for index, line in enumerate(lines):
        record = json.loads(line)
        if record.get("type") == "LogRecord" and record["message"]["type"] == "RequestAdmitted":
            record["message"]["reservation_mb"] += 1
            lines[index] = json.dumps(record).encode()
            altered_seq = record["seq"]
            break
    edited = tmp_path / "edited.jsonl"
    edited.write_bytes(b"\n".join(lines) + b"\n")
    diverged = replay(edited)
    assert not diverged.identical
    assert diverged.divergence is not None
    assert diverged.divergence.seq == altered_seq

    cli = await anyio.run_process([sys.executable, "-m", "vramgate", "replay", str(edited)], check=False)
    assert cli.returncode == 1
    assert f"divergence at seq {altered_seq}" in (cli.stdout + cli.stderr).decode()
