"""The gate's statistics: per-device ledgers and measurements, the queue, and counters since it opened."""

from __future__ import annotations

from vramgate.messages._base import MB, Message
from vramgate.messages.admission import DeviceLedgerStatistics
from vramgate.messages.log import LogStatistics
from vramgate.messages.residency import HostLedgerStatistics


class DeviceStatistics(Message, frozen=True):
    """One device: its admission ledger and the latest measurement."""

    ledger: DeviceLedgerStatistics
    simulated: bool = False
    measured_used_mb: MB | None = None
    measured_free_mb: MB | None = None


class GateStatistics(Message, frozen=True):
    """A snapshot of a gate. Counters count since the gate opened; waits are in seconds.

    ``estimate_ratio_*`` are observed/predicted VRAM of finished runs (1.0 is a perfect estimate).
    ``queue_stalled_s``: how long requests have waited while no lease runs on any device the first of them could
    use (the queue is not moving), ``None`` when it is empty or moving; ``stall_reason`` what that request
    waits for. ``log`` is the message log's recorder (``None`` without one); ``log.degraded`` says recording
    stopped (a full disk, say) while the gate goes on. ``host`` is admission's host RAM ledger; each device's
    ``ledger.resident`` lists the models resident there, and ``evictions`` counts the evictions ordered.
    """

    devices: tuple[DeviceStatistics, ...]
    queue_length: int
    queue_limit: int
    running: int
    tickets: int
    submitted: int
    admitted: int
    rejected: int
    completed: int
    failed: int
    cancelled: int
    timed_out: int
    ooms: int
    oom_retries: int
    cleanups: int
    cleanup_freed_mb: int
    mean_wait_s: float
    max_wait_s: float
    estimate_ratio_p50: float | None = None
    estimate_ratio_max: float | None = None
    queue_stalled_s: float | None = None
    stall_reason: str = ""
    log: LogStatistics | None = None
    host: HostLedgerStatistics | None = None
    evictions: int = 0
