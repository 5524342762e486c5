"""The simulator's truth for weights and host RAM: loads, resident models, eviction, the host's OOM killer."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from vramgate.cli import main
from vramgate.errors import InvalidParameter
from vramgate.hardware.simulated import SimulatedGpu
from vramgate.messages.requests import GenerationRequest, RunOptions
from vramgate.messages.trace import Arrival
from vramgate.policy.calibration import Calibration
from vramgate.policy.estimate import Estimator
from vramgate.policy.gpus import DEFAULT_GPU_CATALOG, GpuSpec
from vramgate.simulate import encode_trace, load_trace, parse_devices, simulate
from vramgate.simulate._model import Job
from vramgate.simulate._weights import SimulatedHost, WeightStore, owner_of
from vramgate.simulate.engine import Simulation
from vramgate.simulate.run import policy_names

from ._helpers import StartAll, small, trace

ROOT = Path(__file__).resolve().parents[2]
H100 = DEFAULT_GPU_CATALOG.get("H100-80GB")
H200 = DEFAULT_GPU_CATALOG.get("H200-141GB")
ESTIMATOR = Estimator()
DISK_MB_S = SimulatedHost().disk_read_mb_s
T2V = {"model": "t2v-A14B", "width": 832, "height": 480, "frames": 49, "steps": 20}
I2V = {**T2V, "model": "i2v-A14B"}


def weights_mb(request: GenerationRequest, gpu: GpuSpec) -> int:
    """The estimator's weights on the GPU for the request as given (DiT, LoRA, text encoder, VAE)."""
    requirement = ESTIMATOR.estimate(ESTIMATOR.resolve(request), gpu)
    names = ("dit_weights", "lora", "text_encoder", "vae_weights")
    return sum(c.vram_mb for c in requirement.components if c.name in names)


def ram_mb(request: GenerationRequest, gpu: GpuSpec) -> int:
    return ESTIMATOR.estimate(ESTIMATOR.resolve(request), gpu).ram_mb


def host_link_mb_s(gpu: GpuSpec) -> float:
    return gpu.host_link_gbps * 1e9 * Calibration.default().pageable_link_efficiency / (1 << 20)


def key(request: GenerationRequest) -> str:
    return f"{request.model}:bf16"


def run(records: list[Arrival], policy: StartAll, gpu: GpuSpec = H100, **kw: object) -> Simulation:
    sim = Simulation(trace(*records), [gpu], policy, estimator=ESTIMATOR, **kw)  # type: ignore[arg-type]
    sim.run()
    return sim


def test_a_run_loads_its_weights_from_disk_before_it_computes() -> None:
    policy = StartAll()
    sim = run([Arrival(at=0.0, request=small(0), true_seconds=100.0, true_peak_mb=40_000)], policy)
    load = weights_mb(small(0), H100) / DISK_MB_S
    assert load > 1.0
    assert policy.ended == [("r0", "ok", pytest.approx(load + 100.0))]
    assert sim.counters.load_gpu_s == pytest.approx(load)
    assert sim.counters.useful_gpu_s == pytest.approx(100.0)
    assert (sim.counters.loads, sim.counters.disk_loads) == (1, 1)
    # Without keep_weights the weights go with the run.
    assert sim.weights.resident(0) == {}
    assert sim.gpus[0].allocations() == {}
    assert sim.leaked_allocations() == 0


class RecordPins(StartAll):
    """StartAll that records the device's pins whenever a request arrives."""

    def __init__(self, planned_mb: int, *, keep_weights: bool) -> None:
        super().__init__(planned_mb, pin=True, keep_weights=keep_weights)
        self.pins: list[dict[str, int]] = []

    def arrive(self, job: Job, now: float) -> None:
        assert self.sim is not None
        self.pins.append(self.sim.gpus[0].pins())
        super().arrive(job, now)


