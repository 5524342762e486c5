"""One ``[admission]`` configuration: the TOML section decodes straight into the admission core's
:class:`AdmissionConfig`, and the gate, the simulator, replay and the CLI run admission with the same defaults.
Names the struct had before are refused with the name to use, and logs recorded under them still replay."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from vramgate.actors.admission import build_core
from vramgate.actors.recorder import Recorder
from vramgate.clock import ManualClock
from vramgate.config import AdmissionSettings, DevicesConfig, GateConfig, RunConfig, load_config
from vramgate.errors import DecodeError
from vramgate.gate import open_gate
from vramgate.hardware import detect
from vramgate.policy.admission import AdmissionConfig
from vramgate.policy.admission_config import DEFAULT_ADMISSION
from vramgate.policy.estimate import Estimator
from vramgate.policy.ledger import default_margin_mb
from vramgate.replay import read_log, replay
from vramgate.simulate import parse_devices
from vramgate.simulate.engine import Simulation
from vramgate.simulate.gate import SIMULATED_ADMISSION, VramgatePolicy
from vramgate.simulate.run import make_policy
from vramgate.simulate.trace import Trace

OLD_LOG = Path(__file__).resolve().parent / "data" / "log-before-aging-per-s.jsonl"


def _without_queue_limit(config: AdmissionConfig) -> dict[str, object]:
    fields = msgspec.structs.asdict(config)
    del fields["queue_limit"]
    return fields


def _simulated_policy(devices: str) -> VramgatePolicy:
    policy = make_policy("vramgate", Estimator())
    assert isinstance(policy, VramgatePolicy)
    policy.attach(Simulation(Trace(arrivals=(), outside=()), parse_devices(devices), policy, estimator=Estimator()))
    return policy


@pytest.mark.anyio
async def test_gate_simulator_replay_and_cli_admit_with_the_same_defaults(tmp_path: Path) -> None:
    # The gate, opened with nothing configured but its devices, records the admission core it runs.
    path = tmp_path / "run.jsonl"
    clock = ManualClock()
    config = GateConfig(devices=DevicesConfig(use_real_gpus=False))
    devices = detect(("H100-80GB", "RTX4090-24GB"), nvml=False, torch=False, host=False, clock=clock)
    async with open_gate(config, clock=clock, devices=devices, recorder=Recorder(path)) as gate:
        gate_margins = {d.gpu: d.margin_mb for d in gate.device_configs}
    header, _ = read_log(path)
    spec = header.core("admission")
    assert spec is not None
    assert msgspec.convert(spec.config["admission"], AdmissionConfig) == DEFAULT_ADMISSION
    # Replay rebuilds that core with the same configuration and run timing.
    rebuilt = build_core(header, spec).core
    assert rebuilt.config == DEFAULT_ADMISSION
    assert (rebuilt.time_scale, rebuilt.min_run_s) == (RunConfig().time_scale, RunConfig().min_seconds)
    # The CLI (vramgate serve, demo and validate read load_config) decodes [admission] into the same struct.
    assert load_config(environ={}).admission == DEFAULT_ADMISSION
    assert GateConfig().admission == DEFAULT_ADMISSION
    # The simulator (vramgate simulate) differs only in its queue, long enough for any trace.
    policy = _simulated_policy("H100-80GB,RTX4090-24GB")
    assert policy.config == SIMULATED_ADMISSION
    assert _without_queue_limit(policy.config) == _without_queue_limit(DEFAULT_ADMISSION)
    assert policy.config.queue_limit > DEFAULT_ADMISSION.queue_limit
    # ... and gives each device the gate's safety margin (one rule: the ledger's).
    sim_margins = {d.gpu: d.margin_mb for d in policy.core.statistics().devices}
    assert sim_margins == gate_margins
    assert gate_margins == {name: default_margin_mb(mb) for name, mb in (("H100-80GB", 81559), ("RTX4090-24GB", 24564))}


def test_the_user_facing_names_decode_into_the_admission_core_config(tmp_path: Path) -> None:
    path = tmp_path / "gate.toml"
    path.write_text(
        "[admission]\nqueue_limit = 20\naging_per_s = 0.25\nmargin = '2GiB'\nmargin_fraction = 0.1\n"
        "stale_after_s = 5\npermanent_after_s = 120\nplacement = 'best_fit'\nbackfill = false\n"
        "ram_budget = '64GiB'\nbackfill_depth = 16\n"
    )
    admission = load_config(path, environ={"VRAMGATE_ADMISSION__OTHERS_DECAY_S": "3"}).admission
    assert type(admission) is AdmissionConfig
    assert AdmissionSettings is AdmissionConfig
    assert (admission.queue_limit, admission.aging_per_s, admission.stale_after_s) == (20, 0.25, 5.0)
    assert (admission.placement, admission.backfill, admission.backfill_depth) == ("best_fit", False, 16)
    assert (admission.permanent_after_s, admission.others_decay_s) == (120.0, 3.0)
    assert admission.margin_mb(81559) == 2048
    assert admission.ram_budget_mb() == 65536
    assert msgspec.structs.replace(admission, margin=None).margin_mb(81559) == 8156  # 10 %, rounded up


@pytest.mark.parametrize(
    ("line", "old", "new"),
    [
        ("aging = 0.5", "admission.aging", "admission.aging_per_s"),
        ("time_scale = 0.01", "admission.time_scale", "run.time_scale"),
        ("min_run_s = 0.5", "admission.min_run_s", "run.min_seconds"),
    ],
)
def test_an_old_name_is_refused_with_the_name_to_use(tmp_path: Path, line: str, old: str, new: str) -> None:
    path = tmp_path / "gate.toml"
    path.write_text(f"[admission]\nqueue_limit = 5\n{line}\n")
    with pytest.raises(DecodeError) as raised:
        load_config(path, environ={})
    assert raised.value.path == f"$.{old}"
    assert new in raised.value.reason
    with pytest.raises(DecodeError, match=new.replace(".", r"\.")):
        load_config(environ={f"VRAMGATE_{old.upper().replace('.', '__')}": "1"})


def test_the_cli_names_the_new_name_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "gate.toml"
    path.write_text("[admission]\naging = 0.5\n")
    done = subprocess.run(
        [sys.executable, "-m", "vramgate", "validate", "--kind", "config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "admission.aging_per_s" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_a_log_recorded_under_the_old_names_replays_to_the_same_decisions() -> None:
    header, _ = read_log(OLD_LOG)
    spec = header.core("admission")
    assert spec is not None
    assert "aging" in spec.config["admission"]
    assert "time_scale" in spec.config["admission"]
    result = replay(OLD_LOG)
    assert result.identical, result.summary()
    assert result.outputs > 0
