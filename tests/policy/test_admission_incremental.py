"""What the admission core keeps as it goes (the leases' ends in order, what the devices offer, the queue's
window) against the same worked out from scratch, and placement's shortcuts against the plain rule, over random
sequences."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from itertools import islice

import pytest
from admission_helpers import PARAMS, Driver, device_sample, h100, plan, submit
from hypothesis import given, settings
from hypothesis import strategies as st

from vramgate.messages import Component, Plan, RequestAdmitted, ResourceRequirement, ResourceSample
from vramgate.messages.admission import DeviceLost, ReleaseLease, SubmitRequest
from vramgate.messages.residency import ModelLoaded
from vramgate.policy._ends import End, Ends
from vramgate.policy._placement import Choice, Group, Placement, earliest_finish, groups_of, releases_of
from vramgate.policy._queue import Key, SortedKeys
from vramgate.policy.admission import AdmissionConfig, AdmissionCore
from vramgate.policy.request import device_budgets

EXPERT_MB = 27648


def resident_plan(work_mb: int, seconds: float) -> Plan:
    """A plan whose weights a resident model of it can hold."""
    components = (
        Component(name="dit_weights", vram_mb=EXPERT_MB),
        Component(name="activations", vram_mb=work_mb, seconds=seconds),
    )
    requirement = ResourceRequirement(
        vram_mb=EXPERT_MB + work_mb, ram_mb=1024, estimated_time_seconds=seconds, components=components
    )
    return Plan(params=PARAMS, requirement=requirement)


# ---------------------------------------------------------------------- the leases' ends


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.booleans(),
            st.integers(0, 20),
            st.lists(st.integers(0, 3), min_size=1, max_size=4, unique=True),
            st.sampled_from([1000, 2000, 8000]),
        ),
        max_size=60,
    )
)
def test_ends_kept_in_order_are_those_sorted_from_scratch(steps: list[tuple[bool, int, list[int], int]]) -> None:
    ends = Ends(4)
    held: list[End] = []
    for add, at, positions, mb in steps:
        end: End = (float(at), tuple(sorted(positions)), mb)
        if add or not held:
            ends.add(end)
            held.append(end)
        else:
            gone = held.pop(at % len(held))
            ends.remove(gone)
        assert ends.all == sorted(held)
        assert ends.per == releases_of(sorted(held), 4)


def test_removing_an_end_that_is_not_there_is_an_error() -> None:
    ends = Ends(2)
    ends.add((1.0, (0,), 100))
    with pytest.raises(ValueError, match="no end"):
        ends.remove((1.0, (1,), 100))
    assert ends.all == [(1.0, (0,), 100)]


# ---------------------------------------------------------------------- the core over random sequences

Step = tuple[str, int, int, int]
steps = st.lists(
    st.tuples(
        st.sampled_from(["submit"] * 4 + ["resident"] * 2 + ["release", "sample", "load", "load", "lost", "tick"]),
        st.integers(0, 3),
        st.sampled_from([6000, 20000, 40000, 77000]),
        st.integers(1, 30),
    ),
    max_size=60,
)


def _budget_fields(core: AdmissionCore) -> list[tuple[object, ...]]:
    return [(d.gpu, d.lost, d.capacity_mb, d.margin_mb, d.others_mb, d.permanent_mb) for d in core.offered()]


@settings(max_examples=120, deadline=None)
@given(steps, st.sampled_from(["earliest_finish", "best_fit", "spread"]))
def test_what_the_core_keeps_as_it_goes_is_what_it_works_out_from_scratch(script: list[Step], placement: str) -> None:
    """After every message, the leases' ends (``check_invariants``) and what the devices offer agree with what
    the core's state gives from scratch."""
    core = AdmissionCore(
        [h100(i) for i in range(4)],
        AdmissionConfig(stale_after_s=None, placement=placement, queue_limit=20),  # type: ignore[arg-type]
    )
    driver = Driver(core)
    leases: list[str] = []
    now = 0.0
    for number, (kind, device, mb, seconds) in enumerate(script):
        now += 0.5
        message: SubmitRequest | ReleaseLease | ResourceSample | ModelLoaded | DeviceLost
        if kind == "submit":
            message = submit(f"r{number}", mb, seconds=float(seconds), world=1 + (device == 3))
        elif kind == "resident":  # its weights may become resident while it runs: its reservation shrinks
            weights = resident_plan(mb // 2, float(seconds))
            message = SubmitRequest(request_id=f"r{number}", plans={"*": weights})
        elif kind == "release" and leases:
            message = ReleaseLease(lease_id=leases.pop(device % len(leases)))
        elif kind == "sample":
            message = ResourceSample(at=now, devices=(device_sample(device, mb // 4),))
        elif kind == "load":
            message = ModelLoaded(device=device, model=PARAMS.model, vram_mb=EXPERT_MB)
        elif kind == "lost":
            message = DeviceLost(index=device, reason="gone")
        else:
            message = ResourceSample(at=now, devices=())
        for event in driver.send(message, now):
            if isinstance(event, RequestAdmitted):
                leases.append(event.lease_id)
        fresh = core.statistics().devices
        assert _budget_fields(core) == [
            (d.gpu, d.lost, d.capacity_mb, d.margin_mb, d.others_mb, d.permanent_mb) for d in fresh
        ]
        assert device_budgets(core.offered(), 4096) == device_budgets(fresh, 4096)


# ---------------------------------------------------------------------- the queue's window


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2600), st.integers(0, 2700), st.integers(0, 300), st.randoms(use_true_random=False))
def test_a_window_of_the_queue_is_what_iterating_it_gives(
    count: int, start: int, width: int, rng: random.Random
) -> None:
    keys = SortedKeys()
    added: list[Key] = [(rng.random(), float(seq), seq, rng.randint(0, 9)) for seq in range(count)]
    for key in added:
        keys.add(key)
    for key in added[::5]:  # blocks of uneven lengths
        keys.remove(key)
    assert keys.window(start, start + width) == list(islice(keys, start, start + width))


# ---------------------------------------------------------------------- placement's shortcuts


def _reference_earliest_finish(
    groups: Sequence[Group],
    avail: Sequence[int],
    later: Sequence[int],
    releases: Sequence[Sequence[End]],
    *,
    now: float,
    run_seconds: Callable[[float], float] = float,
) -> Choice | None:
    """The rule plainly: every option on every device of every group, walked to the end, both passes."""
    best: Choice | None = None
    best_score: tuple[float, float, int, int, tuple[int, ...]] | None = None
    idle: Choice | None = None
    idle_score: tuple[float, float, int, int, tuple[int, ...]] | None = None
    for group in groups:
        need, world = group.need_mb, group.world
        duration = run_seconds(group.seconds)
        options: list[tuple[float, float, int, int, int]] = []
        for pos in group.positions:
            slack = avail[pos] - need
            if slack >= 0:
                options.append((now + duration, now, 0, slack, pos))
                continue
            have = later[pos]
            for end, _, mb in releases[pos]:
                have += mb
                if have >= need:
                    start = max(end, now)
                    options.append((start + duration, start, 1, have - need, pos))
                    break
        for ready_only in (False, True):
            chosen = [o for o in options if not (ready_only and o[2])]
            if len(chosen) < world:
                continue
            chosen = sorted(chosen)[:world]
            waits = max(o[2] for o in chosen)
            positions = tuple(sorted(o[4] for o in chosen))
            score = (max(o[0] for o in chosen), max(o[1] for o in chosen), waits, sum(o[3] for o in chosen), positions)
            choice = Choice(
                Placement(positions, group.plan, need, group.extra_s),
                score[1],
                score[0],
                {o[4]: o[3] for o in chosen},
                not waits,
            )
            if not ready_only:
                if best_score is None or score < best_score:
                    best_score, best = score, choice
            elif all(not releases[pos] for pos in positions) and (idle_score is None or score < idle_score):
                idle_score, idle = score, choice
    if best is not None and not best.ready and idle is not None:
        return idle._replace(preferred=best)
    return best


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.integers(-2000, 40000), min_size=4, max_size=4),
    st.lists(st.integers(-4000, 40000), min_size=4, max_size=4),
    st.lists(
        st.tuples(
            st.integers(0, 40), st.lists(st.integers(0, 3), min_size=1, max_size=3, unique=True), st.integers(1, 30000)
        ),
        max_size=8,
    ),
    st.lists(
        st.tuples(
            st.integers(1000, 50000),
            st.integers(1, 3),
            st.integers(1, 60),
            st.lists(st.integers(0, 3), min_size=1, max_size=4, unique=True),
        ),
        min_size=1,
        max_size=3,
    ),
    st.integers(0, 30),
)
def test_earliest_finish_chooses_as_the_plain_rule_does(
    avail: list[int],
    later: list[int],
    leases: list[tuple[int, list[int], int]],
    plans: list[tuple[int, int, int, list[int]]],
    now: int,
) -> None:
    ends = sorted((float(at), tuple(sorted(pos)), mb) for at, pos, mb in leases)
    releases = releases_of(ends, 4)
    groups = []
    for need, world, seconds, positions in plans:
        p = plan(need, seconds=float(seconds), world=world)
        groups.append(groups_of([p if pos in positions else None for pos in range(4)])[0])
    scale: Callable[[float], float] = lambda s: s * 1.5  # noqa: E731
    expected = _reference_earliest_finish(groups, avail, later, releases, now=float(now), run_seconds=scale)
    got = earliest_finish(groups, avail, later, releases, now=float(now), run_seconds=scale)
    assert got == expected
    if got is not None:
        assert math.isfinite(got.finish)
