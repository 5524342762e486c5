"""The request core alone: its transition table, entry by entry, and what it decides, with the real estimator and
optimizer cores answering its questions."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vramgate.actors.core import Reply, Send
from vramgate.actors.estimator import EstimatorCore
from vramgate.actors.optimizer import OptimizerCore
from vramgate.errors import RequestStateError
from vramgate.messages import (
    GenerationRequest,
    Message,
    ObservedPeak,
    Plan,
    PlanOptimized,
    RequestAccepted,
    RequestAdmitted,
    RequestEnded,
    RequestQueued,
    RequestRejected,
    RunFinished,
)
from vramgate.messages.admission import CancelRequest, ReleaseLease, SubmitRequest
from vramgate.messages.estimation import CorrectionLearned, EstimateRequirement, ObserveRun
from vramgate.messages.optimization import OptimizePlan, ShrinkPlan
from vramgate.messages.planning import DeviceBudgets, QuoteRequest, RetryDecided
from vramgate.policy.admission import AdmissionConfig
from vramgate.policy.estimate import Estimator
from vramgate.policy.optimize import Optimizer
from vramgate.policy.request import (
    ADMISSION,
    CLEANUP,
    CLIENT,
    ESTIMATOR,
    OPTIMIZER,
    TRANSITIONS,
    Event,
    RequestConfig,
    RequestCore,
    RequestState,
    next_state,
)

SMALL = GenerationRequest(model="ti2v-5B", width=832, height=480, frames=33, steps=10)
BIG = GenerationRequest(model="t2v-A14B", width=1280, height=720, frames=81, steps=40, max_level="none")
H100 = DeviceBudgets(now={"H100-80GB": 75_776}, attainable={"H100-80GB": 75_776}, ram_budget_mb=262_144)


class Harness:
    """A request core whose questions the real estimator and optimizer cores answer when told to."""

    def __init__(self, config: RequestConfig | None = None, budgets: DeviceBudgets = H100) -> None:
        self.core = RequestCore(config)
        self.estimator = EstimatorCore(Estimator())
        self.optimizer = OptimizerCore(Optimizer(Estimator()))
        self.now = 0.0
        self.pending: list[Send] = []  # questions not answered yet
        self.asked: list[Message] = []  # every question asked
        self.sent: list[Send] = []  # everything else the core sent
        self.feed(budgets)

    def feed(self, message: Message) -> list[Send]:
        out = self.core.handle(message, self.now)
        self.asked += [send.message for send in out if _is_question(send)]
        for send in out:
            (self.pending if send.to in (ESTIMATOR, OPTIMIZER) and _is_question(send) else self.sent).append(send)
        return out

    def answer(self, *, all_: bool = True) -> None:
        """Deliver the pending questions' answers (until none is left, with ``all_``)."""
        while self.pending:
            send = self.pending.pop(0)
            core = self.estimator if send.to == ESTIMATOR else self.optimizer
            for reply in core.handle(send.message, self.now):
                assert isinstance(reply, Reply)
                self.feed(reply.message)
            if not all_:
                return

    def accept(self, request: GenerationRequest, rid: str) -> None:
        self.feed(RequestAccepted(request_id=rid, request=request))

    def to_client(self, kind: type[Message] = Message) -> list[Message]:
        return [s.message for s in self.sent if s.to == CLIENT and isinstance(s.message, kind)]

    def submits(self) -> list[SubmitRequest]:
        return [s.message for s in self.sent if s.to == ADMISSION and isinstance(s.message, SubmitRequest)]

    def state(self, rid: str) -> RequestState:
        state = self.core.state(rid)
        return RequestState.ENDED if state is None else state


def _is_question(send: Send) -> bool:
    return isinstance(send.message, EstimateRequirement | OptimizePlan | ShrinkPlan)


def _admitted(harness: Harness, rid: str) -> RequestAdmitted:
    submit = next(s for s in harness.submits() if s.request_id == rid)
    plan = next(iter(submit.plans.values()))
    return RequestAdmitted(
        request_id=rid, lease_id=f"lease-{rid}", devices=(0,), reservation_mb=plan.requirement.vram_mb, plan=plan
    )


