"""Which plan each device would run for a request, and why a request that fits nowhere is rejected."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from vramgate.messages.admission import ANY_DEVICE, SubmitRequest
from vramgate.messages.lifecycle import RejectCode, RequestRejected
from vramgate.messages.plans import Plan
from vramgate.policy.gpus import GpuCatalog
from vramgate.policy.ledger import DeviceConfig, DeviceLedger, default_margin_mb

#: Re-optimizes a plan made for another GPU for ``device`` within ``budget_mb``; ``None`` when nothing fits.
Reoptimizer = Callable[[Plan, DeviceConfig, int], "Plan | None"]


class PlanResolver:
    """Resolves a request's plans onto the devices (by position) and judges whether they can ever fit."""

    def __init__(
        self,
        devices: Sequence[DeviceConfig],
        ledgers: Sequence[DeviceLedger],
        catalog: GpuCatalog,
        reoptimize: Reoptimizer | None,
    ) -> None:
        self._devices = tuple(devices)
        self._ledgers = tuple(ledgers)
        self._catalog = catalog
        self._reoptimize = reoptimize
        self._keys: dict[str, str] = {}
        self._gpu_keys = [self._gpu_key(d.gpu) for d in self._devices]
        #: For the names a request's plans came under: the name each device's plan is under (``None``: none).
        self._routes: dict[tuple[str, ...], tuple[str | None, ...]] = {}

    def resolve(self, message: SubmitRequest) -> tuple[Plan | None, ...]:
        """The plan each device would run, by index, GPU name, ``*``, then (with ``fallback``) another GPU's."""
        plans = message.plans
        if len(plans) == 1 and ANY_DEVICE in plans:  # one plan for every device
            return (plans[ANY_DEVICE],) * len(self._devices)
        names = tuple(plans)
        route = self._routes.get(names)
        if route is None:
            if len(self._routes) >= 4096:  # names come from requests: keep the memo bounded
                self._routes.clear()
            route = self._routes[names] = self._route(names)
        resolved = [None if name is None else plans[name] for name in route]
        if message.fallback and None in route:
            # A fallback depends on what the device can take now: worked out anew, once per kind of GPU.
            fallbacks: dict[str, Plan | None] = {}
            given = tuple(plans.values())
            for pos, name in enumerate(route):
                if name is None:
                    gpu = self._gpu_keys[pos]
                    if gpu not in fallbacks:
                        fallbacks[gpu] = self._fallback(given, pos)
                    resolved[pos] = fallbacks[gpu]
        return tuple(resolved)

    def _route(self, names: tuple[str, ...]) -> tuple[str | None, ...]:
        """The name each device's plan is under (by index, GPU name, then ``*``), ``None`` where there is none."""
        by_index: dict[int, str] = {}
        by_gpu: dict[str, str] = {}
        anywhere: str | None = None
        for name in names:
            if name == ANY_DEVICE:
                anywhere = name
            elif name.isdigit():
                by_index[int(name)] = name
            else:
                by_gpu[self._gpu_key(name)] = name
        route: list[str | None] = []
        for pos, device in enumerate(self._devices):
            under = by_index.get(device.index)
            if under is None:
                under = by_gpu.get(self._gpu_keys[pos], anywhere)
            route.append(under)
        return tuple(route)

    def _fallback(self, plans: tuple[Plan, ...], pos: int) -> Plan | None:
        device = self._devices[pos]
        budget = self._ledgers[pos].attainable_mb
        if self._reoptimize is not None:
            made_for = sorted(plans, key=lambda p: (self._made_for_mb(p), p.requirement.vram_mb))
            bigger = [p for p in made_for if self._made_for_mb(p) >= device.capacity_mb]
            source = bigger[0] if bigger else made_for[-1]
            return self._reoptimize(source, device, budget)
        fitting = [p for p in plans if p.requirement.vram_mb <= budget]
        if not fitting:
            return None
        return min(fitting, key=lambda p: (-p.requirement.vram_mb, p.requirement.estimated_time_seconds))

    def _made_for_mb(self, plan: Plan) -> int:
        """The memory of the GPU a plan was made for: its budget, else its GPU's size, else what it needs."""
        if plan.budget_mb is not None:
            return plan.budget_mb
        name = plan.gpu or plan.requirement.gpu
        gpu = self._catalog.find(name) if name else None
        return gpu.memory_mib if gpu is not None else plan.requirement.vram_mb

    def _gpu_key(self, name: str) -> str:
        key = self._keys.get(name)
        if key is None:
            found = self._catalog.find(name)
            key = found.name if found is not None else "".join(ch for ch in name.lower() if ch.isalnum())
            if len(self._keys) < 4096:  # names come from requests: keep the memo bounded
                self._keys[name] = key
        return key

    def fits_ever(self, plans: Sequence[Plan | None], *, with_lost: bool) -> bool:
        """Whether some devices can ever take one of ``plans``: within what their reservations can ever have
        (the ledger's ``attainable_mb``: memory others never gave back does not count)."""
        groups: dict[int, int] = {}
        for pos, plan in enumerate(plans):
            ledger = self._ledgers[pos]
            if plan is None or (ledger.lost and not with_lost) or plan.requirement.vram_mb > ledger.attainable_mb:
                continue
            groups[id(plan)] = groups.get(id(plan), 0) + 1
            if groups[id(plan)] >= plan.requirement.world_size:
                return True
        return False

    def never_fits(self, plans: tuple[Plan | None, ...], message: SubmitRequest) -> RequestRejected | None:
        if self.fits_ever(plans, with_lost=False):
            return None
        code: RejectCode = "device_lost" if self.fits_ever(plans, with_lost=True) else "does_not_fit"
        candidates = [p for p in plans if p is not None] or list(message.plans.values())
        return self.rejection(message.request_id, code, candidates)

    def rejection(self, request_id: str, code: RejectCode, plans: Sequence[Plan]) -> RequestRejected:
        best = min(plans, key=lambda p: (p.requirement.vram_mb, p.requirement.world_size))
        need = best.requirement.vram_mb
        world = best.requirement.world_size
        live = sum(1 for ledger in self._ledgers if not ledger.lost)
        if code == "device_lost":
            reason = f"the devices this request fits on are lost ({need} MiB on {world} GPU(s))"
        elif world > live:
            reason = f"the smallest plan needs {world} GPUs; {live} are available"
        else:
            live_ledgers = [ledger for ledger in self._ledgers if not ledger.lost]
            made_for = best.gpu or best.requirement.gpu
            if made_for:  # the devices of the GPU the plan was made for, when there are any
                key = self._gpu_key(made_for)
                mine = [ledger for pos, ledger in enumerate(self._ledgers) if self._gpu_keys[pos] == key]
                live_ledgers = [ledger for ledger in mine if not ledger.lost] or live_ledgers
            best_ledger = max(live_ledgers, key=lambda ledger: ledger.attainable_mb, default=None)
            largest = best_ledger.attainable_mb if best_ledger is not None else 0
            reason = f"the smallest plan needs {need} MiB per GPU; the largest device budget is {largest} MiB"
            if best_ledger is not None and best_ledger.permanent_mb:
                reason += (
                    f" (device {best_ledger.index}: capacity {best_ledger.capacity_mb} less the margin "
                    f"{best_ledger.margin_mb} and {best_ledger.permanent_mb} MiB that others never gave back)"
                )
        return RequestRejected(
            request_id=request_id,
            code=code,
            reason=reason,
            needed_mb=need,
            smallest_gpu=self._smallest_gpu(need),
            best_plan=best,
        )

    def _smallest_gpu(self, need_mb: int) -> str | None:
        for gpu in sorted(self._catalog.all(), key=lambda g: (g.memory_mib, g.name)):
            if gpu.memory_mib - default_margin_mb(gpu.memory_mib) >= need_mb:
                return gpu.name
        return None
