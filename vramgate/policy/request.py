"""The request core: everything that affects a request's lifecycle lives here, sans-io.

One state enum (:class:`RequestState`), the events that move a request (:class:`Event`) and the transition table
(:data:`TRANSITIONS`) as data; :meth:`RequestCore.handle` takes one message and the time and returns what to send
where (:class:`~vramgate.actors.core.Send`). It reads no clock, awaits nothing and does no I/O, so the gate's
actor runs it and a replay of the message log checks its decisions (:mod:`vramgate.replay`), and the simulator
drives the same core (:mod:`vramgate.simulate.gate`).

A request is accepted (``RequestAccepted`` from the client), preflighted (the estimator's requirement as given,
on the largest kind of GPU: a bad request ends here), and planned in passes: first at what each kind of GPU
offers now (``DeviceBudgets.now``), then, when nothing fits that, at what it offers once others leave
(``attainable``). The plan published for the request is the one for the kind with the largest budget; when no
pass finds one, the closest miss is the rejection (``needed_mb``, the smallest GPU, the closest plan). A planned
request is submitted to admission, which queues and admits it; the client reports the run's end
(``RunFinished``), and the core teaches the estimator and the optimizer, asks for the post-run cleanup and
releases the lease. A request ends exactly once: by the core before it reaches admission (rejected, cancelled,
timed out), by admission after.

The core keeps the one queue limit (:attr:`AdmissionConfig.queue_limit`: requests accepted and neither admitted
nor ended) and its retry-after, the ``max_wait_s`` bound before admission (admission keeps it after), the OOM
retries (a client's ``ShrinkPlan`` after an out-of-memory run is answered with a retry at a smaller plan, or why
not), and the plan cache: identical questions (a request without its id, priority, wait bound and prompt) get
the identical answer, asked once, until a ``CorrectionLearned`` moves a correction by more than half a percent.
The estimator's and optimizer's answers come back addressed to the question (``:q<n>``), not to a request, since
one answer serves every request that asked it.
"""

from __future__ import annotations

import enum
import heapq
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import msgspec

from vramgate.actors.core import Send
from vramgate.errors import RequestStateError
from vramgate.messages._base import Message
from vramgate.messages.admission import CancelRequest, DeviceLedgerStatistics, ReleaseLease, SubmitRequest
from vramgate.messages.estimation import CorrectionLearned, EstimateRequirement, ObserveRun
from vramgate.messages.lifecycle import (
    CleanupReport,
    LeaseReleased,
    PlanOptimized,
    RejectCode,
    RequestAccepted,
    RequestAdmitted,
    RequestEnded,
    RequestQueued,
    RequestRejected,
    RequirementEstimated,
    RunFinished,
    RunProgress,
    TerminalState,
)
from vramgate.messages.optimization import OptimizePlan, PlanDoesNotFit, ShrinkPlan
from vramgate.messages.planning import DeviceBudgets, QuoteRequest, RetryDecided
from vramgate.messages.plans import Plan, ResourceRequirement
from vramgate.messages.requests import GenerationRequest, RunOptions
from vramgate.messages.residency import EvictModel, LeaseShrunk
from vramgate.messages.resources import ResourceSample
from vramgate.policy.admission_config import AdmissionConfig
from vramgate.policy.timing import expected_run_s, time_high_s

#: Where the core's messages go: the actors of a gate, and the client (the embedding server's side of the gate).
ESTIMATOR, OPTIMIZER, ADMISSION, CLEANUP, CLIENT = "estimator", "optimizer", "admission", "cleanup", "client"
#: Question ids start with this; a request id may not.
QUESTION = ":q"


class RequestState(enum.Enum):
    """Where a request is. ``QUEUED``: submitted to admission, waiting for a lease (or about to get one)."""

    PREFLIGHT = "preflight"
    PLANNING = "planning"
    QUEUED = "queued"
    ADMITTED = "admitted"
    RELEASING = "releasing"
    ENDED = "ended"

    __hash__ = object.__hash__  # members are singletons: hashed by identity in C, not by name in Python


