"""The server's workers: jobs handed from plain callbacks to waiting tasks, a new task only when none waits."""

from __future__ import annotations

import anyio
import pytest

from vramgate.server._workers import Job, Workers

pytestmark = pytest.mark.anyio


async def test_jobs_reuse_waiting_workers_and_run_concurrently() -> None:
    done: list[int] = []
    release = anyio.Event()

    def job(number: int, *, hold: bool = False) -> Job:
        async def run() -> None:
            if hold:
                await release.wait()
            done.append(number)

        return run

    async with anyio.create_task_group() as tg:
        workers = Workers(tg, idle_limit=2)
        for number in range(3):  # three held at once: three workers
            workers.submit(job(number, hold=True))
        await anyio.wait_all_tasks_blocked()
        assert (workers.started, workers.idle, done) == (3, 0, [])
        release.set()
        await anyio.wait_all_tasks_blocked()
        assert sorted(done) == [0, 1, 2]
        assert workers.idle == 2  # the third ended: at most two wait
        for number in range(3, 13):  # one after another: the waiting workers take them
            workers.submit(job(number))
            await anyio.wait_all_tasks_blocked()
        assert done[3:] == list(range(3, 13))
        assert workers.started == 3
        tg.cancel_scope.cancel()
    assert workers.idle == 0  # cancelled while waiting: none is left to hand a job to


def test_idle_limit_is_not_negative() -> None:
    async def main() -> None:
        async with anyio.create_task_group() as tg:
            with pytest.raises(ValueError, match="idle_limit"):
                Workers(tg, idle_limit=-1)

    anyio.run(main)