def _drive(harness: Harness, rid: str, state: RequestState) -> None:
    """Bring request ``rid`` to ``state`` with real messages."""
    harness.accept(SMALL, rid)
    if state is RequestState.PREFLIGHT:
        return
    harness.answer(all_=False)  # the preflight
    if state is RequestState.PLANNING:
        return
    harness.answer()
    if state is RequestState.QUEUED:
        harness.feed(RequestQueued(request_id=rid, position=1))
        return
    harness.feed(_admitted(harness, rid))
    if state is RequestState.RELEASING:
        harness.feed(RunFinished(request_id=rid, lease_id=f"lease-{rid}", outcome="ok", seconds=10.0))


#: A message for each event a message brings (the others the core concludes from answers and the time).
def _message(event: Event, rid: str) -> Message | None:
    return {
        Event.CANCEL: CancelRequest(request_id=rid, reason="test"),
        Event.QUEUED: RequestQueued(request_id=rid, position=1),
        Event.REJECTED: RequestRejected(request_id=rid, code="device_lost", reason="test"),
        Event.FINISHED: RunFinished(request_id=rid, lease_id=f"lease-{rid}", outcome="ok", seconds=10.0),
        Event.ENDED: RequestEnded(request_id=rid, state="completed"),
    }.get(event)


LIVE = [s for s in RequestState if s is not RequestState.ENDED]


@pytest.mark.parametrize(("state", "event"), sorted(TRANSITIONS, key=lambda k: (k[0].value, k[1].value)))
def test_the_table_allows_each_listed_transition(state: RequestState, event: Event) -> None:
    assert next_state("r", state, event) is TRANSITIONS[(state, event)]
    harness = Harness()
    _drive(harness, "r", state)
    assert harness.state("r") is state
    message = _message(event, "r")
    if event is Event.ADMITTED:
        message = _admitted(harness, "r")
    if message is None:
        return  # concluded by the core, not brought by a message: the scenarios below take each of them
    harness.feed(message)
    assert harness.state("r") is TRANSITIONS[(state, event)]


FORBIDDEN = [(s, e) for s, e in itertools.product(RequestState, Event) if (s, e) not in TRANSITIONS]


@pytest.mark.parametrize(("state", "event"), FORBIDDEN, ids=[f"{s.value}-{e.value}" for s, e in FORBIDDEN])
def test_every_other_transition_raises_a_typed_error(state: RequestState, event: Event) -> None:
    with pytest.raises(RequestStateError) as raised:
        next_state("r", state, event)
    assert (raised.value.request_id, raised.value.state, raised.value.event) == ("r", state.value, event.value)
    if state is RequestState.ENDED:
        return  # the core holds no ended request: messages about it are ignored (tested below)
    harness = Harness()
    _drive(harness, "r", state)
    message = _message(event, "r")
    if event is Event.ADMITTED:
        message = RequestAdmitted(
            request_id="r", lease_id="lease-r", devices=(0,), reservation_mb=1, plan=_plan_for(SMALL)
        )
    if message is None:
        return
    before = list(harness.sent)
    with pytest.raises(RequestStateError):
        harness.feed(message)
    assert harness.state("r") is state
    assert harness.sent == before


def _plan_for(request: GenerationRequest) -> Plan:
    return Optimizer(Estimator()).optimize(
        request, gpu="H100-80GB", budget_mb=75_776, ram_budget_mb=None, max_level="basic"
    )


def test_messages_about_requests_it_does_not_hold_are_ignored() -> None:
    harness = Harness()
    _drive(harness, "r", RequestState.QUEUED)
    harness.feed(RequestEnded(request_id="r", state="cancelled"))
    for event in (Event.CANCEL, Event.QUEUED, Event.REJECTED, Event.FINISHED, Event.ENDED):
        message = _message(event, "r")
        assert message is not None
        assert harness.feed(message) == []


