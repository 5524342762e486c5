"""Prometheus metrics of a gate (``pip install -e '.[metrics]'`` from a clone), for any server that embeds one.

::

    metrics = GateMetrics(gate)                      # attach right after open_gate, before the first request
    body, content_type = metrics.render(), metrics.content_type   # serve at /metrics

Gauges and counters are read from :meth:`Gate.statistics` at scrape time, so they match it exactly; the two
histograms (time waited for admission, and observed/predicted VRAM of finished runs) are fed by the gate's
lifecycle events. Memory is in bytes (Prometheus' base unit); device series carry ``device`` and ``gpu`` labels.

========================================  =====  =========================================================
``vramgate_device_capacity_bytes``        gauge  each device's memory
``vramgate_device_free_bytes``            gauge  what admission may still grant (capacity - margin - others - reserved)
``vramgate_device_reserved_bytes``        gauge  reservations of running leases
``vramgate_device_others_bytes``          gauge  use by everything but this gate's leases (smoothed)
``vramgate_device_margin_bytes``          gauge  the safety margin
``vramgate_device_measured_used_bytes``   gauge  the latest sample's used memory
``vramgate_device_leases``                gauge  leases running on the device
``vramgate_queue_length`` / ``_limit``    gauge  requests waiting for admission, and the bound
``vramgate_running``                      gauge  leases held
``vramgate_log_degraded``                 gauge  1 when the message log cannot be written (only with a log)
``vramgate_requests_submitted_total``     count  requests the gate accepted
``vramgate_admissions_total``             count  leases granted
``vramgate_rejections_total``             count  requests rejected (does not fit, bad request, ...)
``vramgate_requests_ended_total{state}``  count  completed, rejected, failed, cancelled, timed_out
``vramgate_ooms_total``                   count  runs that ended out of memory
``vramgate_oom_retries_total``            count  re-planned retries after an OOM
``vramgate_cleanups_total``               count  cleanups run
``vramgate_cleanup_freed_bytes_total``    count  memory they freed
``vramgate_wait_seconds``                 hist   time from submission to admission
``vramgate_estimate_ratio``               hist   observed / predicted peak VRAM of each finished run
========================================  =====  =========================================================
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from vramgate.errors import ConfigError
from vramgate.messages import Message, RequestAdmitted, RunFinished

if TYPE_CHECKING:
    from vramgate.gate import Gate
    from vramgate.messages.gate import DeviceStatistics

MIB = 1 << 20
WAIT_BUCKETS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
RATIO_BUCKETS: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2, 1.5, 2.0)
ENDED_STATES = ("completed", "rejected", "failed", "cancelled", "timed_out")


class Histogram:
    """Cumulative bucket counts and a sum, as Prometheus exposes them (no prometheus_client needed)."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = tuple(sorted(float(b) for b in buckets))
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def buckets(self) -> list[tuple[str, float]]:
        """``(upper bound, cumulative count)`` pairs, ending with ``+Inf``."""
        rows: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            rows.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
        return rows