class Event(enum.Enum):
    """What happens to a request: an input message, or what the core concluded from one."""

    ESTIMATED = "estimated"  # the preflight requirement came back
    NEXT_PASS = "next_pass"  # a planning pass found no plan: plan again at what the devices offer as others leave
    PLANNED = "planned"  # a pass found plans: submit them to admission
    QUOTED = "quoted"  # a quote's pass found plans: answer with them
    NO_PLAN = "no_plan"  # no pass found a plan (or no device is usable): the closest miss is the rejection
    BAD_REQUEST = "bad_request"  # the estimator or the optimizer refused the request
    CANCEL = "cancel"  # the client cancels, or stops waiting
    TIMEOUT = "timeout"  # its max_wait_s passed before it reached admission
    QUEUED = "queued"  # admission queued it
    REJECTED = "rejected"  # admission rejected it (its end follows)
    ADMITTED = "admitted"  # admission granted a lease
    FINISHED = "finished"  # the client reports the run's end
    ENDED = "ended"  # admission ended it

    __hash__ = object.__hash__


_S, _E = RequestState, Event
#: Every allowed transition; any other (state, event) pair raises :class:`~vramgate.errors.RequestStateError`.
TRANSITIONS: Mapping[tuple[RequestState, Event], RequestState] = {
    (_S.PREFLIGHT, _E.ESTIMATED): _S.PLANNING,
    (_S.PREFLIGHT, _E.NO_PLAN): _S.ENDED,
    (_S.PREFLIGHT, _E.BAD_REQUEST): _S.ENDED,
    (_S.PREFLIGHT, _E.CANCEL): _S.ENDED,
    (_S.PREFLIGHT, _E.TIMEOUT): _S.ENDED,
    (_S.PLANNING, _E.NEXT_PASS): _S.PLANNING,
    (_S.PLANNING, _E.PLANNED): _S.QUEUED,
    (_S.PLANNING, _E.QUOTED): _S.ENDED,
    (_S.PLANNING, _E.NO_PLAN): _S.ENDED,
    (_S.PLANNING, _E.BAD_REQUEST): _S.ENDED,
    (_S.PLANNING, _E.CANCEL): _S.ENDED,
    (_S.PLANNING, _E.TIMEOUT): _S.ENDED,
    (_S.QUEUED, _E.QUEUED): _S.QUEUED,
    (_S.QUEUED, _E.REJECTED): _S.QUEUED,
    (_S.QUEUED, _E.CANCEL): _S.QUEUED,
    (_S.QUEUED, _E.ADMITTED): _S.ADMITTED,
    (_S.QUEUED, _E.ENDED): _S.ENDED,
    (_S.ADMITTED, _E.CANCEL): _S.ADMITTED,
    (_S.ADMITTED, _E.FINISHED): _S.RELEASING,
    (_S.ADMITTED, _E.ENDED): _S.ENDED,
    (_S.RELEASING, _E.CANCEL): _S.RELEASING,
    (_S.RELEASING, _E.ENDED): _S.ENDED,
}
#: The same table by state, then event (one lookup each, by identity).
_NEXT: Mapping[RequestState, Mapping[Event, RequestState]] = {
    state: {event: new for (old, event), new in TRANSITIONS.items() if old is state} for state in RequestState
}
#: States in which a request counts against the queue limit.
WAITING = frozenset({_S.PREFLIGHT, _S.PLANNING, _S.QUEUED})
_ASKING = frozenset({_S.PREFLIGHT, _S.PLANNING})


def next_state(request_id: str, state: RequestState, event: Event) -> RequestState:
    """The state ``event`` moves a request in ``state`` to; :class:`~vramgate.errors.RequestStateError` when the
    table does not allow it."""
    new = _NEXT[state].get(event)
    if new is None:
        raise RequestStateError(request_id, state.value, event.value)
    return new


class RequestConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the request core decides. ``admission`` is the admission core's configuration: its ``queue_limit`` is the
    one limit (requests accepted and neither admitted nor ended). ``time_scale`` and ``min_run_s`` (``[run]
    time_scale`` and ``min_seconds``, as admission is given them) set how long a run is expected to last (for the
    retry-after) and how its seconds teach the estimator. ``retry_on_oom``
    and ``max_oom_retries``: how many smaller plans a request whose run ran out of memory may retry with.
    ``cleanup_after_run``: ask the cleanup actor for a cleanup after every run. ``cache_size``: answers kept.
    ``forwards_lessons``: send the estimator's lessons on to the optimizer with the next question it is asked
    (``corrections``), for an estimator that publishes to nobody else."""

    admission: AdmissionConfig = AdmissionConfig()
    time_scale: float = 1.0
    min_run_s: float = 0.0
    retry_on_oom: bool = False
    max_oom_retries: int = 1
    cleanup_after_run: bool = True
    cache_size: int = 4096
    forwards_lessons: bool = False

    def run_seconds(self, estimated_s: float) -> float:
        """How long a run whose plan estimates ``estimated_s`` seconds is expected to last."""
        return expected_run_s(estimated_s, self.time_scale, self.min_run_s)


def device_budgets(ledgers: Sequence[DeviceLedgerStatistics], ram_budget_mb: int | None = None) -> DeviceBudgets:
    """What a plan may need per GPU on each kind of GPU, from admission's ledgers: the best device's capacity less
    its margin and less what others use now (``now``) or never gave back (``attainable``), rounded down to 256
    MiB so that small changes in others' use do not re-plan every request. Lost devices offer nothing."""
    now: dict[str, int] = {}
    attainable: dict[str, int] = {}
    for ledger in ledgers:
        if ledger.lost:
            continue
        for budgets, used in ((now, ledger.others_mb), (attainable, ledger.permanent_mb)):
            budget = max(0, ledger.capacity_mb - ledger.margin_mb - used) // 256 * 256
            budgets[ledger.gpu] = max(budgets.get(ledger.gpu, 0), budget)
    return DeviceBudgets(now=now, attainable=attainable, ram_budget_mb=ram_budget_mb)


def anonymous(request: GenerationRequest) -> GenerationRequest:
    """The request without what does not change its estimate or plan (id, priority, wait bound, prompt)."""
    if not (request.request_id or request.priority or request.max_wait_s is not None or request.prompt):
        return request
    return msgspec.structs.replace(request, request_id="", priority=0, max_wait_s=None, prompt="")


def pinned_request(request: GenerationRequest, plan: Plan, request_id: str) -> GenerationRequest:
    """The request that runs ``plan`` exactly: its parameters, and every option pinned to the plan's."""
    params = plan.params
    return msgspec.structs.replace(
        request,
        request_id=request_id,
        width=params.width,
        height=params.height,
        frames=params.frames,
        duration_s=None,
        fps=None,
        steps=params.steps,
        options=RunOptions(**msgspec.structs.asdict(params.options)),
    )


class _Request:
    """One request the core holds (or one quote)."""

    __slots__ = (
        "accepted_at",
        "anonymous",
        "answers",
        "attempt",
        "closest",
        "deadline",
        "lease_id",
        "pass_index",
        "passes",
        "plan",
        "quote",
        "ram_budget_mb",
        "request",
        "request_id",
        "requirement",
        "root",
        "state",
    )

    def __init__(
        self, request: GenerationRequest, now: float, budgets: DeviceBudgets, *, quote: bool, attempt: int, root: str
    ) -> None:
        self.request = request
        #: the request without what does not change its estimate or plan (the questions it asks are about it)
        self.anonymous = anonymous(request)
        self.request_id = request.request_id
        self.state = RequestState.PREFLIGHT
        self.accepted_at = now
        wait = request.max_wait_s
        self.deadline = now + wait if wait is not None and not quote else math.inf
        self.passes = [budgets.now] + ([budgets.attainable] if budgets.attainable != budgets.now else [])
        self.ram_budget_mb = budgets.ram_budget_mb
        self.pass_index = 0
        self.answers: dict[str, Message] = {}
        self.closest: PlanDoesNotFit | None = None
        self.requirement: ResourceRequirement | None = None
        self.plan: Plan | None = None
        self.lease_id = ""
        self.quote = quote
        self.attempt = attempt
        self.root = root


class _Oom(msgspec.Struct, frozen=True):
    """A run that ran out of memory, kept until its client asks for a retry (or it falls out)."""

    request: GenerationRequest
    plan: Plan
    attempt: int
    root: str