def test_a_request_is_preflighted_planned_and_submitted_with_its_published_plan() -> None:
    budgets = DeviceBudgets(now={"H100-80GB": 75_776, "RTX4090-24GB": 22_272}, attainable={}, ram_budget_mb=262_144)
    harness = Harness(budgets=msgspec.structs.replace(budgets, attainable=budgets.now))
    harness.accept(msgspec.structs.replace(SMALL, priority=3, prompt="a boat"), "r")
    estimate = harness.pending[0].message
    assert isinstance(estimate, EstimateRequirement)
    assert estimate.gpu == "H100-80GB"
    assert estimate.request is not None
    assert estimate.request.prompt == ""
    assert estimate.request.priority == 0
    harness.answer()
    assert harness.core.requirement("r") is not None  # the preflight is kept
    (submit,) = harness.submits()
    assert sorted(submit.plans) == ["H100-80GB", "RTX4090-24GB"]
    assert submit.priority == 3
    assert all(plan.request_id == "r" for plan in submit.plans.values())
    assert harness.core.plan("r") == submit.plans["H100-80GB"]  # the largest budget's plan is published
    assert submit.arrival == 0.0
    assert not submit.fallback


def test_the_closest_miss_is_the_rejection() -> None:
    budgets = DeviceBudgets(now={"RTX4090-24GB": 22_272}, attainable={"RTX4090-24GB": 22_272})
    harness = Harness(budgets=budgets)
    harness.accept(BIG, "big")
    harness.answer()
    rejected, ended = harness.to_client()
    assert isinstance(rejected, RequestRejected)
    assert isinstance(ended, RequestEnded)
    assert rejected.code == "does_not_fit"
    assert rejected.needed_mb is not None
    assert rejected.needed_mb > 22_272
    assert rejected.smallest_gpu is not None
    assert rejected.best_plan is not None
    assert rejected.best_plan.request_id.startswith(":q")  # the plan answered the question, not one request
    assert ended.state == "rejected"
    assert harness.submits() == []


def test_nothing_fits_now_so_it_plans_for_when_others_leave() -> None:
    budgets = DeviceBudgets(now={"H100-80GB": 4_096}, attainable={"H100-80GB": 75_776})
    harness = Harness(budgets=budgets)
    harness.accept(SMALL, "r")
    harness.answer()
    asked = [m.budget_mb for m in harness.asked if isinstance(m, OptimizePlan)]
    assert asked == [4_096, 75_776]
    (submit,) = harness.submits()
    assert submit.plans["H100-80GB"].requirement.vram_mb > 4_096


def test_the_same_question_is_asked_once_until_a_lesson_moves() -> None:
    harness = Harness()
    harness.accept(SMALL, "a")
    harness.accept(msgspec.structs.replace(SMALL, prompt="other", priority=5), "b")
    assert len(harness.pending) == 1  # one preflight for both
    harness.answer()
    harness.accept(SMALL, "c")
    assert harness.pending == []
    assert len(harness.submits()) == 3
    harness.feed(CorrectionLearned(model="ti2v-5B", gpu="H100-80GB", factor=1.1, runs=1, outcome="ok"))
    harness.accept(SMALL, "d")
    assert len(harness.pending) == 1