class GateMetrics:
    """A Prometheus collector for one gate, registered on its own registry (or the one given)."""

    def __init__(self, gate: Gate, *, registry: Any = None, namespace: str = "vramgate") -> None:
        try:
            from prometheus_client import CollectorRegistry
        except ImportError:
            raise ConfigError("metrics need prometheus_client: pip install prometheus_client") from None
        self.gate = gate
        self.namespace = namespace
        self.waits = Histogram(WAIT_BUCKETS)
        self.estimate_ratio = Histogram(RATIO_BUCKETS)
        self._predicted: dict[str, int] = {}
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.registry.register(self)
        gate.add_listener(self.observe)

    # ------------------------------------------------------------------ fed by the gate

    def observe(self, message: Message) -> None:
        """Feed one lifecycle event (the gate calls this for every event it routes)."""
        if isinstance(message, RequestAdmitted):
            self.waits.observe(message.waited_s)
            self._predicted[message.lease_id] = message.plan.requirement.vram_mb
        elif isinstance(message, RunFinished):
            predicted = self._predicted.pop(message.lease_id, None)
            best = message.observed.best_mb()
            if predicted and best is not None:
                self.estimate_ratio.observe(best / predicted)

    # ------------------------------------------------------------------ exposition

    @property
    def content_type(self) -> str:
        from prometheus_client import CONTENT_TYPE_LATEST

        return str(CONTENT_TYPE_LATEST)

    def render(self) -> bytes:
        """The registry in Prometheus' text format."""
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        ns = self.namespace
        stats = self.gate.statistics()
        labels = ["device", "gpu"]
        gauges = {
            "capacity": "Device memory",
            "free": "Memory admission may still grant",
            "reserved": "Memory reserved by running leases",
            "others": "Memory used by everything but this gate's leases",
            "margin": "Safety margin kept free",
            "resident": "Model weights resident on the device (loaded by the server, kept between runs)",
            "measured_used": "Used memory in the latest sample",
        }
        for name, text in gauges.items():
            family = GaugeMetricFamily(f"{ns}_device_{name}_bytes", text, labels=labels)
            for device in stats.devices:
                value = _device_mb(device, name)
                if value is not None:
                    family.add_metric([str(device.ledger.index), device.ledger.gpu], float(value * MIB))
            yield family
        leases = GaugeMetricFamily(f"{ns}_device_leases", "Leases running on the device", labels=labels)
        for device in stats.devices:
            leases.add_metric([str(device.ledger.index), device.ledger.gpu], float(device.ledger.leases))
        yield leases
        models = GaugeMetricFamily(
            f"{ns}_resident_model_bytes",
            "Weights of a model resident on a device",
            labels=[*labels, "model", "owner", "dtype"],
        )
        for device in stats.devices:
            for model in device.ledger.resident:
                key = [str(device.ledger.index), device.ledger.gpu, model.model, model.owner, model.dtype]
                models.add_metric(key, float(model.vram_mb * MIB))
        yield models
        host = stats.host
        if host is not None and host.capacity_mb is not None:
            for name, value in (
                ("capacity", host.capacity_mb),
                ("free", host.free_mb),
                ("reserved", host.reserved_mb),
                ("resident", host.resident_mb),
                ("others", host.others_mb),
                ("margin", host.margin_mb),
            ):
                yield GaugeMetricFamily(f"{ns}_host_ram_{name}_bytes", f"Host RAM ledger: {name}", value=value * MIB)
        yield GaugeMetricFamily(f"{ns}_queue_length", "Requests waiting for admission", value=stats.queue_length)
        yield GaugeMetricFamily(f"{ns}_queue_limit", "Most requests that may wait", value=stats.queue_limit)
        yield GaugeMetricFamily(f"{ns}_running", "Leases held", value=stats.running)
        if stats.log is not None:
            degraded = 1.0 if stats.log.degraded else 0.0
            yield GaugeMetricFamily(f"{ns}_log_degraded", "1 when the message log cannot be written", value=degraded)
        counters = {
            "requests_submitted": ("Requests the gate accepted", stats.submitted),
            "admissions": ("Leases granted", stats.admitted),
            "rejections": ("Requests rejected", stats.rejected),
            "ooms": ("Runs that ended out of memory", stats.ooms),
            "oom_retries": ("Re-planned retries after an out-of-memory error", stats.oom_retries),
            "cleanups": ("Cleanups run", stats.cleanups),
            "cleanup_freed_bytes": ("Memory freed by cleanups", stats.cleanup_freed_mb * MIB),
            "evictions": ("Resident models admission ordered out to make room", stats.evictions),
        }
        for name, (text, value) in counters.items():
            yield CounterMetricFamily(f"{ns}_{name}", text, value=float(value))
        ended = CounterMetricFamily(f"{ns}_requests_ended", "Requests that ended, by state", labels=["state"])
        for state in ENDED_STATES:
            ended.add_metric([state], float(getattr(stats, state)))
        yield ended
        for name, text, histogram in (
            ("wait_seconds", "Time from submission to admission", self.waits),
            ("estimate_ratio", "Observed over predicted peak VRAM of finished runs", self.estimate_ratio),
        ):
            yield HistogramMetricFamily(f"{ns}_{name}", text, buckets=histogram.buckets(), sum_value=histogram.sum)


def _device_mb(device: DeviceStatistics, name: str) -> int | None:
    if name == "measured_used":
        return device.measured_used_mb
    value: int = getattr(device.ledger, f"{name}_mb")
    return value


__all__ = ["GateMetrics", "Histogram", "RATIO_BUCKETS", "WAIT_BUCKETS"]
