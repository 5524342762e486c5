"""How admission queues, places and budgets: the ``[admission]`` section of a gate's configuration.

One struct, one set of defaults, for everything that runs the admission core: the gate (``[admission]`` in its
TOML file decodes straight into it), the simulator's vramgate policy, replay (the log header records it) and the
CLI. The names are the ones users write in the TOML file; a name this struct had before (``aging``) is refused
with the name to use instead (:func:`renamed`).

How long runs last (``[run] time_scale`` and ``min_seconds``) is the run's concern, not admission's: the gate
hands them to :class:`~vramgate.policy.admission.AdmissionCore` from ``[run]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from vramgate._sections import PositiveSeconds, Seconds, Section, Size, check_size, parse_size_mb
from vramgate.policy.ledger import default_margin_mb

#: How admission chooses devices (see :mod:`vramgate.policy.admission`).
Placement = Literal["earliest_finish", "best_fit", "spread"]
PLACEMENTS: tuple[Placement, ...] = ("earliest_finish", "best_fit", "spread")

#: Names a recorded or written ``[admission]`` may still carry, and the name each one is now.
RENAMED = {"aging": "aging_per_s", "time_scale": "run.time_scale", "min_run_s": "run.min_seconds"}


class AdmissionConfig(Section, frozen=True):
    """How admission queues and places requests (``[admission]``).

    ``stale_after_s``: a device whose latest sample is older admits nothing (``None``: samples are not required,
    and a device never sampled counts as empty). ``aging_per_s``: priority points a waiting request gains per
    second. ``others_decay_s``: the half-life with which a drop in others' measured use is believed (a rise is at
    once). ``permanent_after_s``: others' use that has not come free once in this long counts as never leaving.
    """

    section: ClassVar[str] = "admission"
    queue_limit: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 1000
    #: Safety margin per device; default the larger of 1 GiB and ``margin_fraction`` of capacity.
    margin: Size | None = None
    margin_fraction: Annotated[float, msgspec.Meta(ge=0.0, lt=1.0)] = 0.05
    stale_after_s: PositiveSeconds | None = 10.0
    aging_per_s: Annotated[float, msgspec.Meta(ge=0.0, le=1e6)] = 0.1
    #: Others' memory that has not come free once in this many seconds counts as never leaving: a plan that needs
    #: it is never queued on that device (nowhere: the request is rejected ``does_not_fit``).
    permanent_after_s: Seconds = 600.0
    placement: Placement = "earliest_finish"
    backfill: bool = True
    #: Waiting requests examined behind the head per scheduling pass (bounds each decision).
    backfill_depth: Annotated[int, msgspec.Meta(ge=0, le=10_000_000)] = 256
    others_decay_s: Seconds = 10.0
    retry_after_default_s: PositiveSeconds = 1.0
    min_retry_after_s: Seconds = 0.1
    #: Host RAM the runs may use in total (offloaded weights live there); default what the host has.
    ram_budget: Size | None = None
    #: Safety margin of the host RAM ledger; default as a device's of the host's RAM.
    ram_margin: Size | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.placement not in PLACEMENTS:
            raise ValueError(f"admission.placement: {self.placement!r} is not one of {', '.join(PLACEMENTS)}")
        check_size(self.margin, "admission.margin")
        check_size(self.ram_budget, "admission.ram_budget")
        check_size(self.ram_margin, "admission.ram_margin")

    def margin_mb(self, capacity_mb: int) -> int:
        """The safety margin of a device of ``capacity_mb``: ``margin``, else the larger of 1 GiB and
        ``margin_fraction`` of the capacity."""
        if self.margin is not None:
            return parse_size_mb(self.margin, field="admission.margin")
        return default_margin_mb(capacity_mb, fraction=self.margin_fraction)

    def ram_margin_mb(self) -> int | None:
        """``ram_margin`` in MiB, or ``None`` when it is not set."""
        return None if self.ram_margin is None else parse_size_mb(self.ram_margin, field="admission.ram_margin")

    def ram_budget_mb(self) -> int | None:
        """``ram_budget`` in MiB, or ``None`` when it is not set."""
        return None if self.ram_budget is None else parse_size_mb(self.ram_budget, field="admission.ram_budget")


def renamed(raw: Mapping[str, Any], *, section: str = "admission") -> tuple[str, str] | None:
    """``(old, new)`` for the first key of ``raw`` that is an old name, or ``None``."""
    for old, new in RENAMED.items():
        if old in raw:
            return f"{section}.{old}", new if "." in new else f"{section}.{new}"
    return None


def upgrade(raw: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
    """A recorded admission config (a log header's) in today's names, and the run timing it held.

    Logs written before the rename recorded ``aging``, ``time_scale`` and ``min_run_s`` in the admission
    core's config; their values are kept, so that such a log still replays to the same decisions.
    """
    current = dict(raw)
    timing: dict[str, float] = {}
    if "aging" in current:
        current.setdefault("aging_per_s", current.pop("aging"))
    for old, new in (("time_scale", "time_scale"), ("min_run_s", "min_run_s")):
        if old in current:
            timing[new] = float(current.pop(old))
    return current, timing


DEFAULT_ADMISSION = AdmissionConfig()
