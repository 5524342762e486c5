from __future__ import annotations

import pytest

from vramgate.errors import InvalidParameter
from vramgate.hardware import DeviceHistory, SampleHistory, SimulatedGpu
from vramgate.messages import ResourceSample
from vramgate.messages.monitor import HistoryPoint


def test_ring_is_bounded_by_age_and_length() -> None:
    history = DeviceHistory(max_age_s=10.0, max_points=5)
    for step in range(8):
        history.append(HistoryPoint(at=float(step), free_mb=100 - step, used_mb=step))
    assert len(history) == 5
    assert [point.at for point in history.window(100.0)] == [3.0, 4.0, 5.0, 6.0, 7.0]
    history.append(HistoryPoint(at=20.0, free_mb=1, used_mb=1))
    assert [point.at for point in history.window(100.0)] == [20.0]  # older than 10 s are gone
    with pytest.raises(InvalidParameter):
        DeviceHistory(max_age_s=0)


def test_trend_over_a_window() -> None:
    gpu = SimulatedGpu("10GB", index=0, context_overhead_mb=0)
    history = SampleHistory(max_age_s=600.0)
    for step in range(10):
        gpu.add_outside("other", 100 * step)
        history.add(ResourceSample(at=float(step), devices=(gpu.sample(),)))
    trend = history.trend(0, window_s=3.0)
    # samples at 6, 7, 8, 9 s: free = 10240 - 600 ... 10240 - 900
    assert trend.samples == 4
    assert trend.min_free_mb == 10240 - 900
    assert trend.mean_free_mb == pytest.approx(10240 - 750)
    assert trend.last_free_mb == 10240 - 900
    empty = history.trend(5, window_s=3.0)
    assert (empty.samples, empty.min_free_mb, empty.mean_free_mb) == (0, None, None)
    assert history.devices() == (0,)
    assert len(history.window(0, 1000.0)) == 10
