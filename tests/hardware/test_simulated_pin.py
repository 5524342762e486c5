"""Pinned blocks on a simulated GPU: taken at once, drawn from by their owner, exact at every boundary."""

from __future__ import annotations

import pytest

from vramgate.errors import InvalidParameter
from vramgate.hardware import SimulatedDeviceLost, SimulatedGpu, SimulatedOutOfMemory

TOTAL = 24 * 1024


def _gpu() -> SimulatedGpu:
    return SimulatedGpu("24GB", context_overhead_mb=512)


def test_a_pin_takes_the_device_at_once_up_to_exactly_the_free_memory() -> None:
    gpu = _gpu()
    free = gpu.free_mb
    with pytest.raises(SimulatedOutOfMemory) as info:
        gpu.pin("lease-1", free + 1)
    assert info.value.requested_mb == free + 1
    assert gpu.pins() == {}
    assert gpu.free_mb == free  # a pin that does not fit takes nothing
    gpu.pin("lease-1", free)
    assert gpu.pins() == {"lease-1": free}
    assert gpu.free_mb == 0
    assert gpu.used_mb == TOTAL
    assert gpu.allocated_mb == 0  # pinned, not allocated
    assert gpu.reserved_mb == gpu.pinned_mb == free


def test_an_outside_consumer_gets_only_what_the_pin_left() -> None:
    gpu = _gpu()
    gpu.pin("lease-1", 20_000)
    left = TOTAL - 512 - 20_000
    with pytest.raises(SimulatedOutOfMemory):
        gpu.add_outside("other", left + 1)
    gpu.add_outside("other", left)
    assert gpu.free_mb == 0


def test_the_owner_allocates_inside_its_pin_with_nothing_else_free() -> None:
    gpu = _gpu()
    gpu.pin("lease-1", 20_000)
    gpu.add_outside("other", gpu.free_mb)
    gpu.allocate("lease-1", 15_000)
    gpu.allocate("lease-1", 5_000)  # exactly the pin
    assert gpu.allocations() == {"lease-1": 20_000}
    assert gpu.used_mb == TOTAL
    assert gpu.reserved_mb == 20_000
    assert gpu.allocated_mb == 20_000
    with pytest.raises(SimulatedOutOfMemory) as info:
        gpu.allocate("lease-1", 1)  # above the pin, and nothing is free
    assert info.value.free_mb == 0
    with pytest.raises(SimulatedOutOfMemory):
        gpu.allocate("someone-else", 1)  # another owner cannot use the pin


def test_only_the_excess_above_the_pin_takes_free_memory() -> None:
    gpu = _gpu()
    gpu.pin("lease-1", 10_000)
    spare = gpu.free_mb  # TOTAL - 512 - 10,000
    gpu.allocate("lease-1", 4_000)
    assert gpu.free_mb == spare  # inside the pin
    with pytest.raises(SimulatedOutOfMemory) as info:
        gpu.allocate("lease-1", 6_000 + spare + 1)
    assert (info.value.requested_mb, info.value.free_mb) == (6_000 + spare + 1, 6_000 + spare)
    assert gpu.allocations() == {"lease-1": 4_000}  # the failed allocation changed nothing
    gpu.allocate("lease-1", 6_000 + spare)  # the pin's rest plus exactly what is free
    assert gpu.free_mb == 0
    assert gpu.allocated_mb == gpu.reserved_mb == 10_000 + spare


def test_freeing_inside_the_pin_keeps_the_block() -> None:
    gpu = _gpu()
    gpu.pin("lease-1", 10_000)
    spare = gpu.free_mb
    gpu.allocate("lease-1", 12_000)
    assert gpu.free_mb == spare - 2_000
    assert gpu.free("lease-1", 3_000) == 3_000  # 9,000 held: back to the pin, 2,000 freed to the device
    assert gpu.free_mb == spare
    assert gpu.free("lease-1") == 9_000
    assert gpu.free_mb == spare  # still pinned
    assert gpu.allocations() == {}
    assert gpu.pins() == {"lease-1": 10_000}
    assert gpu.free("lease-1") == 0  # an owner with only a pin holds no allocation


def test_unpin_gives_back_the_unused_part_and_is_idempotent() -> None:
    gpu = _gpu()
    free = gpu.free_mb
    gpu.pin("lease-1", 10_000)
    gpu.allocate("lease-1", 4_000)
    assert gpu.unpin("lease-1") == 6_000
    assert gpu.free_mb == free - 4_000
    assert gpu.allocations() == {"lease-1": 4_000}
    assert gpu.unpin("lease-1") == 0
    assert gpu.unpin("never-pinned") == 0
    assert gpu.free("lease-1") == 4_000
    assert gpu.free_mb == free
    assert gpu.reserved_mb == 0
    gpu.pin("lease-2", 3_000)
    gpu.allocate("lease-2", 5_000)
    assert gpu.unpin("lease-2") == 0  # it uses more than its pin: nothing comes back
    assert gpu.free_mb == free - 5_000


def test_what_the_owner_already_holds_counts_towards_its_pin() -> None:
    gpu = _gpu()
    gpu.allocate("lease-1", 4_000)
    free = gpu.free_mb
    gpu.pin("lease-1", 10_000)
    assert gpu.free_mb == free - 6_000
    gpu.allocate("lease-2", gpu.free_mb)
    with pytest.raises(SimulatedOutOfMemory):
        gpu.pin("lease-3", 1)
    assert gpu.pins() == {"lease-1": 10_000}
    with pytest.raises(InvalidParameter):
        gpu.pin("lease-1", 10_000)  # one pin per owner
    with pytest.raises(InvalidParameter):
        gpu.pin("lease-4", -1)


def test_the_peak_is_the_owners_allocation_not_its_pin() -> None:
    gpu = _gpu()
    gpu.pin("lease-1", 10_000)
    gpu.reset_peak("lease-1")
    assert gpu.peak_mb("lease-1") == 0
    gpu.allocate("lease-1", 7_000)
    gpu.free("lease-1", 2_000)
    assert gpu.peak_mb("lease-1") == 7_000
    assert gpu.peak_mb() == 7_000
    torch = gpu.sample().torch
    assert torch is not None
    assert (torch.allocated_mb, torch.reserved_mb) == (5_000, 10_000)
    assert (torch.peak_allocated_mb, torch.peak_reserved_mb) == (7_000, 10_000)
    assert gpu.sample().used_mb == 512 + 10_000


def test_a_lost_device_refuses_pins_and_a_recovered_one_has_none() -> None:
    gpu = _gpu()
    gpu.pin("lease-1", 10_000)
    gpu.lose()
    with pytest.raises(SimulatedDeviceLost):
        gpu.pin("lease-2", 1)
    gpu.recover()
    assert gpu.pins() == {}
    assert gpu.reserved_mb == 0
    assert gpu.free_mb == TOTAL - 512