def test_resident_weights_are_not_loaded_again_and_a_cold_run_reads_the_page_cache() -> None:
    records = [
        Arrival(at=at, request=small(i), true_seconds=100.0, true_peak_mb=40_000)
        for i, at in enumerate((0.0, 500.0, 550.0))
    ]
    w = weights_mb(small(0), H100)
    warm = RecordPins(40_000, keep_weights=True)
    sim = run(records, warm)
    assert warm.ended[1] == ("r1", "ok", pytest.approx(650.0))  # r2 shares the GPU from 550: 50 + 2 x 50
    assert sim.counters.loads == 1
    assert sim.weights.resident(0) == {key(small(0)): w}
    assert warm.pins[2] == {"r1": 40_000 - w}  # the weights are resident: the pin takes the rest of the plan
    assert sim.leaked_allocations() == 0

    cold = RecordPins(40_000, keep_weights=False)
    sim = run(records, cold)
    # r1 reads the checkpoint from the host's page cache; r2 starts while r1 runs and shares its weights.
    assert (sim.counters.loads, sim.counters.disk_loads) == (2, 1)
    assert cold.ended[0][2] == pytest.approx(w / DISK_MB_S + 100.0)
    assert sim.counters.load_gpu_s == pytest.approx(w / DISK_MB_S + w / host_link_mb_s(H100))
    assert cold.pins[2] == {"r1": 40_000 - w}
    assert sim.weights.resident(0) == {}


def test_loading_evicts_the_least_recently_used_idle_model() -> None:
    t2v, ti2v, i2v = small(0, **T2V), small(1), small(2, **I2V)
    records = [
        Arrival(at=at, request=request, true_seconds=50.0, true_peak_mb=weights_mb(request, H200) + 2_000)
        for at, request in ((0.0, t2v), (200.0, ti2v), (400.0, i2v))
    ]
    sim = run(records, StartAll(keep_weights=True), H200)
    assert [j.state for j in sim.jobs] == ["completed"] * 3
    # t2v and ti2v fit together; i2v does not fit beside both: the least recently used (t2v) made room.
    assert list(sim.weights.resident(0)) == [key(ti2v), key(i2v)]
    assert sim.counters.loads == 3
    assert sim.counters.oom_events == 0


def test_making_room_evicts_only_when_that_makes_it_fit() -> None:
    gpu = SimulatedGpu(H100)
    store = WeightStore([gpu], SimulatedHost())
    assert store.acquire(0, "a", 30_000) == 30_000
    store.loaded(0, "a")
    store.release(0, "a", keep=True)
    assert store.idle_mb(0) == 30_000
    gpu.add_outside("other", 40_000)
    free = gpu.free_mb
    assert store.make_room(0, free + 30_001) == []  # evicting "a" would not be enough: it stays
    assert store.resident(0) == {"a": 30_000}
    assert store.make_room(0, free + 1) == ["a"]
    assert gpu.allocations() == {}
    # Weights in use are never evicted; a run that needs more of a resident model loads only what is missing.
    assert store.acquire(0, "b", 10_000) == 10_000
    assert store.make_room(0, gpu.free_mb + 5_000) == []
    assert store.acquire(0, "b", 15_000) == 5_000
    assert store.acquire(0, "b", 12_000) == 0
    assert gpu.allocations() == {owner_of("b"): 15_000}
    # The model holds the most its runs need: when the run that needed 15,000 ends, 12,000 stay.
    assert store.release(0, "b", 15_000, keep=True) is False
    assert gpu.allocations() == {owner_of("b"): 12_000}
    # Idle, it is cut down to what its next run needs.
    store.loaded(0, "b")
    store.release(0, "b", 12_000, keep=True)
    store.release(0, "b", 10_000, keep=True)
    assert store.acquire(0, "b", 8_000) == 0
    assert gpu.allocations() == {owner_of("b"): 8_000}


