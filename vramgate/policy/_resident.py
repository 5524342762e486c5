"""Resident models in the admission core: which weights each device holds, who uses them, and what to evict.

Sans-io, like the core that owns it. A model is resident on a device from its :class:`ModelLoaded` to its
:class:`ModelUnloaded`; its memory is held on the device's ledger (and what it keeps in host RAM on the host
ledger) under its key, so that it is counted as resident, not as others' use.

A request of process ``owner`` whose plan runs model ``m`` in dtype ``d`` uses the weights of the resident
``(owner, m, d)`` on the device it runs on: its reservation there is its plan's ``vram_mb`` less the plan's
weights (the requirement's ``dit_weights``, ``text_encoder``, ``vae_weights`` and ``lora`` components) that the
resident model holds. Load time: the estimate's time assumes the weights loaded (as the published timings it is
calibrated on do), and its ``load_time_s`` is what a cold start adds. Once the model is resident on
some device, a device where it is not (or only in part) is expected to take that much longer (in proportion to
the weights it lacks), so placement prefers the warm device when that finishes sooner; while it is resident
nowhere, every device pays the same and nothing changes. Plans of several GPUs reserve in full (their shards
are not matched to resident models).

Eviction. When a waiting request fits nowhere now, and some device would take it once idle resident models
there (no running lease uses them; not its own model; their holder evicts) are unloaded, the least recently
used of them are ordered out, on the device that needs the fewest MiB evicted; the first such request in queue
order is served (one per decision). Memory already ordered out counts as coming:
nothing more is ordered while it suffices. Host RAM likewise: resident models' RAM is ordered out, least
recently used first, when host RAM is what the request lacks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from vramgate.messages.plans import Plan
from vramgate.messages.residency import EvictModel, ModelLoaded, ModelUnloaded, ResidentModel
from vramgate.policy._placement import Group, groups_of
from vramgate.policy.host_ledger import HostLedger
from vramgate.policy.ledger import DeviceLedger

#: The requirement's components that are a model's weights on the device.
WEIGHT_COMPONENTS = frozenset({"dit_weights", "text_encoder", "vae_weights", "lora"})

#: (owner, model, dtype)
ModelKey = tuple[str, str, str]


def weights_mb(plan: Plan) -> int:
    """The plan's weights on the device (what a resident model of it can hold for it)."""
    return sum(c.vram_mb for c in plan.requirement.components if c.name in WEIGHT_COMPONENTS)


def ram_weights_mb(plan: Plan) -> int:
    """The plan's weights in host RAM (offloaded weights)."""
    return sum(c.ram_mb for c in plan.requirement.components if c.name in WEIGHT_COMPONENTS)


def load_seconds(plan: Plan) -> float:
    """The time a cold start of the plan adds: reading its weights (the requirement's ``load_time_s``)."""
    return plan.requirement.load_time_s


def model_key(plan: Plan, owner: str) -> ModelKey:
    return (owner, plan.params.model, plan.params.options.dit_dtype)


class _Entry:
    __slots__ = ("evicting", "last_used", "ledger_key", "loaded", "loaded_at", "pos", "users")

    def __init__(self, loaded: ModelLoaded, pos: int, now: float) -> None:
        self.loaded = loaded
        self.pos = pos
        self.loaded_at = now
        self.last_used = now
        self.users: set[str] = set()
        self.evicting = False
        self.ledger_key = f"{loaded.owner}|{loaded.model}|{loaded.dtype}"

    @property
    def key(self) -> ModelKey:
        return (self.loaded.owner, self.loaded.model, self.loaded.dtype)

    def record(self) -> ResidentModel:
        m = self.loaded
        return ResidentModel(
            device=m.device,
            model=m.model,
            vram_mb=m.vram_mb,
            ram_mb=m.ram_mb,
            owner=m.owner,
            dtype=m.dtype,
            components=m.components,
            loaded_at=max(0.0, self.loaded_at),
            last_used=max(0.0, self.last_used),
            leases=len(self.users),
            evicting=self.evicting,
            evictable=m.evictable,
        )


