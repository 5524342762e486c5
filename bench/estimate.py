"""Accuracy and speed of the estimator on the published Wan2.2 figures, against the replaced system's formula.

    python bench/estimate.py [--reference vramgate/data/reference]

Prints, for every row of ``wan_published.csv``, the estimate's error on peak VRAM and on time, next to the
replaced system's VRAM formula (base 6500/6000/4500 MB for t2v-A14B/i2v-A14B/ti2v-5B, x resolution factor
480p 0.6 / 720p 1.0 / 1080p 2.4, x (1 + (steps-50)/50*0.3), x (1 + 0.15*loras)); then the DiffSynth-Studio
streaming rows of ``offload_tradeoffs.csv`` (time per step) and its rows that stream DiT blocks (VRAM, against the
same baseline); then the cost of one ``estimate()`` call. Published GB are read as GiB.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import msgspec

from vramgate.messages import ResolvedOptions, RunParams
from vramgate.messages.requests import ParamDtype
from vramgate.policy._reference import REFERENCE_DIR, read_published, read_streaming
from vramgate.policy.estimate import Estimator
from vramgate.policy.fit import offload_rows

BASE_MB = {"t2v-A14B": 6500.0, "i2v-A14B": 6000.0, "ti2v-5B": 4500.0}
RES_FACTOR = {"480p": 0.6, "720p": 1.0, "1080p": 2.4}


def resolution_name(width: int, height: int) -> str:
    short = min(width, height)
    return "480p" if short <= 540 else "720p" if short <= 800 else "1080p"


def baseline_vram_mb(params: RunParams) -> float:
    """The replaced resource manager's estimate."""
    res = RES_FACTOR[resolution_name(params.width, params.height)]
    return BASE_MB[params.model] * res * (1 + (params.steps - 50) / 50 * 0.3) * (1 + 0.15 * len(params.lora))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=REFERENCE_DIR)
    args = parser.parse_args()
    published = args.reference / "wan_published.csv"
    if not published.is_file():
        print(f"no reference data at {published}", file=sys.stderr)
        return 2
    estimator = Estimator()
    rows = read_published(published)
    print("| run | published GiB / s | estimate GiB / s | VRAM err | time err | baseline GiB | baseline err |")
    print("|---|---|---|---|---|---|---|")
    worst_vram = worst_time = worst_base = 0.0
    for row in rows:
        req = estimator.estimate(row.params, row.gpu)
        ev = req.vram_mb / row.peak_mb - 1
        et = req.estimated_time_seconds / row.seconds - 1
        base = baseline_vram_mb(row.params)
        eb = base / row.peak_mb - 1
        worst_vram, worst_time, worst_base = (
            max(worst_vram, abs(ev)),
            max(worst_time, abs(et)),
            max(worst_base, abs(eb)),
        )
        print(
            f"| {row.label} | {row.peak_mb / 1024:.1f} / {row.seconds:.0f} | {req.vram_mb / 1024:.1f} / "
            f"{req.estimated_time_seconds:.0f} | {ev:+.1%} | {et:+.1%} | {base / 1024:.1f} | {eb:+.1%} |"
        )
    print(f"worst |error|: VRAM {worst_vram:.1%}, time {worst_time:.1%}; baseline VRAM {worst_base:.1%}")

    streaming = read_streaming(args.reference / "offload_tradeoffs.csv")
    if streaming:
        print("\nDiffSynth-Studio Wan2.1-T2V-14B streaming on A100 (seconds per step; time relative to resident):")
        wan14 = RunParams(model="t2v-A14B", task="t2v", width=832, height=480, frames=81, steps=1)

        def per_step(options: ResolvedOptions) -> float:
            one = msgspec.structs.replace(wan14, options=options)
            two = msgspec.structs.replace(one, steps=2)
            return (
                estimator.estimate(two, "A100-80GB").estimated_time_seconds
                - estimator.estimate(one, "A100-80GB").estimated_time_seconds
            )

        for srow in streaming:
            if srow.persistent_params is None:
                continue
            dtype: ParamDtype = "fp8" if srow.dtype.startswith("fp8") else "bf16"
            resident = per_step(ResolvedOptions(convert_model_dtype=True, dit_dtype=dtype))
            blocks = round(srow.persistent_params / 14e9 * 40)
            streamed = per_step(ResolvedOptions(convert_model_dtype=True, dit_dtype=dtype, resident_blocks=blocks))
            base = next(r.seconds_per_step for r in streaming if r.persistent_params is None and r.dtype == srow.dtype)
            print(
                f"  {srow.persistent_params:.0e} params resident ({srow.dtype}): published "
                f"+{srow.seconds_per_step - base:.1f} s/step, estimate +{streamed - resident:.1f} s/step"
            )

    offloaded = offload_rows(args.reference)
    if offloaded:
        print("\nRunners that stream DiT blocks (offload_tradeoffs.csv, Wan2.1-T2V-14B 832x480x81; GiB):")
        print("| runner and mode | published | estimate | VRAM err | baseline | baseline err |")
        print("|---|---|---|---|---|---|")
        for orow in offloaded:
            req = estimator.estimate(orow.params, orow.gpu)
            base = baseline_vram_mb(orow.params)
            print(
                f"| {orow.label[:70]} | {orow.peak_mb / 1024:.1f} | {req.vram_mb / 1024:.1f} | "
                f"{req.vram_mb / orow.peak_mb - 1:+.1%} | {base / 1024:.1f} | {base / orow.peak_mb - 1:+.1%} |"
            )

    params = rows[1].params
    n = 20_000
    start = time.perf_counter()
    for _ in range(n):
        estimator.estimate(params, "H100-80GB")
    per_call = (time.perf_counter() - start) / n
    start = time.perf_counter()
    for _ in range(n):
        baseline_vram_mb(params)
    per_base = (time.perf_counter() - start) / n
    print(f"\nestimate(): {per_call * 1e6:.1f} us per call; baseline formula: {per_base * 1e6:.2f} us per call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