_KEY = msgspec.msgpack.Encoder(order="deterministic")
_Q = TypeVar("_Q", bound=Message)
#: A waiter for an answer: the request (or quote) and the GPU kind it asked about ("" for the preflight).
_Waiter = tuple[_Request, str]


class RequestCore:
    """The lifecycle of every request the gate holds. See the module's docstring."""

    def __init__(self, config: RequestConfig | None = None) -> None:
        self.config = config if config is not None else RequestConfig()
        self._requests: dict[str, _Request] = {}
        self._quotes: dict[str, _Request] = {}
        self._budgets = DeviceBudgets(now={}, attainable={})
        self._answers: dict[bytes, Message] = {}
        self._asking: dict[bytes, list[_Waiter]] = {}
        self._questions: dict[str, tuple[bytes, int]] = {}
        self._shrinking: dict[str, _Oom] = {}
        self._oomed: OrderedDict[str, _Oom] = OrderedDict()
        #: each correction: as the latest lesson left it, and as it was when the cached answers were made
        self._corrections: dict[tuple[str, str], tuple[float, float]] = {}
        #: lessons the optimizer has not been sent, the latest per (model, GPU), the latest last
        self._unsent: OrderedDict[tuple[str, str], CorrectionLearned] = OrderedDict()
        self._generation = 0
        self._counter = 0
        self._deadlines: list[tuple[float, int, str]] = []
        self._lease_ends: dict[str, float] = {}
        self._now = -math.inf
        #: Requests accepted and neither admitted nor ended (they count against the queue limit).
        self.waiting = 0

    # ================================================================== queries

    def state(self, request_id: str) -> RequestState | None:
        """The state of a request the core holds; ``None`` once it ended (or if it never was)."""
        record = self._requests.get(request_id)
        return None if record is None else record.state

    def plan(self, request_id: str) -> Plan | None:
        """The plan published for a request (the one for the kind of GPU with the largest budget), or its lease's
        plan once admitted; ``None`` before it is planned."""
        record = self._requests.get(request_id)
        return None if record is None else record.plan

    def requirement(self, request_id: str) -> ResourceRequirement | None:
        """The preflight: what the request needs as given, on the largest kind of GPU."""
        record = self._requests.get(request_id)
        return None if record is None else record.requirement

    def room(self) -> int:
        """How many more requests the core takes now (the queue limit less those waiting)."""
        return self.config.admission.queue_limit - self.waiting

    def retry_after(self, now: float) -> float:
        """Seconds until the core is expected to have room: 0 when it has room; soon (``min_retry_after_s``) when a
        request is still being planned (it leaves for admission's queue or ends within moments); else the sooner
        of the next running lease's expected end (at the top of its time interval) and the next wait to expire."""
        if self.room() > 0:
            return 0.0
        admission = self.config.admission
        now = max(now, self._now)
        if any(r.state in _ASKING for r in self._requests.values()):
            return admission.min_retry_after_s
        soonest = min(self._lease_ends.values(), default=math.inf)
        for deadline, _, rid in self._deadlines:
            record = self._requests.get(rid)
            if record is not None and record.state in WAITING and record.deadline == deadline:
                soonest = min(soonest, deadline)
        if not math.isfinite(soonest):
            return admission.retry_after_default_s
        return max(admission.min_retry_after_s, soonest - now)

    # ================================================================== the entry point

    def handle(self, message: Message, now: float) -> list[Send]:
        """Take one message at time ``now``; return what to send where, in order."""
        if now > self._now:
            self._now = now
        out: list[Send] = []
        if self._deadlines:
            self._expire(now, out)
        kind = type(message)
        take = _TAKES.get(kind)
        if take is not None:
            take(self, message, now, out)
        elif kind not in _PASSED_BY:
            raise TypeError(f"the request core does not handle {kind.__name__}")
        return out

    def _on_accepted(self, message: RequestAccepted, now: float, out: list[Send]) -> None:
        self._accept(message.request_id, message.request, now, out, attempt=0, root=message.request_id)

    def _on_budgets(self, message: DeviceBudgets, now: float, out: list[Send]) -> None:
        self._budgets = message

    def _on_answer(self, message: Message, now: float, out: list[Send]) -> None:
        self._answer(message, out)

    def _on_rejected(self, message: RequestRejected, now: float, out: list[Send]) -> None:
        if message.request_id.startswith(QUESTION):
            self._answer(message, out)
        else:
            self._move(message.request_id, Event.REJECTED)

    def _on_queued(self, message: RequestQueued, now: float, out: list[Send]) -> None:
        self._move(message.request_id, Event.QUEUED)

    def _on_ended(self, message: RequestEnded, now: float, out: list[Send]) -> None:
        self._move(message.request_id, Event.ENDED)

    def _on_cancel(self, message: CancelRequest, now: float, out: list[Send]) -> None:
        self._cancel(message, out)

    def _on_finished(self, message: RunFinished, now: float, out: list[Send]) -> None:
        self._finished(message, out)

    def _on_shrink(self, message: ShrinkPlan, now: float, out: list[Send]) -> None:
        self._retry(message, out)

    def _on_learned(self, message: CorrectionLearned, now: float, out: list[Send]) -> None:
        self._learned(message)

    # ================================================================== transitions

    def _transition(self, record: _Request, event: Event) -> RequestState:
        new = next_state(record.request_id, record.state, event)
        old, record.state = record.state, new
        if old in WAITING and new not in WAITING and not record.quote:
            self.waiting -= 1
        if new is RequestState.ENDED:
            if record.quote:
                self._quotes.pop(record.request_id, None)
            else:
                self._requests.pop(record.request_id, None)
                self._lease_ends.pop(record.request_id, None)
        return new

    def _move(self, request_id: str, event: Event) -> None:
        """Apply an admission event to a request the core holds (one it does not hold ended already)."""
        record = self._requests.get(request_id)
        if record is not None:
            self._transition(record, event)

    def _end(self, record: _Request, event: Event, state: TerminalState, reason: str, out: list[Send]) -> None:
        """End a request that never reached admission: its terminal state goes to the client."""
        self._transition(record, event)
        if not record.quote:
            out.append(Send(CLIENT, RequestEnded(request_id=record.request_id, state=state, reason=reason)))

    def _reject(
        self,
        record: _Request,
        event: Event,
        code: RejectCode,
        reason: str,
        out: list[Send],
        *,
        miss: PlanDoesNotFit | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        # The closest plan as the optimizer answered the question (identical rejections share it, in the log too).
        best = miss.best_plan if miss is not None else None
        rejected = RequestRejected(
            request_id=record.request_id,
            code=code,
            reason=reason,
            needed_mb=miss.needed_mb if miss is not None else None,
            smallest_gpu=miss.smallest_gpu if miss is not None else None,
            best_plan=best,
            retry_after_s=retry_after_s,
        )
        out.append(Send(CLIENT, rejected))
        self._end(record, event, "rejected", reason, out)

    # ================================================================== acceptance and planning

    def _accept(
        self, request_id: str, request: GenerationRequest, now: float, out: list[Send], *, attempt: int, root: str
    ) -> None:
        if request_id in self._requests:
            raise RequestStateError(request_id, self._requests[request_id].state.value, "accepted")
        if request.request_id != request_id:
            request = msgspec.structs.replace(request, request_id=request_id)
        record = _Request(request, now, self._budgets, quote=False, attempt=attempt, root=root)
        if request_id.startswith(QUESTION):
            self._requests[request_id] = record
            self.waiting += 1
            self._reject(record, Event.BAD_REQUEST, "bad_request", f"a request id may not start with {QUESTION!r}", out)
            return
        room = self.room()
        self._requests[request_id] = record
        self.waiting += 1
        if room <= 0:
            retry = self.retry_after(now)
            reason = f"the queue is full ({self.waiting - 1} waiting); retry after {retry:.1f} s"
            self._reject(record, Event.NO_PLAN, "queue_full", reason, out, retry_after_s=retry)
            return
        if math.isfinite(record.deadline):
            self._counter += 1
            heapq.heappush(self._deadlines, (record.deadline, self._counter, request_id))
        self._preflight(record, out)

    def _quote(self, message: QuoteRequest, now: float, out: list[Send]) -> None:
        if message.request_id in self._quotes:
            raise RequestStateError(message.request_id, self._quotes[message.request_id].state.value, "quoted")
        request = msgspec.structs.replace(message.request, request_id=message.request_id)
        record = _Request(request, now, self._budgets, quote=True, attempt=0, root=message.request_id)
        self._quotes[message.request_id] = record
        self._preflight(record, out)

    def _preflight(self, record: _Request, out: list[Send]) -> None:
        budgets = record.passes[0]
        if not budgets:
            self._reject(record, Event.NO_PLAN, "does_not_fit", "the gate manages no usable GPU", out)
            return
        largest = max(budgets.items(), key=lambda item: (item[1], item[0]))[0]
        self._ask(ESTIMATOR, EstimateRequirement(request=record.anonymous, gpu=largest), record, "", out)

    def _plan_pass(self, record: _Request, out: list[Send]) -> None:
        record.answers = {}
        request = record.anonymous
        for gpu, budget in sorted(record.passes[record.pass_index].items()):
            if record.state is not RequestState.PLANNING:
                return  # a cached answer ended it
            ask = OptimizePlan(request=request, gpu=gpu, budget_mb=budget, ram_budget_mb=record.ram_budget_mb)
            self._ask(OPTIMIZER, ask, record, gpu, out)

    def _ask(self, actor: str, question: Message, record: _Request, gpu: str, out: list[Send]) -> None:
        """Ask ``actor`` ``question`` for ``record`` (once for every request that asks the same), or answer it
        from the cache."""
        key = _KEY.encode((actor, self._generation, question))
        answer = self._answers.get(key)
        if answer is not None:
            self._take(record, gpu, answer, out)
            return
        waiters = self._asking.get(key)
        if waiters is not None:
            waiters.append((record, gpu))
            return
        self._counter += 1
        qid = f"{QUESTION}{self._counter}"
        self._asking[key] = [(record, gpu)]
        self._questions[qid] = (key, self._generation)
        out.append(Send(actor, self._with_lessons(msgspec.structs.replace(question, request_id=qid))))

    def _with_lessons(self, question: _Q) -> _Q:
        """A question to the optimizer with the lessons it has not been sent (the key of a cached answer is the
        question without them)."""
        if not self._unsent or not isinstance(question, OptimizePlan | ShrinkPlan):
            return question
        lessons = tuple(self._unsent.values())
        self._unsent.clear()
        return msgspec.structs.replace(question, corrections=lessons)

    def _answer(self, answer: Message, out: list[Send]) -> None:
        qid = getattr(answer, "request_id", "")
        oom = self._shrinking.pop(qid, None)
        if oom is not None:
            self._shrunk(oom, answer, out)
            return
        asked = self._questions.pop(qid, None)
        if asked is None:
            return  # an answer to a question the core no longer waits for
        key, generation = asked
        waiters = self._asking.pop(key, [])
        if generation == self._generation:  # else a lesson moved since it was asked: the answer may be stale
            if len(self._answers) >= self.config.cache_size:
                self._answers.clear()
            self._answers[key] = answer
        for record, gpu in waiters:
            if record.state in _ASKING:
                self._take(record, gpu, answer, out)

    def _take(self, record: _Request, gpu: str, answer: Message, out: list[Send]) -> None:
        """One answer for ``record``: the preflight ("" for ``gpu``) or a plan for one kind of GPU."""
        if isinstance(answer, RequestRejected):
            self._reject(record, Event.BAD_REQUEST, "bad_request", answer.reason, out)
            return
        if not gpu:
            assert isinstance(answer, RequirementEstimated)
            record.requirement = answer.requirement
            self._transition(record, Event.ESTIMATED)
            self._plan_pass(record, out)
            return
        record.answers[gpu] = answer
        budgets = record.passes[record.pass_index]
        if len(record.answers) == len(budgets):
            self._passed(record, budgets, out)

    def _passed(self, record: _Request, budgets: Mapping[str, int], out: list[Send]) -> None:
        """Every answer of a pass is in: submit its plans, plan the next pass, or reject with the closest miss."""
        rid = record.request_id
        plans: dict[str, Plan] = {}
        for gpu in sorted(budgets):
            answer = record.answers[gpu]
            if isinstance(answer, PlanOptimized):
                plans[gpu] = msgspec.structs.replace(answer.plan, request_id=rid)
            elif isinstance(answer, PlanDoesNotFit) and (
                record.closest is None or answer.needed_mb < record.closest.needed_mb
            ):
                record.closest = answer
        if plans:
            record.plan = plans[max(plans, key=lambda g: (budgets[g], g))]
            request = record.request
            submit = SubmitRequest(
                request_id=rid,
                plans=plans,
                priority=request.priority,
                arrival=record.accepted_at,
                max_wait_s=request.max_wait_s,
                fallback=False,
            )
            if record.quote:
                self._transition(record, Event.QUOTED)
                out.append(Send(CLIENT, submit))
            else:
                self._transition(record, Event.PLANNED)
                out.append(Send(ADMISSION, submit))
            return
        if record.pass_index + 1 < len(record.passes):
            self._transition(record, Event.NEXT_PASS)
            record.pass_index += 1
            self._plan_pass(record, out)
            return
        closest = record.closest
        assert closest is not None
        self._reject(record, Event.NO_PLAN, "does_not_fit", closest.reason, out, miss=closest)

    def _expire(self, now: float, out: list[Send]) -> None:
        """End the requests whose wait bound passed before they reached admission (admission keeps it after)."""
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            deadline, _, rid = heapq.heappop(deadlines)
            record = self._requests.get(rid)
            if record is None or record.state not in _ASKING or record.deadline != deadline:
                continue
            waited = max(0.0, now - record.accepted_at)
            self._end(record, Event.TIMEOUT, "timed_out", f"waited {waited:.1f} s without being admitted", out)

    # ================================================================== admission, the run, cancellation

    def _admitted(self, message: RequestAdmitted, now: float, out: list[Send]) -> None:
        record = self._requests.get(message.request_id)
        if record is None:
            return
        self._transition(record, Event.ADMITTED)
        record.lease_id = message.lease_id
        record.plan = message.plan
        seconds = self.config.run_seconds(time_high_s(message.plan.requirement))
        self._lease_ends[record.request_id] = now + seconds

    def _cancel(self, message: CancelRequest, out: list[Send]) -> None:
        record = self._requests.get(message.request_id)
        if record is None:
            return  # it ended already
        if record.state in _ASKING:
            self._end(record, Event.CANCEL, "cancelled", message.reason or "cancelled before it was queued", out)
            return
        self._transition(record, Event.CANCEL)
        if record.state is not RequestState.RELEASING:
            out.append(Send(ADMISSION, message))

    def _finished(self, finished: RunFinished, out: list[Send]) -> None:
        """The run ended: teach the estimator and the optimizer, ask for the cleanup, release the lease."""
        record = self._requests.get(finished.request_id)
        if record is None:
            return  # admission ended it already (a lost device)
        if record.state is RequestState.ADMITTED and finished.lease_id != record.lease_id:
            raise RequestStateError(record.request_id, record.state.value, f"finished lease {finished.lease_id}")
        self._transition(record, Event.FINISHED)
        plan = record.plan
        assert plan is not None
        timed = self._timed(finished)
        if finished.observed.best_mb() is not None or finished.outcome == "oom" or timed.seconds is not None:
            # The estimator learns the lesson and publishes its corrections to the optimizer (and back here).
            out.append(Send(ESTIMATOR, ObserveRun(finished=timed, plan=plan)))
        if self.config.cleanup_after_run:
            out.append(Send(CLEANUP, finished))
        out.append(
            Send(
                ADMISSION, ReleaseLease(lease_id=record.lease_id, outcome=finished.outcome, reason=finished.error[:500])
            )
        )
        if finished.outcome == "oom":
            self._oomed[record.request_id] = _Oom(record.request, plan, record.attempt, record.root)
            while len(self._oomed) > 1024:
                self._oomed.popitem(last=False)

    def _timed(self, finished: RunFinished) -> RunFinished:
        """``finished`` with its seconds on the estimate's time scale for learning, or none when they teach no time:
        the run did not run to the end, or it lasted the ``min_run_s`` floor."""
        config = self.config
        seconds = finished.seconds
        if finished.outcome != "ok" or seconds is None or seconds <= 0.0 or seconds <= config.min_run_s:
            return msgspec.structs.replace(finished, seconds=None)
        return msgspec.structs.replace(finished, seconds=seconds / config.time_scale)

    def _retry(self, message: ShrinkPlan, out: list[Send]) -> None:
        """A client asks to retry a run that ran out of memory: ask the optimizer for a smaller plan, if allowed."""
        rid = message.request_id
        oom = self._oomed.pop(rid, None)
        config = self.config
        if oom is None or not config.retry_on_oom or oom.attempt >= config.max_oom_retries:
            reason = "retries after an out-of-memory run are off" if not config.retry_on_oom else "no retry left"
            if oom is None and config.retry_on_oom:
                reason = f"request {rid} did not run out of memory"
            out.append(Send(CLIENT, RetryDecided(request_id=rid, declined="no_retries", reason=reason)))
            return
        self._counter += 1
        qid = f"{QUESTION}{self._counter}"
        self._shrinking[qid] = oom
        level = message.max_level or oom.request.max_level
        out.append(Send(OPTIMIZER, self._with_lessons(ShrinkPlan(plan=oom.plan, request_id=qid, max_level=level))))

    def _shrunk(self, oom: _Oom, answer: Message, out: list[Send]) -> None:
        rid = oom.request.request_id
        if not isinstance(answer, PlanOptimized):
            why = getattr(answer, "reason", "no smaller plan")
            reason = f"out of memory, and no smaller plan within {oom.request.max_level!r}: {why}"
            out.append(Send(CLIENT, RetryDecided(request_id=rid, declined="no_smaller_plan", reason=reason)))
            return
        attempt = oom.attempt + 1
        retry_id = f"{oom.root}.{attempt + 1}"
        while retry_id in self._requests:
            retry_id += "r"
        retry = pinned_request(oom.request, answer.plan, retry_id)
        out.append(Send(CLIENT, RequestAccepted(request_id=retry_id, request=retry)))
        out.append(Send(CLIENT, RetryDecided(request_id=rid, retry_id=retry_id)))
        self._accept(retry_id, retry, self._now, out, attempt=attempt, root=oom.root)

    def _learned(self, message: CorrectionLearned) -> None:
        """Drop the cached answers when a lesson moved a correction by more than half a percent, or the lessons
        since the answers were cached moved it by more than two (both well inside the margin). Keep it for the
        optimizer's next question when the core forwards lessons."""
        if self.config.forwards_lessons:
            key = (message.model, message.gpu)
            self._unsent.pop(key, None)
            self._unsent[key] = message
        moved = {
            (message.model, message.gpu): message.factor,
            ("time", message.gpu): message.time_factor,
            ("time_high", message.gpu): message.time_factor * message.time_high,
        }
        stale = False
        for key, factor in moved.items():
            previous, cached = self._corrections.get(key, (1.0, 1.0))
            stale = stale or abs(factor - previous) > 0.005 * previous or abs(factor - cached) > 0.02 * cached
            self._corrections[key] = (factor, cached)
        if stale:
            self._corrections = {key: (factor, factor) for key, (factor, _) in self._corrections.items()}
            self._answers.clear()
            self._generation += 1  # questions asked before it are not joined, nor their answers kept


#: What the core does with each kind of message it takes (by exact type; each takes a message of its kind).
_TAKES: dict[type[Message], Callable[[RequestCore, Any, float, list[Send]], None]] = {
    RequestAccepted: RequestCore._on_accepted,
    DeviceBudgets: RequestCore._on_budgets,
    QuoteRequest: RequestCore._quote,
    RequirementEstimated: RequestCore._on_answer,
    PlanOptimized: RequestCore._on_answer,
    PlanDoesNotFit: RequestCore._on_answer,
    RequestRejected: RequestCore._on_rejected,
    RequestQueued: RequestCore._on_queued,
    RequestAdmitted: RequestCore._admitted,
    RequestEnded: RequestCore._on_ended,
    CancelRequest: RequestCore._on_cancel,
    RunFinished: RequestCore._on_finished,
    ShrinkPlan: RequestCore._on_shrink,
    CorrectionLearned: RequestCore._on_learned,
}
#: What the core takes and leaves to the gate (samples, cleanups, releases, progress, residency).
_PASSED_BY = frozenset({ResourceSample, CleanupReport, LeaseReleased, RunProgress, EvictModel, LeaseShrunk})
