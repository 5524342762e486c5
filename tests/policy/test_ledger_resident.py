"""The ledger's resident memory: counted apart from others' use, unloading until a sample shows it gone, and a
reservation that shrinks when its weights become resident."""

from __future__ import annotations

import pytest
from admission_helpers import H100_MB, device_sample, h100

from vramgate.errors import DoesNotFit
from vramgate.policy.ledger import DeviceLedger

BUDGET = H100_MB - 4078


def ledger() -> DeviceLedger:
    return DeviceLedger(h100(0), stale_after_s=5.0, others_decay_s=0.0)


def test_resident_memory_is_neither_others_nor_free_and_never_over_committed() -> None:
    book = ledger()
    book.observe(device_sample(0, 0, ours_mb=0), at=0.0)
    book.load("m", 30000, 0.5)
    book.observe(device_sample(0, 30000 + 2000, ours_mb=30000), at=1.0)
    assert (book.resident_mb, book.others_mb) == (30000, 2000)
    assert book.free_mb(1.0) == BUDGET - 30000 - 2000
    with pytest.raises(DoesNotFit):
        book.reserve("a", BUDGET - 30000 - 2000 + 1, 1.0)
    book.reserve("a", BUDGET - 30000 - 2000, 1.0)
    assert book.free_mb(1.0) == 0


def test_a_sample_taken_before_the_load_counts_the_weights_as_others() -> None:
    book = ledger()
    book.load("m", 30000, 2.0)
    book.observe(device_sample(0, 30000, ours_mb=30000), at=1.0)  # measured before the declaration
    assert book.others_mb == 30000  # not yet declared, and no lease holds it: others' use (the safe side)
    book.observe(device_sample(0, 30000), at=3.0)
    assert book.others_mb == 0


def test_unloaded_memory_counts_free_once_a_later_sample_shows_it() -> None:
    book = ledger()
    book.observe(device_sample(0, 0, ours_mb=0), at=0.0)
    book.load("m", 30000, 0.0)
    book.observe(device_sample(0, 30000, ours_mb=30000), at=1.0)
    assert book.unload("m", 2.0) == 30000
    assert (book.resident_mb, book.unloading_mb) == (0, 30000)
    assert book.free_mb(2.0) == BUDGET - 30000
    book.observe(device_sample(0, 30000, ours_mb=30000), at=1.5)  # older than the latest: ignored
    assert book.unloading_mb == 30000
    book.observe(device_sample(0, 0, ours_mb=0), at=2.5)
    assert (book.unloading_mb, book.others_mb, book.free_mb(2.5)) == (0, 0, BUDGET)


def test_memory_the_process_did_not_free_after_an_unload_counts_as_others() -> None:
    book = ledger()
    book.observe(device_sample(0, 0, ours_mb=0), at=0.0)
    book.load("m", 30000, 0.0)
    book.unload("m", 1.0)
    book.observe(device_sample(0, 30000, ours_mb=30000), at=2.0)  # still held (a cache not emptied)
    assert book.unloading_mb == 0
    assert book.others_mb == 30000
    assert book.free_mb(2.0) == BUDGET - 30000


def test_a_reservation_shrinks_when_its_weights_become_resident() -> None:
    book = ledger()
    book.observe(device_sample(0, 0, ours_mb=0), at=0.0)
    book.reserve("a", 50000, 1.0)
    book.load("m", 30000, 2.0)
    assert book.shrink("a", 30000, 2.0) == 30000
    assert (book.reserved_mb, book.held_mb("a"), book.resident_mb) == (20000, 20000, 30000)
    # A sample taken while the lease held all 50,000 (and before the load) still sees it as the lease's.
    book.observe(device_sample(0, 50000, ours_mb=50000), at=1.5)
    assert book.others_mb == 0
    assert book.shrink("a", 99999, 3.0) == 20000
    assert book.shrink("missing", 10, 3.0) == 0