def test_a_core_that_forwards_lessons_sends_each_to_the_optimizer_once_with_its_next_question() -> None:
    harness = Harness(RequestConfig(forwards_lessons=True))
    harness.accept(SMALL, "a")
    harness.answer()
    first = [m for m in harness.asked if isinstance(m, OptimizePlan)]
    assert [m.corrections for m in first] == [()]  # nothing learned yet
    teacher = EstimatorCore(Estimator(), holdings=True)
    plan = harness.submits()[0].plans["H100-80GB"]
    lessons = []
    for peak in (1.3, 1.5):  # two lessons for the same model and GPU: the optimizer needs the latest
        finished = RunFinished(
            request_id="a", lease_id="l", outcome="ok",
            observed=ObservedPeak(torch_peak_reserved_mb=int(plan.requirement.vram_mb * peak)),
        )  # fmt: skip
        (reply,) = teacher.handle(ObserveRun(finished=finished, plan=plan), 0.0)
        assert isinstance(reply, Reply)
        assert isinstance(reply.message, CorrectionLearned)
        assert reply.message.history is not None  # what the estimator holds, for the optimizer to install
        lessons.append(reply.message)
        harness.feed(reply.message)
    assert harness.pending == []  # a lesson alone sends nothing
    harness.accept(SMALL, "b")  # the lesson made the cached answers stale: it is asked again, with the lesson
    harness.answer()
    again = [m for m in harness.asked if isinstance(m, OptimizePlan)][len(first) :]
    assert [m.corrections for m in again] == [(lessons[-1],)]
    # The optimizer planned with it: the plan is the one the teacher's own estimator makes.
    replanned = harness.submits()[-1].plans["H100-80GB"]
    assert replanned.requirement.correction == lessons[-1].factor > plan.requirement.correction
    harness.feed(CorrectionLearned(model="ti2v-5B", gpu="H100-80GB", factor=lessons[-1].factor, runs=3, outcome="ok"))
    harness.accept(msgspec.structs.replace(SMALL, steps=12), "c")  # a new question carries only what is new
    harness.answer()
    newest = [m for m in harness.asked if isinstance(m, OptimizePlan)][len(first) + len(again) :]
    assert [len(m.corrections) for m in newest] == [1]
    assert newest[0].corrections[0].runs == 3


def test_a_core_that_does_not_forward_lessons_asks_without_them() -> None:
    harness = Harness()
    harness.accept(SMALL, "a")
    harness.answer()
    harness.feed(CorrectionLearned(model="ti2v-5B", gpu="H100-80GB", factor=1.3, runs=1, outcome="ok"))
    harness.accept(SMALL, "b")
    harness.answer()
    assert all(m.corrections == () for m in harness.asked if isinstance(m, OptimizePlan))


def test_the_queue_limit_and_its_retry_after() -> None:
    config = RequestConfig(admission=AdmissionConfig(queue_limit=2, min_retry_after_s=0.25))
    harness = Harness(config)
    harness.accept(SMALL, "a")
    harness.accept(SMALL, "b")
    assert harness.core.room() == 0
    assert harness.core.retry_after(0.0) == 0.25  # they are being planned: room comes soon
    harness.accept(SMALL, "c")
    rejected, ended = harness.to_client()
    assert isinstance(rejected, RequestRejected)
    assert rejected.code == "queue_full"
    assert rejected.retry_after_s == 0.25
    assert rejected.request_id == "c"
    assert isinstance(ended, RequestEnded)
    assert ended.state == "rejected"
    harness.answer()
    harness.feed(_admitted(harness, "a"))
    harness.feed(RequestQueued(request_id="b", position=1))
    assert harness.core.room() == 1
    assert harness.core.retry_after(0.0) == 0.0
    harness.accept(SMALL, "d")
    harness.answer()
    plan = harness.core.plan("a")
    assert plan is not None
    assert plan.requirement.time_high_s is not None
    # Full of queued requests: room comes when the running lease is expected to end (the top of its interval).
    assert harness.core.retry_after(0.0) == pytest.approx(plan.requirement.time_high_s)


def test_a_wait_bound_ends_a_request_still_being_planned() -> None:
    harness = Harness()
    harness.accept(msgspec.structs.replace(SMALL, max_wait_s=2.0), "r")
    harness.now = 3.0
    harness.answer()  # the answer comes too late
    (ended,) = harness.to_client()
    assert isinstance(ended, RequestEnded)
    assert ended.state == "timed_out"
    assert "3.0 s" in ended.reason
    assert harness.submits() == []
    assert harness.core.room() == 1000


def test_cancelling_before_admission_and_after() -> None:
    harness = Harness()
    harness.accept(SMALL, "early")
    harness.feed(CancelRequest(request_id="early", reason="bye"))
    assert harness.to_client() == [RequestEnded(request_id="early", state="cancelled", reason="bye")]
    harness.answer()
    assert harness.submits() == []  # the late answer plans nothing
    _drive(harness, "queued", RequestState.QUEUED)
    harness.feed(CancelRequest(request_id="queued", reason="later"))
    assert harness.sent[-1] == Send(ADMISSION, CancelRequest(request_id="queued", reason="later"))


