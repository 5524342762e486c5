"""The actor runtime: bounded mailboxes, tell/ask, supervision, timers on the injected clock, and recording.

Actors run in an :class:`ActorSystem` (one task group, ``async with``) and talk only through typed messages
sent via :class:`ActorRef`. Decision-making actors are :class:`CoreActor` shells around sans-io :class:`Core`
objects, so that a recorded run can be replayed (:mod:`vramgate.replay`).
"""

from vramgate.actors.actor import Actor, ActorContext, Timer
from vramgate.actors.core import Core, CoreActor, Output, Reply, Send
from vramgate.actors.envelope import (
    EXTERNAL,
    TIMER,
    ActorStatistics,
    DeadLetter,
    Envelope,
    RestartPolicy,
    SystemStatistics,
)
from vramgate.actors.recorder import Recorder
from vramgate.actors.ref import ActorRef
from vramgate.actors.system import ActorSystem, UnknownActor

__all__ = [
    "EXTERNAL",
    "TIMER",
    "Actor",
    "ActorContext",
    "ActorRef",
    "ActorStatistics",
    "ActorSystem",
    "Core",
    "CoreActor",
    "DeadLetter",
    "Envelope",
    "Output",
    "Recorder",
    "Reply",
    "RestartPolicy",
    "Send",
    "SystemStatistics",
    "Timer",
    "UnknownActor",
]
