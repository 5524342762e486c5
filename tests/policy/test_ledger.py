"""The per-device ledger: margin, reservations that never over-commit, others' use, smoothing, staleness."""

from __future__ import annotations

import pytest
from admission_helpers import H100_MB, device_sample, h100

from vramgate.errors import ConfigError, DoesNotFit
from vramgate.policy.ledger import DeviceConfig, DeviceLedger, default_margin_mb


def ledger(*, stale_after_s: float | None = 5.0, decay_s: float = 10.0, margin_mb: int | None = None) -> DeviceLedger:
    return DeviceLedger(h100(0, margin_mb=margin_mb), stale_after_s=stale_after_s, others_decay_s=decay_s)


def test_default_margin_is_the_larger_of_one_gib_and_five_percent() -> None:
    assert default_margin_mb(H100_MB) == 4078  # 5 % of 81559, rounded up
    assert default_margin_mb(12288) == 1024
    assert DeviceConfig(index=0, gpu="x", capacity_mb=24576).effective_margin_mb == 1229
    assert DeviceConfig(index=0, gpu="x", capacity_mb=24576, margin_mb=0).effective_margin_mb == 0


@pytest.mark.parametrize(("capacity_mb", "margin_mb"), [(1000, None), (4096, 4096), (0, None), (4096, -1)], ids=str)
def test_a_margin_that_leaves_nothing_is_a_config_error(capacity_mb: int, margin_mb: int | None) -> None:
    with pytest.raises(ConfigError, match="device 3"):
        DeviceConfig(index=3, gpu="x", capacity_mb=capacity_mb, margin_mb=margin_mb)


def test_reservations_never_over_commit() -> None:
    book = ledger(stale_after_s=None)
    budget = H100_MB - 4078
    assert book.free_mb(0.0) == budget
    book.reserve("a", budget - 100, 0.0)
    with pytest.raises(DoesNotFit) as info:
        book.reserve("b", 101, 0.0)
    assert info.value.needed_mb == 101
    assert info.value.available_mb == 100
    book.reserve("b", 100, 0.0)
    assert book.free_mb(0.0) == 0
    assert book.release("a", 1.0) == budget - 100
    assert book.release("a", 1.0) == 0  # a second release returns nothing
    assert book.reserved_mb == 100
    assert book.leases == 1


def test_others_use_comes_off_the_free_memory_and_free_is_never_negative() -> None:
    book = ledger()
    book.observe(device_sample(0, 30000), at=0.0)
    assert book.others_mb == 30000
    assert book.free_mb(0.0) == H100_MB - 4078 - 30000
    book.reserve("a", book.free_mb(0.0), 0.0)
    book.observe(device_sample(0, 80000), at=1.0)  # without torch figures everything measured counts as others
    assert book.headroom_mb() < 0
    assert book.free_mb(1.0) == 0


def test_a_lease_not_yet_allocated_is_neither_double_counted_nor_under_counted() -> None:
    book = ledger()
    book.observe(device_sample(0, 10000, ours_mb=0), at=0.0)
    book.reserve("a", 40000, 1.0)
    # The run has not allocated yet: used is only the outside 10 GiB, and so are others.
    book.observe(device_sample(0, 10000, ours_mb=0), at=2.0)
    assert book.others_mb == 10000
    # Half-way through allocating: 10 GiB outside + 25 GiB ours.
    book.observe(device_sample(0, 35000, ours_mb=25000), at=3.0)
    assert book.others_mb == 10000
    assert book.free_mb(3.0) == H100_MB - 4078 - 10000 - 40000


def test_memory_held_outside_any_lease_counts_as_others() -> None:
    book = ledger()
    with pytest.raises(DoesNotFit, match="no memory sample"):
        book.reserve("a", 20000, 0.0)
    assert book.reserved_mb == 0
    book.observe(device_sample(0, 0, ours_mb=0), at=0.0)
    book.reserve("a", 20000, 0.0)
    # This process holds 30 GiB, but only 20 GiB are reserved: the other 10 GiB are a cache, counted as others.
    book.observe(device_sample(0, 35000, ours_mb=30000), at=1.0)
    assert book.others_mb == 5000 + 10000