def test_a_finished_run_teaches_cleans_and_releases() -> None:
    harness = Harness()
    _drive(harness, "r", RequestState.ADMITTED)
    finished = RunFinished(
        request_id="r", lease_id="lease-r", outcome="ok", observed=ObservedPeak(torch_peak_reserved_mb=9_000), seconds=5
    )
    harness.sent.clear()
    harness.feed(finished)
    # the lesson goes to the estimator alone: it publishes its corrections to the optimizer
    assert [s.to for s in harness.sent] == [ESTIMATOR, CLEANUP, ADMISSION]
    lesson = harness.sent[0].message
    assert isinstance(lesson, ObserveRun)
    assert lesson.plan == harness.core.plan("r")
    assert harness.sent[2].message == ReleaseLease(lease_id="lease-r", outcome="ok")
    assert harness.state("r") is RequestState.RELEASING
    with pytest.raises(RequestStateError):
        harness.feed(finished)  # a run ends once


def test_an_oom_is_retried_with_a_smaller_plan_when_allowed() -> None:
    harness = Harness(RequestConfig(retry_on_oom=True, max_oom_retries=1))
    _drive(harness, "r", RequestState.ADMITTED)
    plan = harness.core.plan("r")
    assert plan is not None
    harness.feed(RunFinished(request_id="r", lease_id="lease-r", outcome="oom"))
    harness.feed(RequestEnded(request_id="r", state="failed"))
    harness.feed(ShrinkPlan(plan=plan, request_id="r"))
    harness.answer()
    accepted, decided = harness.to_client()[:2]
    assert isinstance(accepted, RequestAccepted)
    assert accepted.request_id == "r.2"
    assert decided == RetryDecided(request_id="r", retry_id="r.2")
    (submit,) = [s for s in harness.submits() if s.request_id == "r.2"]
    assert submit.plans["H100-80GB"].requirement.vram_mb <= plan.requirement.vram_mb * 0.9
    # The retry ran out of memory too: no retry is left.
    harness.feed(_admitted(harness, "r.2"))
    harness.feed(RunFinished(request_id="r.2", lease_id="lease-r.2", outcome="oom"))
    harness.feed(ShrinkPlan(plan=submit.plans["H100-80GB"], request_id="r.2"))
    last = harness.to_client(RetryDecided)[-1]
    assert isinstance(last, RetryDecided)
    assert last.declined == "no_retries"
    assert last.retry_id == ""


def test_a_bad_request_ends_at_the_preflight() -> None:
    harness = Harness()
    harness.accept(GenerationRequest(model="no-such-model", width=832, height=480), "bad")
    harness.answer()
    rejected, ended = harness.to_client()
    assert isinstance(rejected, RequestRejected)
    assert rejected.code == "bad_request"
    assert "no-such-model" in rejected.reason
    assert isinstance(ended, RequestEnded)
    assert ended.state == "rejected"


def test_a_quote_answers_with_the_submit_it_would_send_and_keeps_nothing() -> None:
    harness = Harness()
    harness.feed(QuoteRequest(request_id=":quote1", request=SMALL))
    harness.answer()
    (submit,) = harness.to_client()
    assert isinstance(submit, SubmitRequest)
    assert submit.request_id == ":quote1"
    assert harness.submits() == []
    assert harness.core.room() == 1000
    assert harness.core.state(":quote1") is None


def _ends(outputs: Iterable[Send]) -> list[str]:
    return [s.message.request_id for s in outputs if isinstance(s.message, RequestEnded)]


def test_a_duplicate_id_is_refused() -> None:
    harness = Harness()
    harness.accept(SMALL, "r")
    with pytest.raises(RequestStateError):
        harness.accept(SMALL, "r")
    assert harness.core.room() == 999


