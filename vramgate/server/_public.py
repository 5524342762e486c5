"""What a client may read of the gate's texts: a run's failure as a fixed phrase, never the exception's text.

A run's error text (``RunFinished.error``, and the ``RequestEnded`` reason that repeats it) is written for the
operator: it holds exception messages, reprs with memory addresses and file paths. The server logs it and shows
clients a short phrase for the outcome instead, with the exception's type when the text names one.
"""

from __future__ import annotations

import re

import msgspec

from vramgate.gate import CANCELLED_RUN
from vramgate.messages import Message, RequestEnded, RunFinished

#: What a client reads when a run did not end well, by its outcome.
RUN_REASONS = {
    "cancelled": CANCELLED_RUN,
    "oom": "the run ran out of GPU memory",
    "error": "the run failed",
}
#: The server's own reasons for ending a run (a graceful shutdown, a restart after a crash): fixed phrases that
#: clients read as they are.
SERVER_REASONS = frozenset({"shutdown", "interrupted"})
_TYPE_NAME = re.compile(r"^([A-Z][A-Za-z0-9_]{0,79}): ")


def error_reason(error: str) -> str:
    """The client's phrase for a run that raised, from the operator's ``"Type: message"``: ``"the run failed
    (Type)"``."""
    match = _TYPE_NAME.match(error)
    return f"{RUN_REASONS['error']} ({match.group(1)})" if match is not None else RUN_REASONS["error"]


def run_reason(finished: RunFinished) -> str:
    """The client's phrase for a run that did not end ``ok`` (``"the run failed (RuntimeError)"``)."""
    if finished.error in SERVER_REASONS:
        return finished.error
    if finished.outcome == "error":
        return error_reason(finished.error)
    return RUN_REASONS.get(finished.outcome, RUN_REASONS["error"])


def client_reason(reason: str, finished: RunFinished | None) -> str:
    """``reason`` as a client reads it: the run's phrase when the request's run did not end ``ok`` (the reason
    is then the run's error text), else the gate's own sentence (rejections, timeouts, cancellations in queue)."""
    if finished is not None and finished.outcome != "ok":
        return run_reason(finished)
    return reason


def client_event(event: Message, finished: RunFinished | None) -> Message:
    """An event as a client reads it; ``finished`` is the request's latest run, if any."""
    if isinstance(event, RunFinished):
        return msgspec.structs.replace(event, error=run_reason(event)) if event.outcome != "ok" else event
    if isinstance(event, RequestEnded):
        reason = client_reason(event.reason, finished)
        return event if reason == event.reason else msgspec.structs.replace(event, reason=reason)
    return event
