"""Resident models and the host RAM ledger: what a server keeps loaded between runs, and what admission orders.

A server process loads a model's weights once and keeps them between runs; its requests of that model share
them. It tells admission with :class:`ModelLoaded` and :class:`ModelUnloaded`. Admission counts those weights
as *resident* on the device (not as others' use): a request of that process and model reserves only its working
memory plus the weights that are not resident there. When admission needs the room, it orders the least
recently used idle model out with :class:`EvictModel`; the server unloads it and declares it unloaded, and the
ledger counts the memory free once a sample taken after the unload shows it.

A model is named by ``(device, owner, model, dtype)``: ``owner`` is the process that holds it (``""``: the
process that embeds the gate), ``model`` the model profile's name as plans name it (``RunParams.model``),
``dtype`` the DiT weights' dtype. ``vram_mb`` is what the weights hold on the device, ``ram_mb`` what the
process keeps of them in host RAM (offloaded weights, a CPU text encoder).
"""

from __future__ import annotations

from vramgate.messages._base import MB, Ident, Message, Seconds
from vramgate.messages.requests import ParamDtype


class ModelLoaded(Message, frozen=True):
    """A process holds a model's weights loaded on a device (declared again, the entry's figures are updated).

    ``evictable``: whether its holder carries out eviction orders (a model that is not is never ordered out).
    """

    device: int
    model: str
    vram_mb: MB
    ram_mb: MB = 0
    owner: Ident = ""
    dtype: ParamDtype = "bf16"
    components: tuple[str, ...] = ()
    evictable: bool = True


class ModelUnloaded(Message, frozen=True):
    """A process unloaded a model from a device (for an eviction admission ordered, or of its own accord)."""

    device: int
    model: str
    owner: Ident = ""
    dtype: ParamDtype = "bf16"
    reason: str = ""


class EvictModel(Message, frozen=True):
    """Admission's order: unload this idle model to make room for ``for_request`` (the least recently used first).

    The holder carries it out and answers :class:`ModelUnloaded`; until then the model stays resident.
    """

    device: int
    model: str
    vram_mb: MB
    ram_mb: MB = 0
    owner: Ident = ""
    dtype: ParamDtype = "bf16"
    for_request: Ident = ""
    reason: str = ""


class ResidentModel(Message, frozen=True):
    """A model resident on a device, as statistics show it and snapshots keep it.

    ``leases`` counts the running leases that use its weights (it is not evicted while any do); ``last_used`` is
    when a lease last began or ended with it, by which the least recently used is evicted first; ``evicting``
    says an eviction was ordered and not yet answered.
    """

    device: int
    model: str
    vram_mb: MB
    ram_mb: MB = 0
    owner: Ident = ""
    dtype: ParamDtype = "bf16"
    components: tuple[str, ...] = ()
    loaded_at: Seconds = 0.0
    last_used: Seconds = 0.0
    leases: int = 0
    evicting: bool = False
    evictable: bool = True


class HostLedgerStatistics(Message, frozen=True):
    """The host RAM ledger: ``free_mb = capacity - margin - others - resident - reserved`` (never negative).

    ``capacity_mb`` is ``None`` while no sample or configuration gave the host's RAM: then host RAM bounds
    nothing. ``others_mb`` is the host's measured use by everything but the leases and resident models this
    system accounts for; ``unloading_mb`` what unloaded models held until a sample shows it gone.
    """

    capacity_mb: MB | None
    margin_mb: MB
    reserved_mb: MB
    resident_mb: MB
    others_mb: MB
    free_mb: MB
    leases: int
    sample_age_s: float | None
    unloading_mb: MB = 0
    permanent_mb: MB = 0
    attainable_mb: MB | None = None
