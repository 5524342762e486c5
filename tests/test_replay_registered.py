"""A run that used a user-registered model profile and GPU replays: the log header records the catalog entries
beyond the built-ins, and replay rebuilds its cores with them (in this process and in a fresh one)."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import msgspec
import pytest

from vramgate.actors.recorder import Recorder
from vramgate.clock import ManualClock
from vramgate.config import CleanupConfig, DevicesConfig, GateConfig, MonitorConfig
from vramgate.gate import open_gate
from vramgate.hardware import SimulatedGpu, detect
from vramgate.messages import GenerationRequest
from vramgate.policy.estimate import Estimator
from vramgate.policy.gpus import BUILTIN_GPUS, DEFAULT_GPU_CATALOG, GpuCatalog, GpuSpec
from vramgate.policy.models import BUILTIN_MODELS, DEFAULT_MODEL_CATALOG, ModelCatalog, decode_profile
from vramgate.replay import read_log, replay

pytestmark = pytest.mark.anyio

PROFILE = Path(__file__).resolve().parent / "policy" / "profiles" / "wan21-t2v-14B.toml"
#: A GPU no catalog ships: 40 GiB, a little slower than an RTX 4090.
LAB_GPU = GpuSpec(
    name="LabCard-40GB",
    memory_mib=40960,
    bf16_tflops=120.0,
    memory_bandwidth_gbps=900.0,
    host_link_gbps=25.0,
    architecture="ada",
    source="a card of our lab (test)",
)


def _profile_named(name: str) -> object:
    profile = decode_profile(PROFILE.read_bytes(), source=str(PROFILE), toml=True)
    return msgspec.structs.replace(profile, name=name)


async def _record(path: Path, name: str) -> None:
    """A gate on a simulated LabCard runs two requests for a model profile registered under ``name``."""
    profile = _profile_named(name)
    models = ModelCatalog((*BUILTIN_MODELS, profile))  # type: ignore[arg-type]
    gpus = GpuCatalog((*BUILTIN_GPUS, LAB_GPU))
    clock = ManualClock()
    config = GateConfig(
        devices=DevicesConfig(use_real_gpus=False),
        monitor=MonitorConfig(interval_s=0.05),
        cleanup=CleanupConfig(after_run=False),
    )
    devices = detect((SimulatedGpu(LAB_GPU, index=0, clock=clock),), nvml=False, torch=False, host=False)
    estimator = Estimator(models=models, gpus=gpus)
    async with open_gate(config, clock=clock, devices=devices, estimator=estimator, recorder=Recorder(path)) as gate:
        assert [d.gpu for d in gate.device_configs] == ["LabCard-40GB"]
        for steps in (20, 30):
            request = GenerationRequest(model=name, width=832, height=480, frames=33, steps=steps)
            async with gate.admit(request) as lease:
                assert lease.plan.gpu == "LabCard-40GB"
                device = lease.simulated
                assert device is not None
                device.allocate(lease.lease_id, lease.reservation_mb * 9 // 10)
                clock.advance(lease.plan.requirement.estimated_time_seconds)
                device.free(lease.lease_id)
            await gate.wait_idle()


async def test_a_run_with_a_registered_profile_and_gpu_replays_identical(tmp_path: Path) -> None:
    path = tmp_path / "lab.jsonl"
    await _record(path, "lab-t2v-14B")
    assert DEFAULT_MODEL_CATALOG.find("lab-t2v-14B") is None  # nothing was registered process-wide
    assert DEFAULT_GPU_CATALOG.find("LabCard-40GB") is None
    header, records = read_log(path)
    registered = header.config["registered"]
    assert [m["name"] for m in registered["models"]] == ["lab-t2v-14B"]
    assert [g["name"] for g in registered["gpus"]] == ["LabCard-40GB"]
    assert sum(1 for r in records if type(r.message).__name__ == "RequestAdmitted") == 2
    result = replay(path)
    assert result.identical, result.summary()
    assert result.outputs > 0
    with anyio.fail_after(120):  # a fresh process: nothing registered but what the log holds
        done = await anyio.run_process([sys.executable, "-m", "vramgate", "replay", str(path)], check=False)
    assert done.returncode == 0, (done.stdout + done.stderr).decode()
    assert done.stdout.startswith(b"identical")


async def test_a_log_whose_registered_entries_are_corrupt_is_refused_with_the_field(tmp_path: Path) -> None:
    path = tmp_path / "lab.jsonl"
    await _record(path, "lab-t2v-14B")
    lines = path.read_bytes().splitlines(keepends=True)
    lines[0] = lines[0].replace(b'"memory_mib":40960', b'"memory_mib":-1', 1)
    path.write_bytes(b"".join(lines))
    with anyio.fail_after(120):
        done = await anyio.run_process([sys.executable, "-m", "vramgate", "replay", str(path)], check=False)
    assert done.returncode == 2
    assert b"memory_mib" in done.stderr
    assert b"Traceback" not in done.stderr