def test_a_sample_taken_before_a_release_still_sees_the_released_lease() -> None:
    book = ledger(decay_s=1000.0)
    book.observe(device_sample(0, 0, ours_mb=0), at=0.0)
    book.reserve("a", 30000, 0.0)
    book.release("a", 5.0)
    # Measured at 4.0 (the run still held its memory), delivered after the release: not others' memory.
    book.observe(device_sample(0, 32000, ours_mb=30000), at=4.0)
    assert book.others_mb == 2000
    # Measured after the release while the cache is still held: now it is others' (real, unreserved) memory.
    book.observe(device_sample(0, 32000, ours_mb=30000), at=6.0)
    assert book.others_mb == 32000


def test_others_rise_at_once_and_decay_with_the_half_life() -> None:
    book = ledger(decay_s=10.0, stale_after_s=None)
    book.observe(device_sample(0, 1000), at=0.0)
    book.observe(device_sample(0, 41000), at=1.0)
    assert book.others_mb == 41000
    book.observe(device_sample(0, 1000), at=11.0)
    assert book.others_raw_mb == 1000
    assert book.others_mb == 21000  # half the excess is still believed after one half-life
    book.observe(device_sample(0, 1000), at=21.0)
    assert book.others_mb == 11000
    book.observe(device_sample(0, 1000), at=1000.0)
    assert book.others_mb == 1000


def test_without_decay_a_drop_is_believed_at_once() -> None:
    book = ledger(decay_s=0.0)
    book.observe(device_sample(0, 41000), at=0.0)
    book.observe(device_sample(0, 1000), at=0.5)
    assert book.others_mb == 1000


def test_an_older_sample_is_ignored() -> None:
    book = ledger()
    book.observe(device_sample(0, 5000), at=10.0)
    book.observe(device_sample(0, 50000), at=9.0)
    assert book.others_mb == 5000
    assert book.sample_at == 10.0


def test_stale_or_missing_samples_stop_admission_and_say_why() -> None:
    book = ledger(stale_after_s=5.0)
    assert "no memory sample from device 0" in book.blocked(0.0)
    assert book.free_mb(0.0) == 0
    book.observe(device_sample(0, 0), at=1.0)
    assert book.blocked(6.0) == ""
    assert book.free_mb(6.0) > 0
    assert "stale (5.5 s old, limit 5 s)" in book.blocked(6.5)
    assert book.free_mb(6.5) == 0
    with pytest.raises(DoesNotFit, match="stale"):
        book.reserve("a", 1, 6.5)
    assert ledger(stale_after_s=None).blocked(1e9) == ""


def test_a_lost_device_admits_nothing_until_a_sample_reports_it_back() -> None:
    book = ledger()
    book.observe(device_sample(0, 0), at=0.0)
    book.observe(device_sample(0, 0, lost=True), at=1.0)
    assert "device 0 is lost" in book.blocked(1.0)
    assert book.free_mb(1.0) == 0
    book.observe(device_sample(0, 0), at=2.0)
    assert book.blocked(2.0) == ""
    book.mark_lost("fell off the bus")
    assert book.blocked(2.0) == "device 0 is lost (fell off the bus)"


def test_a_device_reporting_less_memory_than_configured_is_believed() -> None:
    book = ledger()
    book.observe(device_sample(0, 0, total_mb=40000), at=0.0)
    assert book.capacity_mb == 40000
    assert book.free_mb(0.0) == 40000 - 4078
    book.observe(device_sample(0, 0, total_mb=100000), at=1.0)
    assert book.capacity_mb == H100_MB  # never more than configured
