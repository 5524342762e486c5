from __future__ import annotations

import sys

import pytest

from vramgate.hardware import CudaMemory, ProbeReading, TorchProbe, TorchUnavailable, combine, map_ordinal
from vramgate.hardware.cuda import load_torch, visible_devices
from vramgate.messages import DeviceSample, TorchMemory

UUID0 = "GPU-00000000-aaaa-bbbb-cccc-000000000000"
UUID1 = "GPU-11111111-aaaa-bbbb-cccc-111111111111"


def _nvml(index: int, uuid: str, free: int = 1000) -> DeviceSample:
    return DeviceSample(
        index=index, name="H100", uuid=uuid, backend="nvml", total_mb=81559, free_mb=free, used_mb=81559 - free
    )


def _torch(allocated: int) -> TorchMemory:
    return TorchMemory(
        allocated_mb=allocated,
        reserved_mb=allocated,
        active_mb=allocated,
        peak_allocated_mb=allocated,
        peak_reserved_mb=allocated,
    )


def test_visible_devices_stops_at_the_first_invalid_entry() -> None:
    assert visible_devices({}) is None
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "2, 0"}) == ["2", "0"]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "1,foo,0"}) == ["1"]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "GPU-1234,MIG-5"}) == ["GPU-1234", "MIG-5"]


def test_map_ordinal_prefers_the_uuid() -> None:
    env = {"CUDA_VISIBLE_DEVICES": "3,1"}
    assert map_ordinal(0, UUID1[4:], env) == (UUID1, None, "uuid")
    assert map_ordinal(0, UUID1, env) == (UUID1, None, "uuid")
    assert map_ordinal(0, None, env) == ("", 3, "CUDA_VISIBLE_DEVICES")
    assert map_ordinal(1, None, env) == ("", 1, "CUDA_VISIBLE_DEVICES")
    assert map_ordinal(0, None, {"CUDA_VISIBLE_DEVICES": "GPU-1111"}) == ("GPU-1111", None, "CUDA_VISIBLE_DEVICES")
    assert map_ordinal(2, None, {}) == ("", 2, "ordinal")


def test_torch_figures_attach_to_the_nvml_device_with_the_same_uuid() -> None:
    nvml = ProbeReading(probe="nvml", devices=(_nvml(0, UUID0), _nvml(1, UUID1)))
    # CUDA_VISIBLE_DEVICES=1: CUDA ordinal 0 is NVML device 1
    torch = ProbeReading(
        probe="torch",
        cuda=(CudaMemory(cuda_index=0, uuid=UUID1, nvml_index=None, torch=_torch(700)),),
        mapping="cuda->nvml by uuid",
    )
    sample = combine([nvml, torch], at=1.0)
    first, second = sample.devices
    assert first.torch is None
    assert first.cuda_index is None
    assert second.torch == _torch(700)
    assert second.cuda_index == 0
    assert second.backend == "nvml"
    assert sample.mapping == "cuda->nvml by uuid"


def test_uuid_prefix_and_index_fallbacks() -> None:
    nvml = ProbeReading(probe="nvml", devices=(_nvml(0, UUID0), _nvml(1, UUID1)))
    by_prefix = CudaMemory(cuda_index=0, uuid=UUID1[:12], nvml_index=None, torch=_torch(1))
    by_index = CudaMemory(cuda_index=1, uuid="", nvml_index=0, torch=_torch(2))
    sample = combine([nvml, ProbeReading(probe="torch", cuda=(by_prefix, by_index))], at=0.0)
    assert sample.devices[1].torch == _torch(1)
    assert sample.devices[0].torch == _torch(2)


def test_torch_device_listed_on_its_own_without_nvml() -> None:
    device = DeviceSample(
        index=0,
        name="H100",
        uuid=UUID0,
        backend="torch",
        total_mb=81559,
        free_mb=80000,
        used_mb=1559,
        torch=_torch(10),
        cuda_index=0,
    )
    reading = ProbeReading(
        probe="torch",
        devices=(device,),
        cuda=(CudaMemory(cuda_index=0, uuid=UUID0, nvml_index=None, torch=_torch(10)),),
    )
    assert combine([reading], at=0.0).devices == (device,)
    # with NVML present the NVML figures win and the torch device is not listed twice
    both = combine([ProbeReading(probe="nvml", devices=(_nvml(0, UUID0),)), reading], at=0.0)
    assert len(both.devices) == 1
    assert both.devices[0].backend == "nvml"
    assert both.devices[0].torch == _torch(10)


def test_cpu_only_torch_is_unavailable_and_says_why() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(TorchUnavailable, match="CUDA is not available"):
        load_torch()
    with pytest.raises(TorchUnavailable):
        TorchProbe()


def test_no_torch_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # makes ``import torch`` fail as if not installed
    with pytest.raises(TorchUnavailable, match="not installed"):
        load_torch()