def test_planned_answers_are_addressed_to_questions_not_requests() -> None:
    harness = Harness()
    harness.accept(SMALL, "r")
    harness.answer(all_=False)
    (question,) = harness.pending
    assert isinstance(question.message, OptimizePlan)
    assert question.message.request_id.startswith(":q")
    assert isinstance(question.message.request, GenerationRequest)
    assert question.message.request.request_id == ""
    harness.answer()
    assert isinstance(harness.core.plan("r"), Plan)
    assert not any(isinstance(m, PlanOptimized) for m in harness.to_client())
    assert _ends(harness.sent) == []


PLAN = _plan_for(SMALL)
ACTIONS = ("accept", "answer", "queued", "admitted", "rejected", "ended", "cancel", "ok", "oom", "shrink", "wait")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(ACTIONS), st.integers(0, 3)), max_size=40))
def test_any_message_sequence_ends_each_request_at_most_once(steps: list[tuple[str, int]]) -> None:
    harness = Harness(RequestConfig(admission=AdmissionConfig(queue_limit=3), retry_on_oom=True))
    ids: list[str] = []
    ends: dict[str, int] = {}
    for action, pick in steps:
        if action == "accept":
            rid = f"r{len(ids)}"
            ids.append(rid)
            request = msgspec.structs.replace(SMALL, max_wait_s=5.0) if pick % 2 else SMALL
            message: Message | None = RequestAccepted(request_id=rid, request=request)
        elif action == "answer":
            harness.answer(all_=False)
            message = None
        elif action == "wait":
            harness.now += 2.0
            message = CancelRequest(request_id="nobody")
        elif not ids:
            continue
        else:
            rid = ids[pick % len(ids)]
            lease = f"lease-{rid}"
            message = {
                "queued": RequestQueued(request_id=rid, position=1),
                "admitted": RequestAdmitted(request_id=rid, lease_id=lease, devices=(0,), reservation_mb=1, plan=PLAN),
                "rejected": RequestRejected(request_id=rid, code="device_lost", reason="gone"),
                "ended": RequestEnded(request_id=rid, state="failed"),
                "cancel": CancelRequest(request_id=rid),
                "ok": RunFinished(request_id=rid, lease_id=lease, outcome="ok"),
                "oom": RunFinished(request_id=rid, lease_id=lease, outcome="oom"),
                "shrink": ShrinkPlan(plan=PLAN, request_id=rid),
            }[action]
        if message is None:
            continue
        states = {rid: harness.core.state(rid) for rid in ids}
        held = isinstance(message, RequestEnded) and states.get(message.request_id) is not None
        try:
            out = harness.feed(message)
        except RequestStateError:
            assert {rid: harness.core.state(rid) for rid in ids} == states  # a refused message changes nothing
            continue
        if held:
            assert isinstance(message, RequestEnded)
            ends[message.request_id] = ends.get(message.request_id, 0) + 1
        for rid in _ends(out):
            ends[rid] = ends.get(rid, 0) + 1
        for sent in out:
            if isinstance(sent.message, RequestAccepted):
                ids.append(sent.message.request_id)  # a retry
        assert all(count <= 1 for count in ends.values()), ends
        assert all(harness.core.state(rid) is None for rid in ends)
        waiting = [
            rid
            for rid in ids
            if harness.core.state(rid) in (RequestState.PREFLIGHT, RequestState.PLANNING, RequestState.QUEUED)
        ]
        assert harness.core.room() == 3 - len(waiting)


def test_small_lessons_that_add_up_clear_the_cache() -> None:
    harness = Harness()
    harness.accept(SMALL, "a")
    harness.answer()
    asked = len(harness.asked)
    factor = 1.0
    for step in range(4):  # 0.4 % at a time: each alone keeps the cache ...
        factor *= 1.004
        harness.feed(CorrectionLearned(model="ti2v-5B", gpu="H100-80GB", factor=factor, runs=step, outcome="ok"))
        harness.accept(SMALL, f"b{step}")
        assert len(harness.asked) == asked, step
    factor *= 1.004  # ... until together they moved it by more than 2 %
    harness.feed(CorrectionLearned(model="ti2v-5B", gpu="H100-80GB", factor=factor, runs=4, outcome="ok"))
    harness.accept(SMALL, "c")
    assert len(harness.asked) == asked + 1