class Residency:
    """The resident models of every device, by position, and the leases that use them."""

    def __init__(self, ledgers: Sequence[DeviceLedger], host: HostLedger, position: dict[int, int]) -> None:
        self._ledgers = ledgers
        self._host = host
        self._position = position
        self._by_key: dict[ModelKey, dict[int, _Entry]] = {}
        self._uses: dict[str, _Entry] = {}
        self.evictions = 0

    def __bool__(self) -> bool:
        return bool(self._by_key)

    def entries(self) -> Iterable[_Entry]:
        for per in self._by_key.values():
            yield from per.values()

    def on(self, pos: int) -> tuple[ResidentModel, ...]:
        """The models resident on position ``pos``, least recently used first."""
        found = [e for e in self.entries() if e.pos == pos]
        return tuple(e.record() for e in sorted(found, key=lambda e: (e.last_used, e.ledger_key)))

    def entry(self, key: ModelKey, pos: int) -> _Entry | None:
        per = self._by_key.get(key)
        return None if per is None else per.get(pos)

    # ------------------------------------------------------------------ declarations

    def load(self, message: ModelLoaded, now: float) -> _Entry | None:
        """Count a declared load; ``None`` when the device is not one of admission's."""
        pos = self._position.get(message.device)
        if pos is None:
            return None
        key = (message.owner, message.model, message.dtype)
        per = self._by_key.setdefault(key, {})
        entry = per.get(pos)
        if entry is None:
            entry = per[pos] = _Entry(message, pos, now)
        else:
            entry.loaded = message
            entry.last_used = max(entry.last_used, now)
        self._ledgers[pos].load(entry.ledger_key, message.vram_mb, now)
        host_key = f"{message.device}|{entry.ledger_key}"
        if message.ram_mb:
            self._host.load(host_key, message.ram_mb, now)
        else:
            self._host.unload(host_key, now)
        return entry

    def unload(self, message: ModelUnloaded, now: float) -> bool:
        """Count a declared unload; ``False`` when nothing was resident under that name."""
        pos = self._position.get(message.device)
        key = (message.owner, message.model, message.dtype)
        per = self._by_key.get(key)
        if pos is None or per is None or pos not in per:
            return False
        entry = per.pop(pos)
        if not per:
            del self._by_key[key]
        for lease_id in entry.users:
            self._uses.pop(lease_id, None)
        self._ledgers[pos].unload(entry.ledger_key, now)
        self._host.unload(f"{entry.loaded.device}|{entry.ledger_key}", now)
        return True

    # ------------------------------------------------------------------ what a request reserves

    def discount(self, plan: Plan, owner: str, pos: int) -> tuple[int, float]:
        """What the plan does not reserve on ``pos`` (MiB), and the time loading what is not resident adds there
        (nothing while the model is resident nowhere)."""
        key = model_key(plan, owner)
        if plan.requirement.world_size != 1 or key not in self._by_key:
            return 0, 0.0
        load = load_seconds(plan)
        entry = self.entry(key, pos)
        if entry is None or entry.evicting:
            return 0, load
        weights = weights_mb(plan)
        held = min(entry.loaded.vram_mb, weights)
        if held <= 0:
            return 0, load
        return held, load * (1.0 - held / weights)

    def ram_need(self, plan: Plan, owner: str, positions: Sequence[int]) -> int:
        """The host RAM a plan reserves on ``positions``: its ``ram_mb`` less what a resident model keeps."""
        need = plan.requirement.ram_mb
        if not self._by_key or len(positions) != 1:
            return need
        entry = self.entry(model_key(plan, owner), positions[0])
        if entry is None or entry.evicting:
            return need
        return need - min(entry.loaded.ram_mb, ram_weights_mb(plan), need)

    def ram_held(self, plan: Plan, owner: str) -> int:
        """The most of the plan's host RAM a resident model of its process could hold for it, on any device."""
        per = self._by_key.get(model_key(plan, owner))
        if not per:
            return 0
        weights = ram_weights_mb(plan)
        return max((min(e.loaded.ram_mb, weights) for e in per.values() if not e.evicting), default=0)

    def groups(self, plans: Sequence[Plan | None], owner: str) -> tuple[Group, ...]:
        """The request's groups (see :func:`groups_of`), split by what resident weights save on each device."""
        plain = groups_of(plans)
        if not self._by_key:
            return plain
        split: list[Group] = []
        for group in plain:
            if group.world != 1 or model_key(group.plan, owner) not in self._by_key:
                split.append(group)
                continue
            parts: dict[tuple[int, float], list[int]] = {}
            for pos in group.positions:
                parts.setdefault(self.discount(group.plan, owner, pos), []).append(pos)
            for (held, extra), positions in parts.items():
                split.append(Group(group.plan, group.need_mb - held, 1, tuple(positions), extra))
        return tuple(split)

    # ------------------------------------------------------------------ leases

    def use(self, lease_id: str, plan: Plan, owner: str, positions: Sequence[int], need_mb: int, now: float) -> int:
        """A lease starts on ``positions`` reserving ``need_mb``: it uses the resident weights it did not reserve.
        Returns the MiB of resident weights it uses."""
        if len(positions) != 1 or need_mb >= plan.requirement.vram_mb:
            return 0
        entry = self.entry(model_key(plan, owner), positions[0])
        if entry is None or entry.evicting:
            return 0
        entry.users.add(lease_id)
        entry.last_used = now
        self._uses[lease_id] = entry
        return plan.requirement.vram_mb - need_mb

    def adopt(self, lease_id: str, entry: _Entry, now: float) -> None:
        """A running lease's weights became resident: it uses ``entry`` from now."""
        entry.users.add(lease_id)
        entry.last_used = now
        self._uses[lease_id] = entry

    def uses(self, lease_id: str) -> bool:
        return lease_id in self._uses

    def done(self, lease_id: str, now: float) -> None:
        entry = self._uses.pop(lease_id, None)
        if entry is not None:
            entry.users.discard(lease_id)
            entry.last_used = now

    # ------------------------------------------------------------------ eviction

    def evict_for(
        self,
        request_id: str,
        groups: Sequence[Group],
        owner: str,
        free: Sequence[int],
        usable: Sequence[bool],
        ram_free: int,
    ) -> list[EvictModel] | None:
        """The eviction orders that let a request start now: ``None`` when evicting would not help it (it fits
        already, or no idle models would make room), empty when what is ordered out already makes room."""
        if not self._by_key:
            return None
        every = list(self.entries())
        ram_coming = sum(e.loaded.ram_mb for e in every if e.evicting)
        best: tuple[int, tuple[int, ...]] | None = None
        picks: list[_Entry] = []
        for group in groups:
            own = model_key(group.plan, owner)
            # Host RAM first: the plan's, less what is coming free; else the least recently used idle models'.
            host_short = self.ram_need(group.plan, owner, group.positions[:1]) - ram_free - ram_coming
            host_picks: list[_Entry] = []
            if host_short > 0:
                for e in sorted((e for e in every if e.loaded.ram_mb and e.key != own and _idle(e)), key=_lru):
                    host_picks.append(e)
                    host_short -= e.loaded.ram_mb
                    if host_short <= 0:
                        break
                if host_short > 0:
                    continue  # host RAM stays short whatever is evicted: not now
            options: list[tuple[int, int, list[_Entry]]] = []
            for pos in group.positions:
                if not usable[pos]:
                    continue
                short = group.need_mb - free[pos]
                mine = [e for e in every if e.pos == pos and e.key != own]
                short -= sum(e.loaded.vram_mb for e in mine if e.evicting)
                short -= sum(e.loaded.vram_mb for e in host_picks if e.pos == pos)
                chosen: list[_Entry] = []
                for e in sorted((e for e in mine if _idle(e) and e not in host_picks), key=_lru):
                    if short <= 0:
                        break
                    chosen.append(e)
                    short -= e.loaded.vram_mb
                if short <= 0:
                    options.append((sum(e.loaded.vram_mb for e in chosen), pos, chosen))
            if len(options) < group.world:
                continue
            options.sort(key=lambda o: (o[0], o[1]))
            taken = options[: group.world]
            chosen_all = host_picks + [e for o in taken for e in o[2]]
            score = (sum(e.loaded.vram_mb + e.loaded.ram_mb for e in chosen_all), tuple(sorted(o[1] for o in taken)))
            if best is None or score < best:
                best, picks = score, chosen_all
        if best is None:
            return None
        if not picks:
            # It fits now without new orders: evicting helps only when something is already on its way out.
            pending = ram_coming or any(e.evicting for e in every)
            return [] if pending else None
        out: list[EvictModel] = []
        for e in picks:
            e.evicting = True
            self.evictions += 1
            m = e.loaded
            out.append(
                EvictModel(
                    device=m.device,
                    model=m.model,
                    vram_mb=m.vram_mb,
                    ram_mb=m.ram_mb,
                    owner=m.owner,
                    dtype=m.dtype,
                    for_request=request_id,
                    reason=f"room for {request_id}: the least recently used idle model",
                )
            )
        return out

    # ------------------------------------------------------------------ snapshot

    def snapshot(self) -> tuple[ResidentModel, ...]:
        return tuple(e.record() for e in sorted(self.entries(), key=lambda e: (e.pos, e.ledger_key)))

    def restore(self, items: Sequence[ResidentModel]) -> None:
        for item in items:
            loaded = ModelLoaded(
                device=item.device,
                model=item.model,
                vram_mb=item.vram_mb,
                ram_mb=item.ram_mb,
                owner=item.owner,
                dtype=item.dtype,
                components=item.components,
                evictable=item.evictable,
            )
            entry = self.load(loaded, item.loaded_at)
            if entry is not None:
                entry.last_used = item.last_used
                entry.evicting = item.evicting


def _idle(entry: _Entry) -> bool:
    """Whether an entry may be ordered out: its holder evicts, no lease uses it, and no order is out yet."""
    return entry.loaded.evictable and not entry.evicting and not entry.users


def _lru(entry: _Entry) -> tuple[float, str]:
    return (entry.last_used, entry.ledger_key)
