"""Bounded per-device history of free/used memory, and free-memory trends over a window (sans-io)."""

from __future__ import annotations

from collections import deque

from vramgate.errors import InvalidParameter
from vramgate.messages.monitor import FreeMemoryTrend, HistoryPoint
from vramgate.messages.resources import ResourceSample


class DeviceHistory:
    """A ring of one device's :class:`HistoryPoint` values, at most ``max_age_s`` old and ``max_points`` long."""

    __slots__ = ("_points", "max_age_s")

    def __init__(self, *, max_age_s: float = 600.0, max_points: int = 6000) -> None:
        if max_age_s <= 0:
            raise InvalidParameter("max_age_s", max_age_s, "must be positive")
        if max_points < 1:
            raise InvalidParameter("max_points", max_points, "must be at least 1")
        self.max_age_s = max_age_s
        self._points: deque[HistoryPoint] = deque(maxlen=max_points)

    def __len__(self) -> int:
        return len(self._points)

    def append(self, point: HistoryPoint) -> None:
        points = self._points
        points.append(point)
        horizon = point.at - self.max_age_s
        while points[0].at < horizon:
            points.popleft()

    def window(self, window_s: float, now: float | None = None) -> tuple[HistoryPoint, ...]:
        """Points no older than ``window_s`` before ``now`` (the latest point's time when ``None``), oldest first."""
        if not self._points:
            return ()
        end = self._points[-1].at if now is None else now
        start = end - window_s
        selected: list[HistoryPoint] = []
        for point in reversed(self._points):
            if point.at < start:
                break
            selected.append(point)
        selected.reverse()
        return tuple(selected)

    def trend(self, device: int, window_s: float, now: float | None = None) -> FreeMemoryTrend:
        points = self.window(window_s, now)
        if not points:
            return FreeMemoryTrend(device=device, window_s=window_s)
        free = [point.free_mb for point in points]
        return FreeMemoryTrend(
            device=device,
            window_s=window_s,
            samples=len(points),
            min_free_mb=min(free),
            mean_free_mb=sum(free) / len(free),
            last_free_mb=free[-1],
        )


class SampleHistory:
    """Per-device histories fed with whole :class:`ResourceSample` messages; devices are keyed by index."""

    def __init__(self, *, max_age_s: float = 600.0, max_points: int = 6000) -> None:
        self.max_age_s = max_age_s
        self.max_points = max_points
        self._devices: dict[int, DeviceHistory] = {}

    def add(self, sample: ResourceSample) -> None:
        for device in sample.devices:
            history = self._devices.get(device.index)
            if history is None:
                history = self._devices[device.index] = DeviceHistory(
                    max_age_s=self.max_age_s, max_points=self.max_points
                )
            history.append(HistoryPoint(at=sample.at, free_mb=device.free_mb, used_mb=device.used_mb))

    def devices(self) -> tuple[int, ...]:
        return tuple(sorted(self._devices))

    def window(self, device: int, window_s: float, now: float | None = None) -> tuple[HistoryPoint, ...]:
        history = self._devices.get(device)
        return history.window(window_s, now) if history is not None else ()

    def trend(self, device: int, window_s: float, now: float | None = None) -> FreeMemoryTrend:
        history = self._devices.get(device)
        if history is None:
            return FreeMemoryTrend(device=device, window_s=window_s)
        return history.trend(device, window_s, now)
