"""The memory model is unmoved by changes to the time model: every memory figure matches the snapshot exactly."""

from __future__ import annotations

from pathlib import Path

import msgspec
from memory_grid import memory_figures

SNAPSHOT = Path(__file__).parent / "data" / "memory_grid.json"


def test_every_memory_figure_on_the_grid_is_byte_identical_to_the_snapshot() -> None:
    expected = msgspec.json.decode(SNAPSHOT.read_bytes())
    actual = msgspec.json.decode(msgspec.json.encode(memory_figures()))
    assert len(expected) > 300
    assert actual.keys() == expected.keys()
    changed = [key for key in expected if actual[key] != expected[key]]
    assert not changed, f"{len(changed)} of {len(expected)} memory figures moved, e.g. {changed[0]}"
