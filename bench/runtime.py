"""Cost of the actor runtime per hop against raw anyio memory streams, recording, and replay read speed.

    python bench/runtime.py [HOPS] [--backend asyncio|trio|both]

Prints, for each backend, the raw stream cost per hop (one-way and round trip), the runtime's ``tell`` and
``ask`` over the same number of hops, their ratios, the recording cost per message, and how many log records
a second ``read_log`` and ``replay`` get through.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import anyio

from vramgate.actors import Actor, ActorSystem, CoreActor, Envelope, Output, Recorder, Reply
from vramgate.messages import Message, RequestQueued
from vramgate.replay import read_log, register_core_kind, replay

MESSAGE = RequestQueued(request_id="r1", position=1)


class Counter(Actor[Message]):
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.done = anyio.Event()

    async def receive(self, message: Message, envelope: Envelope) -> None:
        self.count += 1
        if self.count == self.expected:
            self.done.set()


class Echo(Actor[Message]):
    async def receive(self, message: Message, envelope: Envelope) -> None:
        await self.context.reply(envelope, message)


class EchoCore:
    def handle(self, message: Message, now: float) -> Sequence[Output]:
        return [Reply(message)]


async def raw_one_way(hops: int) -> float:
    send, receive = anyio.create_memory_object_stream[Message](1024)

    async def consumer() -> None:
        async with receive:
            async for _ in receive:
                pass

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer)
        async with send:
            for _ in range(hops):
                await send.send(MESSAGE)
    return (time.perf_counter() - start) / hops


async def raw_round_trip(hops: int) -> float:
    request_send, request_receive = anyio.create_memory_object_stream[Message](1024)
    reply_send, reply_receive = anyio.create_memory_object_stream[Message](1024)

    async def server() -> None:
        async with request_receive, reply_send:
            async for message in request_receive:
                await reply_send.send(message)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        tg.start_soon(server)
        async with request_send, reply_receive:
            for _ in range(hops):
                await request_send.send(MESSAGE)
                await reply_receive.receive()
    return (time.perf_counter() - start) / hops


async def runtime_tell(hops: int, recorder: Recorder | None = None) -> float:
    system = ActorSystem(recorder=recorder)
    counter = Counter(hops)
    ref = system.spawn(counter, name="counter", mailbox_size=1024)
    start = time.perf_counter()
    async with system:
        for _ in range(hops):
            await ref.tell(MESSAGE)
        await counter.done.wait()
    return (time.perf_counter() - start) / hops


async def runtime_ask(hops: int) -> float:
    system = ActorSystem()
    ref = system.spawn(Echo(), name="echo")
    start = time.perf_counter()
    async with system:
        for _ in range(hops):
            await ref.ask(MESSAGE, timeout=10)
    return (time.perf_counter() - start) / hops


async def record_log(path: Path, hops: int) -> None:
    system = ActorSystem(recorder=Recorder(path))
    ref = system.spawn(CoreActor(EchoCore(), kind="bench.echo"), name="echo")
    async with system:
        for _ in range(hops // 2):
            await ref.ask(MESSAGE, timeout=10)


async def run(hops: int, backend: str, repeats: int) -> None:
    # Each round measures everything back to back, and the best round of each is kept, so that a burst of
    # load from elsewhere on the machine hits the baseline and the runtime alike.
    rounds: dict[str, list[float]] = {"one_way": [], "tell": [], "recorded": [], "round_trip": [], "ask": []}
    for _ in range(repeats):
        rounds["one_way"].append(await raw_one_way(hops))
        rounds["tell"].append(await runtime_tell(hops))
        rounds["recorded"].append(await runtime_tell(hops, Recorder(io.BytesIO())))
        rounds["round_trip"].append(await raw_round_trip(hops))
        rounds["ask"].append(await runtime_ask(hops))
    one_way, tell, recorded, round_trip, ask = (min(rounds[k]) for k in rounds)
    us = 1e6
    print(f"[{backend}] {hops} hops, best of {repeats} rounds")
    print(f"  raw stream one-way      {one_way * us:7.2f} us/hop")
    print(f"  runtime tell            {tell * us:7.2f} us/hop          ratio {tell / one_way:5.2f}  (target <= 1.50)")
    print(f"  raw stream round trip   {round_trip * us:7.2f} us/round trip")
    print(f"  runtime ask             {ask * us:7.2f} us/round trip   ratio {ask / round_trip:5.2f}  (target <= 1.50)")
    cost = (recorded - tell) * us
    print(f"  tell with recording     {recorded * us:7.2f} us/hop          recording {cost:5.2f} us/message  (<= 5)")


def bench_replay(records: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.jsonl"
        register_core_kind("bench.echo", lambda header, spec: EchoCore())
        anyio.run(record_log, path, records)
        start = time.perf_counter()
        _, lines = read_log(path)
        count = sum(1 for _ in lines)
        read_rate = count / (time.perf_counter() - start)
        start = time.perf_counter()
        result = replay(path)
        replay_rate = result.records / (time.perf_counter() - start)
        assert result.identical, result.summary()
        print(f"[replay] {count} records ({path.stat().st_size / count:.0f} bytes each)")
        print(f"  read_log                {read_rate:9.0f} records/s  (target >= 100000)")
        print(f"  replay (read + compare) {replay_rate:9.0f} records/s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("hops", type=int, nargs="?", default=20_000)
    parser.add_argument("--backend", choices=["asyncio", "trio", "both"], default="both")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    backends = ["asyncio", "trio"] if args.backend == "both" else [args.backend]
    for backend in backends:
        anyio.run(run, args.hops, backend, args.repeats, backend=backend)
    bench_replay(max(args.hops, 100_000))


if __name__ == "__main__":
    main()
