"""The host RAM ledger: capacity, safety margin, others' use and the host RAM reservations granted.

Like a device's (:class:`~vramgate.policy.ledger.DeviceLedger`), it never over-commits:
``free = capacity - margin - others - resident - reserved``, and :meth:`HostLedger.reserve` refuses more. A
lease reserves its requirement's host RAM (offloaded weights, pinned buffers, a CPU text encoder, decoded
video; less the weights a resident model of its process keeps in RAM); resident models hold what they keep in
RAM between runs.

Its figures come from the monitor's :class:`~vramgate.messages.resources.HostSample` (psutil): the capacity is
the host's RAM (or the container's limit, when lower; ``capacity_mb`` instead, when configured), the
measured use is ``ram_used_mb`` (total less available), and this process's resident set
(``process_rss_mb``) tells its own runs' memory from others', as ``torch.reserved`` does on a device. Until a
sample or the configuration gives a capacity the host's RAM is unknown, and the ledger bounds nothing.
"""

from __future__ import annotations

from vramgate.errors import HostRamDoesNotFit
from vramgate.messages.residency import HostLedgerStatistics
from vramgate.messages.resources import HostSample
from vramgate.policy.ledger import Ledger, default_margin_mb

#: What ``free_mb`` says while the host's RAM is unknown: nothing is bounded by it.
UNBOUNDED_MB = 1 << 40


class HostLedger(Ledger):
    """The host's RAM ledger. Plain state: time comes in as arguments, samples as messages."""

    def __init__(
        self,
        capacity_mb: int | None = None,
        margin_mb: int | None = None,
        *,
        others_decay_s: float = 10.0,
        permanent_after_s: float = 600.0,
    ) -> None:
        self._configured_capacity = capacity_mb
        self._configured_margin = margin_mb
        capacity = capacity_mb if capacity_mb is not None else 0
        super().__init__(
            capacity,
            self._margin_for(capacity),
            others_decay_s=others_decay_s,
            permanent_after_s=permanent_after_s,
        )

    def _margin_for(self, capacity_mb: int) -> int:
        if self._configured_margin is not None:
            return self._configured_margin
        return default_margin_mb(capacity_mb) if capacity_mb > 0 else 0

    @property
    def known(self) -> bool:
        """Whether the host's RAM is known (configured or sampled): only then does it bound admission."""
        return self.capacity_mb > 0

    def free_mb(self, now: float) -> int:
        """What host RAM reservations can take now (``UNBOUNDED_MB`` while the host's RAM is unknown)."""
        if not self.known:
            return UNBOUNDED_MB
        return max(0, self.headroom_mb())

    def attainable_or_none(self) -> int | None:
        """The most reservations can ever have here, or ``None`` while the host's RAM is unknown."""
        return self.attainable_mb if self.known else None

    def _check_fits(self, lease_id: str, mb: int, now: float) -> None:
        free = self.free_mb(now)
        if mb > free:
            raise HostRamDoesNotFit(
                f"host RAM: {mb} MiB does not fit in {free} MiB free", needed_ram_mb=mb, available_ram_mb=free
            )

    def observe(self, sample: HostSample, at: float) -> None:
        """Take a host sample measured at ``at``. A sample older than the latest one is ignored."""
        previous_at = self.sample_at
        if previous_at is not None and at < previous_at:
            return
        self.sample_at = at
        self._drain(at)
        total = sample.ram_total_mb
        configured = self._configured_capacity
        if total > 0 and configured is None:
            self.capacity_mb = total
            self.margin_mb = min(self._margin_for(self.capacity_mb), max(0, self.capacity_mb - 1))
        used = sample.ram_used_mb
        self._take(at, previous_at, used, sample.process_rss_mb)

    def statistics(self, now: float) -> HostLedgerStatistics:
        return HostLedgerStatistics(
            capacity_mb=self.capacity_mb if self.known else None,
            margin_mb=self.margin_mb,
            reserved_mb=self.reserved_mb,
            resident_mb=self.resident_mb,
            others_mb=self.others_mb,
            free_mb=min(self.free_mb(now), UNBOUNDED_MB),
            leases=self.leases,
            sample_age_s=self.sample_age_s(now),
            unloading_mb=self.unloading_mb,
            permanent_mb=self.permanent_mb,
            attainable_mb=self.attainable_or_none(),
        )
