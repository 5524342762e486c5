"""The message log keeps what was accepted: restarts append, a kill -9 loses no decision, a full disk never stops
the gate, and the log stays bounded (rotation) while still replaying identically."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from vramgate.actors import Recorder
from vramgate.config import AdmissionSettings, DevicesConfig, GateConfig, MonitorConfig
from vramgate.errors import ConfigError, DoesNotFit
from vramgate.gate import CANCELLED_RUN, open_gate
from vramgate.messages import (
    GenerationRequest,
    LogHeader,
    LogStatistics,
    RequestAccepted,
    RequestEnded,
    RequestRejected,
    RunFinished,
)
from vramgate.metrics import GateMetrics
from vramgate.replay import read_log, replay
from vramgate.runners import SimulatedRun

pytestmark = pytest.mark.anyio

SMALL = GenerationRequest(model="ti2v-5B", width=832, height=480, frames=33, steps=10)


def _config(log: str, **keys: int) -> GateConfig:
    return GateConfig(
        devices=DevicesConfig(use_real_gpus=False, simulate=("H100-80GB",)),
        monitor=MonitorConfig(interval_s=0.02),
        admission=AdmissionSettings(ram_budget="256GiB"),
        log_path=log,
        **keys,  # type: ignore[arg-type]
    )


async def _serve(config: GateConfig, count: int) -> list[str]:
    """Run ``count`` requests through a gate; the states they ended in."""
    states: list[str] = []
    async with open_gate(config) as gate:
        gate.add_listener(lambda m: states.append(m.state) if isinstance(m, RequestEnded) else None)
        runner = SimulatedRun(gate.clock, time_scale=1e-4, min_seconds=0.005)
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for _ in range(count):
                    tg.start_soon(gate.run, SMALL, runner)
        await gate.wait_idle()
    return states


async def test_a_restart_appends_a_run_and_both_replay(tmp_path: Path) -> None:
    log = tmp_path / "gate.jsonl"
    await _serve(_config(str(log)), 3)
    first = log.read_bytes()
    await _serve(_config(str(log)), 2)
    data = log.read_bytes()
    assert data.startswith(first)  # nothing of the first run was erased
    result = replay(log)
    assert result.identical, result.summary()
    assert result.runs == 2
    assert "in 2 runs" in result.summary()


def _names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def _sizes(folder: Path) -> list[int]:
    return [path.stat().st_size for path in folder.iterdir()]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
async def test_a_full_disk_stops_recording_not_the_gate() -> None:
    async with open_gate(_config("/dev/full")) as gate:  # every write fails with ENOSPC
        metrics = GateMetrics(gate)
        states: list[str] = []
        gate.add_listener(lambda m: states.append(m.state) if isinstance(m, RequestEnded) else None)
        runner = SimulatedRun(gate.clock, time_scale=1e-4, min_seconds=0.005)
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for _ in range(40):
                    tg.start_soon(gate.run, SMALL, runner)
            await gate.wait_idle()
        stats = gate.statistics()
        text = metrics.render().decode()
    assert states == ["completed"] * 40
    assert stats.completed == 40
    assert stats.log is not None
    assert stats.log.degraded
    assert "No space left on device" in stats.log.error
    assert stats.log.lost > 40
    gauges = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert gauges["vramgate_log_degraded"] == 1.0


async def test_a_size_limit_rotates_the_log_and_the_chain_replays(tmp_path: Path) -> None:
    log = tmp_path / "gate.jsonl"
    await _serve(_config(str(log), log_max_bytes=20_000, log_backups=50), 12)
    assert len(_names(tmp_path)) > 2, "expected the log to rotate"
    assert max(_sizes(tmp_path)) < 20_000 + 16_384  # a segment ends with the record that passed the limit
    result = replay(log)
    assert result.identical, result.summary()
    assert result.runs == 1
    assert result.skipped == 0


async def test_rotation_keeps_a_bounded_number_of_files(tmp_path: Path) -> None:
    log = tmp_path / "gate.jsonl"
    await _serve(_config(str(log), log_max_bytes=10_000, log_backups=2), 12)
    assert _names(tmp_path) == ["gate.jsonl", "gate.jsonl.1", "gate.jsonl.2"]
    result = replay(log)  # the run's first segment was rotated away: what is left cannot be replayed from its start
    assert result.identical
    assert result.runs == 0
    assert result.skipped > 0
    assert "skipped" in result.summary()


CHILD = textwrap.dedent(
    """
    import sys
    import time
    import anyio
    from vramgate.config import AdmissionSettings, DevicesConfig, GateConfig, MonitorConfig
    from vramgate.gate import open_gate
    from vramgate.messages import GenerationRequest, RequestEnded
    from vramgate.runners import SimulatedRun

    async def main() -> None:
        config = GateConfig(
            devices=DevicesConfig(use_real_gpus=False, simulate=("H100-80GB",)),
            monitor=MonitorConfig(interval_s=0.02),
            admission=AdmissionSettings(ram_budget="256GiB"),
            log_path=sys.argv[1],
        )
        request = GenerationRequest(model="ti2v-5B", width=832, height=480, frames=33, steps=10)

        told = []

        def tell(message: object) -> None:
            if isinstance(message, RequestEnded):
                told.append(message.request_id)
                print(message.request_id, message.state, flush=True)
                if len(told) == 25:
                    time.sleep(120)  # freeze right after telling: the kill comes now

        async with open_gate(config) as gate:
            gate.add_listener(tell)
            runner = SimulatedRun(gate.clock, time_scale=1e-4, min_seconds=0.01)
            async with anyio.create_task_group() as tg:
                for _ in range(10_000):
                    tg.start_soon(gate.run, request, runner)
                    await anyio.sleep(0.002)

    anyio.run(main)
    """
)


def test_a_kill_9_loses_no_completion_the_process_acted_on(tmp_path: Path) -> None:
    log = tmp_path / "gate.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    told: list[str] = []
    with subprocess.Popen([sys.executable, "-c", CHILD, str(log)], stdout=subprocess.PIPE, env=env, text=True) as child:
        assert child.stdout is not None
        try:
            for line in child.stdout:
                request_id, state = line.split()
                assert state == "completed"
                told.append(request_id)
                if len(told) == 25:
                    break
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
    assert child.returncode == -signal.SIGKILL
    _, records = read_log(log)
    ended = {r.message.request_id for r in records if isinstance(r.message, RequestEnded)}
    assert set(told) <= ended  # every completion the process told anyone about is in the log
    result = replay(log)
    assert result.identical, result.summary()
    assert result.unclosed == 1  # the run was cut short, and the replay says so
    # A record lost from the middle is not "identical": the gap is found.
    lines = log.read_bytes().split(b"\n")
    del lines[len(lines) // 2]
    log.write_bytes(b"\n".join(lines))
    with pytest.raises(Exception, match="missing"):
        replay(log)


async def test_a_log_path_that_cannot_be_opened_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot open the message log .*missing/gate.jsonl: No such file"):
        async with open_gate(_config(str(tmp_path / "missing" / "gate.jsonl"))):
            pass


def test_a_recorder_that_reaches_its_limit_at_start_rotates_first(tmp_path: Path) -> None:
    log = tmp_path / "gate.jsonl"
    log.write_bytes(b"x" * 100)  # what an earlier process left, past the limit
    recorder = Recorder(log, max_bytes=50, backups=1)
    recorder.start(LogHeader(note="new"))
    recorder.close()
    assert (tmp_path / "gate.jsonl.1").read_bytes() == b"x" * 100
    header, _ = read_log(log)
    assert header.note == "new"
    assert recorder.statistics() == LogStatistics(path=str(log), records=0, bytes=log.stat().st_size, segments=1)


def _tear(path: Path, cut: int) -> int:
    """Cut the last ``cut`` bytes (a crash in the middle of a write); the number of the torn line."""
    data = path.read_bytes()[:-cut]
    path.write_bytes(data)
    return data.count(b"\n") + 1


async def test_a_run_appended_after_a_torn_line_replays_with_the_one_before(tmp_path: Path) -> None:
    log = tmp_path / "gate.jsonl"
    await _serve(_config(str(log)), 2)
    torn = _tear(log, 30)
    await _serve(_config(str(log)), 2)
    result = replay(log)
    assert result.identical, result.summary()
    assert result.runs == 2
    assert result.truncated == (f"line {torn}",)
    assert result.unclosed == 1


async def test_a_prompt_and_a_rejection_plan_are_written_once_and_read_back_whole(tmp_path: Path) -> None:
    log = tmp_path / "gate.jsonl"
    prompt = "a lighthouse in a storm, waves breaking, slow dolly in; " * 40
    huge = GenerationRequest(model="t2v-A14B", width=1280, height=720, frames=241, max_level="none", prompt=prompt)
    async with open_gate(_config(str(log))) as gate:
        for _ in range(3):
            ticket = await gate.submit(huge)
            with pytest.raises(DoesNotFit):
                await ticket.wait_admitted()
        await gate.wait_idle()
    raw = log.read_bytes()
    assert raw.count(prompt.encode()) == 1
    assert raw.count(b'"refs":{"best_plan"') == 3  # each rejection refers to the optimizer's answer
    _, records = read_log(log)
    rows = list(records)
    accepted = [r.message for r in rows if isinstance(r.message, RequestAccepted)]
    assert [a.request.prompt for a in accepted] == [prompt] * 3
    plans = [r.message.best_plan for r in rows if isinstance(r.message, RequestRejected)]
    assert len(plans) == 3
    assert plans[0] is not None
    assert plans == [plans[0]] * 3
    assert replay(log).identical


async def test_a_cancelled_run_is_logged_with_a_fixed_phrase(tmp_path: Path) -> None:
    log = tmp_path / "gate.jsonl"
    async with open_gate(_config(str(log))) as gate:
        started = anyio.Event()

        async def forever(lease: object) -> None:
            started.set()
            await anyio.sleep_forever()

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(gate.run, SMALL, forever)
                await started.wait()
                tg.cancel_scope.cancel()  # the run's cancellation carries a cancel scope's address
            await gate.wait_idle()
    _, records = read_log(log)
    finished = {(r.message.outcome, r.message.error) for r in records if isinstance(r.message, RunFinished)}
    assert finished == {("cancelled", CANCELLED_RUN)}  # one message, delivered to each of its recipients
    text = log.read_text()
    assert "0x" not in text
    assert "cancel scope" not in text
    result = replay(log)
    assert result.identical, result.summary()
