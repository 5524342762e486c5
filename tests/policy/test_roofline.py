"""The time model is a roofline per phase: compute or memory bound, multi-GPU traffic over the catalog's link."""

from __future__ import annotations

import msgspec
import pytest

from vramgate.messages import ResolvedOptions, RunParams
from vramgate.policy.estimate import Estimator
from vramgate.policy.gpus import BUILTIN_GPUS, DEFAULT_GPU_CATALOG, GpuSpec

H100 = DEFAULT_GPU_CATALOG.get("H100-80GB")
ONE_GPU = ResolvedOptions(offload_model=True, convert_model_dtype=True)
ULYSSES4 = ResolvedOptions(gpus=4, ulysses=4, dit_fsdp=True, t5_fsdp=True)


def _run(options: ResolvedOptions = ONE_GPU, *, width: int = 1280, height: int = 720) -> RunParams:
    return RunParams(model="t2v-A14B", task="t2v", width=width, height=height, frames=81, steps=40, options=options)


def _scaled(gpu: GpuSpec, **changes: float | None) -> GpuSpec:
    return msgspec.structs.replace(gpu, name=f"{gpu.name}-variant", **changes)


def test_the_dit_on_an_h100_is_compute_bound_so_its_time_follows_flops_not_bandwidth() -> None:
    est = Estimator()
    base = est.breakdown(_run(), H100)
    faster_memory = est.breakdown(_run(), _scaled(H100, memory_bandwidth_gbps=2 * H100.memory_bandwidth_gbps))
    half_flops = est.breakdown(_run(), _scaled(H100, bf16_tflops=H100.bf16_tflops / 2))
    assert faster_memory.t_denoise == pytest.approx(base.t_denoise)
    assert half_flops.t_denoise == pytest.approx(2 * base.t_denoise)
    # the VAE decode is the memory-bound phase: it follows bandwidth, not flops
    assert faster_memory.t_vae == pytest.approx(base.t_vae / 2)
    assert half_flops.t_vae == pytest.approx(base.t_vae)


def test_a_bandwidth_starved_gpu_turns_the_denoise_step_memory_bound() -> None:
    est = Estimator()
    starved = _scaled(H100, memory_bandwidth_gbps=5.0)
    slow = est.breakdown(_run(width=832, height=480), starved)
    slower = est.breakdown(_run(width=832, height=480), _scaled(starved, memory_bandwidth_gbps=2.5))
    compute_bound = est.breakdown(_run(width=832, height=480), H100)
    assert slow.t_denoise > 2 * compute_bound.t_denoise
    assert slower.t_denoise == pytest.approx(2 * slow.t_denoise)


def test_sequence_parallel_all_to_alls_run_at_the_catalogs_interconnect() -> None:
    est = Estimator()
    nvlink = est.breakdown(_run(ULYSSES4), H100)
    pcie = est.breakdown(_run(ULYSSES4), _scaled(H100, interconnect="PCIe 5.0 x16", interconnect_gbps=None))
    assert H100.interconnect == "NVLink 4"
    assert nvlink.t_comm > 0
    assert pcie.t_comm == pytest.approx(nvlink.t_comm * H100.peer_link_gbps / H100.host_link_gbps)
    assert pcie.seconds > nvlink.seconds
    assert est.breakdown(_run(), H100).t_comm == 0.0


def test_a_multi_gpu_estimate_shows_its_interconnect_time_and_its_parts_add_up() -> None:
    est = Estimator()
    req = est.estimate(_run(ULYSSES4), "A100-80GB")
    parts = {c.name: c for c in req.components}
    assert parts["interconnect"].seconds > 0
    assert sum(c.seconds for c in req.components) == pytest.approx(req.estimated_time_seconds, rel=1e-9)
    assert "interconnect" not in {c.name for c in est.estimate(_run(), "A100-80GB").components}


def test_four_gpus_split_the_compute_four_ways_and_add_only_their_link_time() -> None:
    est = Estimator()
    one = est.breakdown(_run(), H100)
    four = est.breakdown(_run(ULYSSES4), H100)
    assert four.t_denoise == pytest.approx(one.t_denoise / 4, rel=0.01)  # the compute splits over the ranks
    assert four.t_denoise + four.t_comm < one.t_denoise


@pytest.mark.parametrize("gpu", BUILTIN_GPUS, ids=lambda g: g.name)
def test_every_catalog_gpu_has_an_interconnect_with_its_source(gpu: GpuSpec) -> None:
    assert gpu.interconnect_gbps is not None
    assert gpu.interconnect_gbps > 0
    assert gpu.interconnect.split()[0] in ("NVLink", "PCIe")
    assert gpu.interconnect.split()[0] in gpu.source
    if gpu.interconnect.startswith("NVLink"):
        assert gpu.peer_link_gbps > gpu.host_link_gbps


def test_a_generic_gpu_talks_to_its_peers_over_pcie() -> None:
    generic = DEFAULT_GPU_CATALOG.get("24GB")
    assert generic.peer_link_gbps == generic.host_link_gbps
