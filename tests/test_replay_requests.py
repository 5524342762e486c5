"""The request core in the log: the demo's log replays identically with the gate's request core among its cores, and
a tampered request-core decision is reported where it is."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from vramgate.cli import main
from vramgate.replay import read_log, replay


def test_the_demo_log_holds_and_replays_the_request_core(small_demo_log: Path) -> None:
    header, _ = read_log(small_demo_log)
    spec = header.core("gate")
    assert spec is not None
    assert spec.kind == "request"
    assert spec.config["request"]["admission"]["queue_limit"] >= 1
    outcome = replay(small_demo_log)
    assert outcome.identical, outcome.summary()
    assert "gate" in outcome.cores


def test_a_tampered_request_core_decision_is_a_divergence(small_demo_log: Path, tmp_path: Path) -> None:
    lines = small_demo_log.read_text().splitlines()
    tampered, seq = [], None
    for line in lines:
        record = json.loads(line)
        message = record.get("message", {})
        if seq is None and record.get("sender") == "gate" and message.get("type") == "SubmitRequest":
            message["priority"] = message.get("priority", 0) + 7  # not what the request asked for
            seq = record["seq"]
            line = json.dumps(record, separators=(",", ":"))
        tampered.append(line)
    assert seq is not None
    log = tmp_path / "tampered.jsonl"
    log.write_text("\n".join(tampered) + "\n")
    result = CliRunner().invoke(main, ["replay", str(log)])
    assert result.exit_code == 1, result.output
    assert f"divergence at seq {seq} (actor 'gate')" in result.output
    assert "SubmitRequest" in result.output
