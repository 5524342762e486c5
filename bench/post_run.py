"""What a run's end costs the process: the estimator learning from it, and the post-run garbage collection.

    python bench/post_run.py [--waiting 20000] [--repeat 2000]

Prints, from one run:

* ``Estimator.observe`` of one finished run, with the physics of each (run, GPU) remembered, against the same call
  with the physics computed every time (the memory emptied before each call, as before it existed);
* a full ``gc.collect()`` with torch (when installed) and FastAPI imported and ``--waiting`` requests' objects alive
  (a request and its events each), as the heap is; then with the heap of before those requests frozen
  (``gc.freeze()``, what the server's ``freeze_heap`` does once started), and the young generations only
  (``gc.collect(1)``, what a post-run cleanup on a device without a cache does). A collection holds the interpreter,
  the event loop included, for as long as it takes.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import time

import msgspec

from vramgate.messages import GenerationRequest, ObservedPeak, Plan, RunFinished
from vramgate.policy.estimate import Estimator


def observe_us(repeat: int, *, remembered: bool) -> float:
    """Best of 5 rounds of ``repeat`` calls: CPU microseconds per ``Estimator.observe``."""
    estimator = Estimator()
    params = estimator.resolve(GenerationRequest(model="ti2v-5B", width=832, height=480, frames=81, steps=30))
    requirement = estimator.estimate(params, "H100-80GB")
    plan = Plan(params=params, requirement=requirement, gpu="H100-80GB")
    peak = ObservedPeak(torch_peak_reserved_mb=requirement.vram_mb)
    finished = RunFinished(request_id="r", lease_id="l", outcome="ok", observed=peak, seconds=1.0)
    constants = estimator.constants
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for _ in range(repeat):
            if not remembered:  # equal constants, but new ones: what the estimator remembers no longer holds
                estimator.constants = msgspec.structs.replace(constants)
            estimator.observe(finished, plan)
        best = min(best, (time.process_time() - started) / repeat)
    return best * 1e6


def collect_ms(generation: int = 2) -> float:
    """Best of 3: milliseconds one ``gc.collect(generation)`` takes."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        gc.collect(generation)
        best = min(best, time.perf_counter() - started)
    return best * 1e3


def main(waiting: int, repeat: int) -> None:
    remembered, computed = observe_us(repeat, remembered=True), observe_us(repeat, remembered=False)
    print(
        f"learning from a run (Estimator.observe): {remembered:.1f} us; "
        f"the physics computed each time: {computed:.1f} us"
    )

    imported = [name for name in ("torch", "fastapi") if _imports(name)]
    gc.collect()
    gc.freeze()  # what the server does once started: everything alive now is left out of every collection
    frozen_objects = gc.get_freeze_count()
    queue = [  # made after startup: the waiting requests that a collection still walks
        {"request": GenerationRequest(model="ti2v-5B", width=832, height=480, request_id=f"r{i}"), "events": [i]}
        for i in range(waiting)
    ]
    frozen, young = collect_ms(), collect_ms(1)
    gc.unfreeze()
    full = collect_ms()
    heavy = ", ".join(imported) or "nothing heavy"
    print(
        f"a full gc.collect() with {heavy} imported and {waiting:,} waiting requests' objects "
        f"({len(gc.get_objects()):,} objects): {full:.1f} ms"
    )
    print(
        f"  with the startup heap frozen ({frozen_objects:,} objects): {frozen:.1f} ms; the young generations only: "
        f"{young:.2f} ms"
    )
    del queue


def _imports(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--waiting", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    main(args.waiting, args.repeat)
