"""The optimizer's search: the plan with the least quality loss, then the least time, that fits a budget.

The search space has two parts:

* memory techniques, which cost time and never quality: on/off options (``free_text_encoder``,
  ``convert_model_dtype``, ``offload_model``, ``t5_cpu``, VAE tiling, ``one_expert_in_ram`` for a model with
  several experts and, on several GPUs, FSDP sharding and Ulysses sequence parallelism)
  and a placement of the DiT (all resident, block offloading with fewer and fewer resident blocks, sequential
  offloading);
* quality points, used only as far as the request's level allows: fewer steps, shorter clips (``4k+1`` frames),
  smaller supported sizes.

For one quality point, a best-first search over the sets of on/off options (cheapest estimated time first) finds
the fastest set that fits; for each set, a bisection over the placement levels finds the least offloading that
fits. Quality points are visited in order of quality loss, and only those whose most memory-saving configuration
fits are searched. The search relies on the estimator being monotone: each technique and each quality reduction
lowers (or keeps) VRAM and each technique raises (or keeps) time; offloading raises (or keeps) host RAM. Every
estimate is memoized for the duration of one search and every tie is broken by a fixed order, so the result is
deterministic.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import msgspec

from vramgate.errors import InvalidParameter
from vramgate.messages.plans import ResolvedOptions, ResourceRequirement, RunParams
from vramgate.messages.requests import RunOptions

#: The on/off techniques in order of time cost per GB saved (cheapest first): this is also the order in which
#: suggestions are listed and their savings attributed.
TOGGLES: tuple[str, ...] = (
    "free_text_encoder",
    "convert_model_dtype",
    "offload_model",
    "t5_fsdp",
    "dit_fsdp",
    "ulysses",
    "t5_cpu",
    "vae_tiling",
    "one_expert_in_ram",
)
#: Pairs of techniques that cannot be combined (``generate.py`` refuses ``--t5_cpu`` with ``--t5_fsdp``).
EXCLUSIVE: tuple[tuple[str, str], ...] = (("t5_cpu", "t5_fsdp"),)
#: Toggles that only exist on a multi-GPU run.
MULTI_GPU: frozenset[str] = frozenset({"t5_fsdp", "dit_fsdp", "ulysses"})
#: Toggles that only exist for a model with several DiT experts.
MULTI_EXPERT: frozenset[str] = frozenset({"one_expert_in_ram"})

#: Weights of the quality loss: one unit per fraction of steps, frames and pixels given up.
W_STEPS = 1.0
W_FRAMES = 2.0
W_PIXELS = 4.0

Placement = tuple[int | None, bool]  # (resident_blocks, sequential_offload)
EstimateFn = Callable[[RunParams], ResourceRequirement]


class Quality(NamedTuple):
    """A quality point: steps, frames and size (a tuple: the search's memo hashes it for every evaluation)."""

    steps: int
    frames: int
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass(frozen=True, slots=True)
class Space:
    """What the search may change, from a base run."""

    base: RunParams
    toggles: tuple[str, ...]
    ulysses_on: int
    placements: tuple[Placement, ...]
    steps: tuple[int, ...]
    frames: tuple[int, ...]
    sizes: tuple[tuple[int, int], ...]

    def valid(self, mask: int) -> bool:
        """Whether ``mask`` turns on no two techniques that exclude each other."""
        for a, b in EXCLUSIVE:
            if (
                a in self.toggles
                and b in self.toggles
                and mask >> self.toggles.index(a) & 1
                and mask >> self.toggles.index(b) & 1
            ):
                return False
        return True

    def maximal_masks(self) -> tuple[int, ...]:
        """The largest valid sets of techniques (all of them, less one of each pair that excludes each other)."""
        full = (1 << len(self.toggles)) - 1
        masks = [full]
        for a, b in EXCLUSIVE:
            if a in self.toggles and b in self.toggles:
                ia, ib = self.toggles.index(a), self.toggles.index(b)
                masks = [m & ~(1 << drop) for m in masks for drop in (ib, ia)]
        return tuple(dict.fromkeys(masks))

    @property
    def base_quality(self) -> Quality:
        return Quality(self.base.steps, self.base.frames, self.base.width, self.base.height)

    def loss(self, q: Quality) -> float:
        b = self.base
        return (
            W_STEPS * (1.0 - q.steps / b.steps)
            + W_FRAMES * (1.0 - q.frames / b.frames)
            + W_PIXELS * (1.0 - q.pixels / (b.width * b.height))
        )


@dataclass(frozen=True, slots=True)
class Candidate:
    """One evaluated configuration: a quality point, a set of toggles (bit mask over ``Space.toggles``) and a
    placement level (index into ``Space.placements``)."""

    quality: Quality
    mask: int
    placement: int
    requirement: ResourceRequirement
    loss: float

    def order(self) -> tuple[float, float, int, int, int, int, int, int]:
        q = self.quality
        return (
            round(self.loss, 9),
            round(self.requirement.estimated_time_seconds, 6),
            self.mask.bit_count(),
            self.mask,
            self.placement,
            -q.pixels,
            -q.frames,
            -q.steps,
        )


@dataclass(slots=True)
class Budget:
    vram_mb: int
    ram_mb: int | None

    def fits(self, r: ResourceRequirement) -> bool:
        return r.vram_mb <= self.vram_mb and (self.ram_mb is None or r.ram_mb <= self.ram_mb)

    def ram_fits(self, r: ResourceRequirement) -> bool:
        return self.ram_mb is None or r.ram_mb <= self.ram_mb

    def excess(self, r: ResourceRequirement) -> int:
        over = max(0, r.vram_mb - self.vram_mb)
        if self.ram_mb is not None:
            over += max(0, r.ram_mb - self.ram_mb)
        return over


@dataclass(slots=True)
class Result:
    best: Candidate | None
    closest: Candidate | None
    evaluator: Search

    @property
    def evaluations(self) -> int:
        return len(self.evaluator.memo)


Key = tuple[Quality, int, int]
#: How close a configuration comes to fitting (smaller is closer): see :func:`_closeness`.
Closeness = tuple[int, int, int, float, float, int]


@dataclass(slots=True)
class Search:
    space: Space
    estimate: EstimateFn
    budget: Budget
    memo: dict[Key, ResourceRequirement | None] = field(default_factory=dict)
    by_quality: dict[Quality, Candidate | None] = field(default_factory=dict)
    levels: dict[Quality, dict[int, int]] = field(default_factory=dict)
    closest: Candidate | None = None
    closest_at: dict[Quality, Candidate] = field(default_factory=dict)  # the closest at each quality point
    closest_key: Closeness | None = None  # how close ``closest`` comes (see _closeness)
    closest_at_key: dict[Quality, Closeness] = field(default_factory=dict)
    full_masks: tuple[int, ...] = ()

    # ------------------------------------------------------------------ evaluation

    def params(self, q: Quality, mask: int, placement: int) -> RunParams:
        space = self.space
        base = space.base
        changes: dict[str, object] = {}
        for i, name in enumerate(space.toggles):
            if mask >> i & 1:
                changes[name] = space.ulysses_on if name == "ulysses" else True
        if placement:
            resident, sequential = space.placements[placement]
            changes["resident_blocks"] = resident
            changes["sequential_offload"] = sequential
        options = msgspec.structs.replace(base.options, **changes) if changes else base.options
        if q == space.base_quality and options is base.options:
            return base
        return msgspec.structs.replace(
            base, steps=q.steps, frames=q.frames, width=q.width, height=q.height, options=options
        )

    def requirement(self, q: Quality, mask: int, placement: int) -> ResourceRequirement | None:
        key = (q, mask, placement)
        try:
            return self.memo[key]
        except KeyError:
            pass
        try:
            found: ResourceRequirement | None = self.estimate(self.params(q, mask, placement))
        except InvalidParameter:
            found = None  # a combination the model does not support (e.g. Ulysses not dividing the heads)
        self.memo[key] = found
        if found is not None:
            cand = Candidate(q, mask, placement, found, self.space.loss(q))
            closeness = _closeness(cand, self.budget)
            if self.closest_key is None or closeness < self.closest_key:
                self.closest, self.closest_key = cand, closeness
            there = self.closest_at_key.get(q)
            if there is None or closeness < there:
                self.closest_at[q] = cand
                self.closest_at_key[q] = closeness
        return found

    def candidate(self, q: Quality, mask: int, placement: int) -> Candidate | None:
        r = self.requirement(q, mask, placement)
        if r is None:
            return None
        return Candidate(q, mask, placement, r, self.space.loss(q))

    # ------------------------------------------------------------------ techniques at one quality point

    def __post_init__(self) -> None:
        self.full_masks = self.space.maximal_masks()

    @property
    def full_mask(self) -> int:
        return self.full_masks[0]

    @property
    def deepest(self) -> int:
        return len(self.space.placements) - 1

    def vram_feasible(self, q: Quality) -> bool:
        """Whether a most memory-saving configuration at ``q`` fits the VRAM budget (a necessary condition)."""
        for mask in self.full_masks:
            r = self.requirement(q, mask, self.deepest)
            if r is not None and r.vram_mb <= self.budget.vram_mb:
                return True
        return False

    def _fits_vram(self, q: Quality, mask: int, placement: int) -> bool:
        r = self.requirement(q, mask, placement)
        return r is not None and r.vram_mb <= self.budget.vram_mb

    def place(self, q: Quality, mask: int) -> Candidate | None:
        """The least offloading of the DiT that makes ``mask`` fit at ``q``, or ``None``."""
        r0 = self.requirement(q, mask, 0)
        if r0 is not None and self.budget.fits(r0):
            return self.candidate(q, mask, 0)
        if r0 is not None and r0.vram_mb <= self.budget.vram_mb:
            return None  # host RAM is short; offloading more only needs more of it
        # With host RAM short too, the bisection below still runs: it finds no plan (offloading needs more RAM),
        # but its VRAM-fitting level is the nearest miss (the host RAM a plan would need).
        last = self.deepest
        if last == 0:
            return None
        fits_vram = self._fits_vram
        # A level at which a subset of these techniques fits VRAM fits with these too (monotone VRAM).
        known = self.levels.setdefault(q, {})
        hi = min((level for sub, level in known.items() if sub & mask == sub), default=-1)
        if hi < 0:
            if not fits_vram(q, mask, last):
                return None
            hi = last
        lo = 0  # lo does not fit VRAM, hi does
        step = 1
        while hi - lo > 1:  # gallop down from hi (subsets usually need about as much offloading) ...
            probe = max(hi - step, lo + 1)
            if fits_vram(q, mask, probe):
                hi = probe
                step *= 2
            else:
                lo = probe
                break
        while hi - lo > 1:  # ... then bisect
            mid = (lo + hi) // 2
            if fits_vram(q, mask, mid):
                hi = mid
            else:
                lo = mid
        known[mask] = hi
        rh = self.requirement(q, mask, hi)
        if rh is None or not self.budget.fits(rh):
            return None
        return self.candidate(q, mask, hi)

    def techniques(self, q: Quality) -> Candidate | None:
        """The fastest technique configuration that fits at ``q`` (best-first over the toggle sets)."""
        if not self.vram_feasible(q):
            return None
        n = len(self.space.toggles)
        r0 = self.requirement(q, 0, 0)
        if r0 is None:
            return None
        heap: list[tuple[float, int, int]] = [(r0.estimated_time_seconds, 0, 0)]
        seen = {0}
        best: Candidate | None = None
        while heap:
            time_s, _, mask = heapq.heappop(heap)
            if best is not None and time_s >= best.requirement.estimated_time_seconds:
                break
            cand = self.place(q, mask)
            if cand is not None and (best is None or cand.order() < best.order()):
                best = cand
            for i in range(n):
                nxt = mask | (1 << i)
                if nxt == mask or nxt in seen or not self.space.valid(nxt):
                    continue
                seen.add(nxt)
                r = self.requirement(q, nxt, 0)
                if r is not None:
                    heapq.heappush(heap, (r.estimated_time_seconds, nxt.bit_count() << n | nxt, nxt))
        return best

    # ------------------------------------------------------------------ quality points

    def fitting(self, q: Quality) -> Candidate | None:
        """:meth:`techniques`, memoized per quality point."""
        try:
            return self.by_quality[q]
        except KeyError:
            found = self.by_quality[q] = self.techniques(q)
            return found

    def trim(self, cand: Candidate) -> Candidate:
        """``cand`` without the techniques that do not bring it closer to fitting (a near miss need not pay for
        techniques that save nothing)."""
        key = _closeness(cand, self.budget)[:3]
        for i in reversed(range(len(self.space.toggles))):
            if not cand.mask >> i & 1:
                continue
            fewer = self.candidate(cand.quality, cand.mask & ~(1 << i), cand.placement)
            if fewer is not None and _closeness(fewer, self.budget)[:3] <= key:
                cand = fewer
        return cand

    def feasible(self, q: Quality) -> bool:
        """Whether some technique configuration fits at ``q`` (cheap when the most memory-saving one decides)."""
        vram_ok = False
        for mask in self.full_masks:
            r = self.requirement(q, mask, self.deepest)
            if r is None or r.vram_mb > self.budget.vram_mb:
                continue
            if self.budget.fits(r):
                return True
            vram_ok = True
        # host RAM is short at full offloading: less offloading may fit
        return vram_ok and self.fitting(q) is not None

    def quality_points(self) -> Candidate | None:
        """The least quality loss (then time) over the quality points the space allows.

        Whether a quality point can fit is monotone: a point below one that fits fits too. So the smallest point
        is tried first (if it does not fit, nothing does), and along each line of (steps, size) the longest clip
        that fits is found by bisection.
        """
        space = self.space
        base = space.base_quality
        at_base = self.fitting(base)
        if at_base is not None:
            return at_base  # no quality loss: nothing can do better
        steps = space.steps
        if len(steps) > 1:
            # Steps change time, rarely memory: keep them only if the estimator says they save memory.
            a = self.requirement(base, self.full_mask, self.deepest)
            b = self.requirement(Quality(steps[-1], base.frames, base.width, base.height), self.full_mask, self.deepest)
            if a is not None and b is not None and (a.vram_mb, a.ram_mb) == (b.vram_mb, b.ram_mb):
                steps = steps[:1]
        frames = space.frames
        smallest_w, smallest_h = space.sizes[-1]
        if not self.feasible(Quality(steps[-1], frames[-1], smallest_w, smallest_h)):
            if len(space.sizes) > 1:  # what a search at the size asked for visits, for the nearest miss
                self.feasible(Quality(steps[-1], frames[-1], base.width, base.height))
            return None
        lines = sorted(
            (
                (round(space.loss(Quality(st, frames[0], w, h)), 9), zi, si)
                for si, st in enumerate(steps)
                for zi, (w, h) in enumerate(space.sizes)
            ),
        )
        best: Candidate | None = None
        for top_loss, zi, si in lines:
            if best is not None and top_loss > round(best.loss, 9):
                break
            w, h = space.sizes[zi]
            st = steps[si]
            if not self.feasible(Quality(st, frames[-1], w, h)):
                continue
            lo, hi = -1, len(frames) - 1  # frames[hi] fits; frames[lo] does not (or lo is -1)
            while hi - lo > 1:
                mid = (lo + hi + 1) // 2 if lo >= 0 else 0
                if self.feasible(Quality(st, frames[mid], w, h)):
                    hi = mid
                else:
                    lo = mid
            cand = self.fitting(Quality(st, frames[hi], w, h))
            if cand is not None and (best is None or cand.order() < best.order()):
                best = cand
        return best


def _closeness(c: Candidate, budget: Budget) -> Closeness:
    """How close a configuration comes to fitting: least excess, then least VRAM, then least loss and time."""
    r = c.requirement
    return (budget.excess(r), r.vram_mb, r.ram_mb, round(c.loss, 9), round(r.estimated_time_seconds, 6), c.mask)


def search(space: Space, estimate: EstimateFn, budget: Budget) -> Result:
    """Run the search; ``best`` is the plan to use (``None``: nothing fits), ``closest`` the nearest miss."""
    s = Search(space, estimate, budget)
    base_q = space.base_quality
    r = s.requirement(base_q, 0, 0)
    fits_as_asked = r is not None and budget.fits(r)
    best = s.candidate(base_q, 0, 0) if fits_as_asked else s.quality_points()
    closest = s.closest
    if best is None and s.closest is not None:
        # the nearest miss, trimmed, over the quality points evaluated (a smaller space's search, which
        # visits some of them, never comes closer)
        misses = [s.trim(c) for c in s.closest_at.values()]
        closest = min(misses, key=lambda c: _closeness(c, budget))
    return Result(best=best, closest=closest, evaluator=s)


# ---------------------------------------------------------------------- building the space


def frame_ladder(frames: int, stride: int, floor: int) -> tuple[int, ...]:
    """``frames``, then the shorter ``stride*k+1`` lengths down to ``floor`` (longest first)."""
    out = [frames]
    k = (frames - 2) // stride
    while k >= 0:
        f = stride * k + 1
        if f < floor:
            break
        if f < frames:
            out.append(f)
        k -= 1
    return tuple(out)


def steps_ladder(steps: int, floor: int, count: int = 4) -> tuple[int, ...]:
    """``steps`` and up to ``count`` evenly spaced smaller counts down to ``floor`` (largest first)."""
    if floor >= steps:
        return (steps,)
    values = {steps - round((steps - floor) * i / count) for i in range(count + 1)}
    return tuple(sorted(values, reverse=True))


def size_ladder(width: int, height: int, supported: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """The size asked for, then the smaller supported sizes of the same orientation (largest first)."""
    landscape = width >= height
    smaller = {(w, h) for (w, h) in supported if (w >= h) == landscape and w * h < width * height and w <= width}
    ordered = sorted(smaller, key=lambda s: (-s[0] * s[1], -s[0], -s[1]))
    return ((width, height), *ordered)


def placement_ladder(options: ResolvedOptions, pinned: RunOptions, layers: int) -> tuple[Placement, ...]:
    """The DiT placements the search may use, from the current one to the most offloaded."""
    current: Placement = (options.resident_blocks, options.sequential_offload)
    if options.sequential_offload or pinned.resident_blocks is not None:
        return (current,)
    levels: list[Placement] = [current]
    if pinned.resident_blocks is None:
        top = layers - 1 if options.resident_blocks is None else options.resident_blocks - 1
        levels.extend((k, False) for k in range(top, -1, -1))
    if pinned.sequential_offload is None:
        levels.append((None, True))
    return tuple(levels)


def toggles_for(options: ResolvedOptions, pinned: RunOptions, world_size: int, experts: int = 1) -> tuple[str, ...]:
    """The techniques the search may turn on: not pinned, not on already, and applicable to ``world_size`` GPUs
    and a DiT of ``experts`` experts."""
    out = []
    for name in TOGGLES:
        if getattr(pinned, name) is not None:
            continue
        if name in MULTI_GPU and world_size < 2:
            continue
        if name in MULTI_EXPERT and experts < 2:
            continue
        if name == "ulysses":
            if options.ulysses != 1:
                continue
        elif getattr(options, name):
            continue
        out.append(name)
    return tuple(out)