def test_the_host_oom_killer_ends_a_run_whose_ram_does_not_fit() -> None:
    offloaded = RunOptions(offload_model=True, t5_cpu=True)
    ram = ram_mb(small(0, options=offloaded), H100)
    records = [
        Arrival(at=0.0, request=small(0, options=offloaded), true_seconds=100.0),
        Arrival(at=10.0, request=small(1, options=offloaded), true_seconds=100.0),
    ]
    policy = StartAll()
    sim = run(records, policy, host=SimulatedHost(ram_mb=ram + ram // 2))
    assert [j.state for j in sim.jobs] == ["completed", "failed"]
    killed = sim.jobs[1].run
    assert killed is not None
    assert (killed.outcome, killed.done) == ("error", 0.0)
    assert sim.counters.host_oom_kills == 1
    assert sim.counters.oom_events == 0
    assert sim.weights.host_used_mb == 0
    assert sim.weights.host_peak_mb == ram
    assert sim.leaked_allocations() == 0
    # With room for both, both complete.
    sim = run(records, StartAll(), host=SimulatedHost(ram_mb=2 * ram))
    assert [j.state for j in sim.jobs] == ["completed", "completed"]
    with pytest.raises(InvalidParameter, match="host_ram_mb"):
        SimulatedHost(ram_mb=0)


def test_vramgate_keeps_weights_resident_and_the_core_is_not_blocked_by_idle_ones() -> None:
    # t2v's weights stay on the H100 (66 GB of 80) when it ends; i2v needs the device: the idle weights make room.
    records = [
        Arrival(at=0.0, request=small(0, **T2V)),
        Arrival(at=1000.0, request=small(1, **T2V)),
        Arrival(at=2000.0, request=small(2, **I2V)),
    ]
    devices = parse_devices("H100-80GB")
    warm, sim = simulate(trace(*records), devices, "vramgate")
    cold, _ = simulate(trace(*records), devices, "vramgate-cold")
    for result in (warm, cold):
        assert (result.completed, result.failed, result.oom_events, result.overcommits) == (3, 0, 0, 0)
        assert result.leaked_leases == 0
    assert (warm.loads, cold.loads) == (2, 3)
    assert warm.load_gpu_s < cold.load_gpu_s
    assert list(sim.weights.resident(0)) == [key(small(2, **I2V))]


def test_the_model_switching_trace_vramgate_against_vramgate_cold() -> None:
    switching = load_trace(ROOT / "bench" / "traces" / "switch-2xh100.jsonl")
    devices = parse_devices("2xH100-80GB")
    warm, _ = simulate(switching, devices, "vramgate")
    cold, _ = simulate(switching, devices, "vramgate-cold")
    for result in (warm, cold):
        assert result.completed == result.requests == len(switching.arrivals)
        assert (result.failed, result.leaked_leases, result.oom_events, result.overcommits) == (0, 0, 0, 0)
        assert result.host_oom_kills == 0
    assert cold.loads == cold.runs
    assert warm.loads < cold.loads
    assert warm.load_gpu_s < 0.75 * cold.load_gpu_s


def test_all_includes_vramgate_cold_and_json_has_the_load_columns(tmp_path: Path) -> None:
    assert policy_names("all")[:2] == ("vramgate", "vramgate-cold")
    path = tmp_path / "t.jsonl"
    path.write_bytes(encode_trace([Arrival(at=i * 300.0, request=small(i)) for i in range(3)]))
    args = ["simulate", "--trace", str(path), "--devices", "H100-80GB", "--policy", "vramgate,vramgate-cold", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows = [msgspec.json.decode(line) for line in result.output.splitlines()]
    assert [r["policy"] for r in rows] == ["vramgate", "vramgate-cold"]
    assert [r["loads"] for r in rows] == [1, 3]
    assert rows[0]["load_gpu_s"] < rows[1]["load_gpu_s"]
    assert all(r["host_oom_kills"] == 0 for r in rows)
    table = CliRunner().invoke(main, ["simulate", "--trace", str(path), "--devices", "H100-80GB"])
    assert table.exit_code == 0, table.output
    for column in ("load GPU-s", "host OOM", "vramgate-cold"):
        assert column in table.output
    small_host = CliRunner().invoke(main, [*args, "--host-ram-gib", "1"])
    assert small_host.exit_code == 0, small_host.output
    assert all(msgspec.json.decode(line)["host_oom_kills"] == 3 for line in small_host.output.splitlines())
    bad = CliRunner().invoke(main, [*args, "--host-ram-gib", "0"])
    assert bad.exit_code == 2
    assert "--host-ram-gib" in bad.output
