"""Fit the estimator's free constants to published figures and write ``calibration.json``.

Run from the repository root::

    python -m vramgate.policy.fit [--reference vramgate/data/reference] [--out vramgate/policy/calibration.json]

The memory constants the traces do not cover (runtime overhead, multi-GPU overhead, what sequence parallelism
holds beyond the traced forward, the Wan2.2 VAE's working memory) are fitted to the peaks of ``wan_published.csv``
with the built-ins' traced activations held, the time constants to its times, the activations of the runners
that stream DiT blocks to the VRAM of the streamed rows of ``offload_tradeoffs.csv`` (DiffSynth-Studio and
diffusers, Wan2.1-T2V-14B at 832x480x81), and the streaming efficiency to the
DiffSynth-Studio rows' extra seconds per step. Each constant has a prior (a physically plausible starting value)
with a weak pull towards it, so constants the data do not pin stay sensible. The objective is the sum of squared
log errors; the search is Nelder-Mead over log-parameters within bounds. Deterministic: the same data, the same file.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from vramgate.policy._derived import derive
from vramgate.policy._reference import (
    REFERENCE_DIR,
    OffloadMemoryRow,
    PublishedRow,
    StreamingRow,
    read_offload_memory,
    read_published,
    read_streaming,
)
from vramgate.policy.calibration import CALIBRATION_CODEC, Calibration
from vramgate.policy.estimate import Estimator
from vramgate.policy.gpus import DEFAULT_GPU_CATALOG
from vramgate.policy.models import DEFAULT_MODEL_CATALOG, DTYPE_BYTES


@dataclass(frozen=True)
class Param:
    """One fitted constant: ``field`` (``name`` or ``name.key`` for a dict entry), prior and bounds."""

    field: str
    prior: float
    low: float
    high: float
    weight: float = 0.02


#: The DiT activations of the built-ins are traced (``traced.json``), not fitted: the memory fit is left
#: with what the traces do not cover.
MEMORY_PARAMS = (
    Param("sp_extra_bytes_per_token_dim", 10.0, 0.0001, 100.0),
    Param("runtime_overhead_mb", 1000.0, 200.0, 4000.0),
    Param("multi_gpu_overhead_mb", 1000.0, 0.0001, 6000.0),
    Param("vae_decode_bytes_per_pixel.wan2.2", 16000.0, 2000.0, 60000.0),
)
#: Fitted to the streamed rows of ``offload_tradeoffs.csv`` with the memory constants above held.
STREAMED_PARAMS = (Param("act_streamed_bytes_per_token_dim", 30.0, 5.0, 200.0),)
#: The roofline's efficiencies (compute by architecture, memory, interconnect) and the traffic it serves.
TIME_PARAMS = (
    Param("compute_efficiency.hopper", 0.5, 0.1, 0.85),
    Param("compute_efficiency.ampere", 0.6, 0.1, 0.85),
    Param("compute_efficiency.ada", 0.6, 0.1, 0.85),
    Param("memory_efficiency", 0.7, 0.3, 0.95, weight=0.2),
    Param("interconnect_efficiency", 0.6, 0.1, 0.95, weight=0.2),
    Param("elementwise_bytes_per_token_dim", 200.0, 10.0, 2000.0),
    Param("vae_bytes_per_flop", 0.05, 0.005, 2.0),
    Param("pageable_link_efficiency", 0.2, 0.02, 0.9),
    Param("cpu_text_encoder_gflops", 300.0, 30.0, 3000.0, weight=0.2),
    Param("run_overhead_s", 5.0, 0.5, 60.0),
)


def with_values(base: Calibration, params: Sequence[Param], values: Sequence[float]) -> Calibration:
    changes: dict[str, Any] = {}
    for param, value in zip(params, values, strict=True):
        name, _, key = param.field.partition(".")
        if key:
            current = dict(changes.get(name, getattr(base, name)))
            current[key] = value
            changes[name] = current
        else:
            changes[name] = value
    return msgspec.structs.replace(base, **changes)


def value_of(cal: Calibration, field: str) -> float:
    name, _, key = field.partition(".")
    value = getattr(cal, name)
    return float(value[key] if key else value)


def nelder_mead(
    f: Callable[[list[float]], float], x0: list[float], *, step: float = 0.3, iters: int = 4000
) -> list[float]:
    """Minimise ``f`` from ``x0`` (plain Nelder-Mead with restarts; deterministic)."""
    best = list(x0)
    for _ in range(3):
        n = len(best)
        simplex = [list(best)] + [[v + (step if i == j else 0.0) for j, v in enumerate(best)] for i in range(n)]
        scores = [f(p) for p in simplex]
        for _ in range(iters):
            order = sorted(range(n + 1), key=lambda i: scores[i])
            simplex = [simplex[i] for i in order]
            scores = [scores[i] for i in order]
            if abs(scores[-1] - scores[0]) < 1e-12:
                break
            centroid = [sum(p[j] for p in simplex[:-1]) / n for j in range(n)]
            worst = simplex[-1]
            reflected = [c + (c - w) for c, w in zip(centroid, worst, strict=True)]
            fr = f(reflected)
            if fr < scores[0]:
                expanded = [c + 2.0 * (c - w) for c, w in zip(centroid, worst, strict=True)]
                fe = f(expanded)
                simplex[-1], scores[-1] = (expanded, fe) if fe < fr else (reflected, fr)
            elif fr < scores[-2]:
                simplex[-1], scores[-1] = reflected, fr
            else:
                contracted = [c + 0.5 * (w - c) for c, w in zip(centroid, worst, strict=True)]
                fc = f(contracted)
                if fc < scores[-1]:
                    simplex[-1], scores[-1] = contracted, fc
                else:
                    simplex = [simplex[0]] + [
                        [b + 0.5 * (p - b) for b, p in zip(simplex[0], q, strict=True)] for q in simplex[1:]
                    ]
                    scores = [scores[0]] + [f(p) for p in simplex[1:]]
        best = simplex[0]
    return best


def _objective(
    rows: Sequence[PublishedRow | OffloadMemoryRow], params: Sequence[Param], base: Calibration, what: str
) -> Callable[[list[float]], float]:
    def f(z: list[float]) -> float:
        values = []
        penalty = 0.0
        for p, zi in zip(params, z, strict=True):
            v = math.exp(zi)
            if v < p.low or v > p.high:
                penalty += 100.0 * (math.log(max(v / p.high, p.low / v))) ** 2
                v = min(max(v, p.low), p.high)
            values.append(v)
            penalty += p.weight * math.log(v / p.prior) ** 2
        est = Estimator(constants=with_values(base, params, values))
        err = 0.0
        for row in rows:
            b = est.breakdown(row.params, row.gpu)
            if what == "memory":
                pred, obs = b.vram / 2**20, row.peak_mb
            elif isinstance(row, PublishedRow):
                pred, obs = b.seconds, row.seconds
            else:
                continue
            err += math.log(pred / obs) ** 2
        return err + penalty

    return f


def fit_stream_efficiency(rows: Sequence[StreamingRow]) -> float:
    """Host-link efficiency of block streaming from DiffSynth-Studio's Wan2.1-T2V-14B rows (bf16, A100).

    Each streamed row costs ``seconds_per_step - resident seconds_per_step`` more per step; the 14B DiT streams
    ``(14e9 - persistent) * 2`` bytes twice per step (conditional and unconditional passes).
    """
    resident = {r.dtype: r.seconds_per_step for r in rows if r.persistent_params is None}
    ratios = []
    for r in rows:
        if r.persistent_params is None or r.dtype != "bf16" or "bf16" not in resident:
            continue
        extra = r.seconds_per_step - resident["bf16"]
        streamed = (14e9 - r.persistent_params) * DTYPE_BYTES["bf16"] * 2
        link = DEFAULT_GPU_CATALOG.get(r.gpu).host_link_gbps * 1e9
        if extra > 0:
            ratios.append(streamed / extra / link)
    return sum(ratios) / len(ratios) if ratios else Calibration().stream_link_efficiency


def offload_rows(reference: Path) -> list[OffloadMemoryRow]:
    """The streamed rows of ``offload_tradeoffs.csv``, with DiffSynth's persistent parameters in t2v-A14B blocks."""
    d = derive(DEFAULT_MODEL_CATALOG.get("t2v-A14B"))
    return read_offload_memory(
        reference / "offload_tradeoffs.csv", block_params=d.block_params, nonblock_params=d.nonblock_params
    )


def fit(reference: Path) -> tuple[Calibration, dict[str, float]]:
    published = read_published(reference / "wan_published.csv")
    streaming = read_streaming(reference / "offload_tradeoffs.csv")
    offloaded = offload_rows(reference)
    base = Calibration()
    stages: tuple[tuple[Sequence[PublishedRow | OffloadMemoryRow], Sequence[Param], str], ...] = (
        (published, MEMORY_PARAMS, "memory"),
        (offloaded, STREAMED_PARAMS, "memory"),
        (published, TIME_PARAMS, "time"),
    )
    for rows, params, what in stages:
        if not rows:
            continue
        f = _objective(rows, params, base, what)
        z = nelder_mead(f, [math.log(p.prior) for p in params])
        values = [min(max(math.exp(zi), p.low), p.high) for p, zi in zip(params, z, strict=True)]
        base = with_values(base, params, values)
    compute = dict(base.compute_efficiency)
    compute["blackwell"] = compute["ada"]  # consumer Blackwell: like Ada (same fp32-accumulate tensor rate class)
    compute["default"] = min(compute["hopper"], compute["ampere"], compute["ada"])
    base = msgspec.structs.replace(
        base, compute_efficiency=compute, stream_link_efficiency=fit_stream_efficiency(streaming)
    )
    rounded = _rounded(base)
    return rounded, {
        "rows": float(len(published)),
        "streaming_rows": float(len(streaming)),
        "offload_memory_rows": float(len(offloaded)),
    }


def _rounded(cal: Calibration) -> Calibration:
    def r(v: float) -> float:
        return float(f"{v:.4g}")

    changes: dict[str, Any] = {}
    for name in cal.__struct_fields__:
        value = getattr(cal, name)
        if isinstance(value, float):
            changes[name] = r(value)
        elif isinstance(value, dict):
            changes[name] = {k: r(v) for k, v in sorted(value.items())}
    return msgspec.structs.replace(cal, **changes)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=REFERENCE_DIR, help="folder with the reference CSVs")
    parser.add_argument("--out", type=Path, default=Path("vramgate/policy/calibration.json"))
    args = parser.parse_args(argv)
    if not (args.reference / "wan_published.csv").is_file():
        print(f"no wan_published.csv in {args.reference}", file=sys.stderr)
        return 2
    cal, _ = fit(args.reference)
    cal = msgspec.structs.replace(
        cal,
        source=(
            "fitted by `python -m vramgate.policy.fit` to wan_published.csv (peaks read as GiB) and the "
            "streamed DiffSynth-Studio and diffusers rows of offload_tradeoffs.csv in vramgate/data/reference"
        ),
    )
    data = msgspec.json.format(CALIBRATION_CODEC.encode_json(cal), indent=2)
    args.out.write_bytes(data + b"\n")
    est = Estimator(DEFAULT_MODEL_CATALOG, constants=cal)
    for row in read_published(args.reference / "wan_published.csv"):
        b = est.breakdown(row.params, row.gpu)
        print(
            f"{row.label:48s} vram {b.vram / 2**20 / row.peak_mb - 1:+7.1%}  time {b.seconds / row.seconds - 1:+7.1%}"
        )
    for orow in offload_rows(args.reference):
        b = est.breakdown(orow.params, orow.gpu)
        print(f"{orow.label[:60]:60s} vram {b.vram / 2**20 / orow.peak_mb - 1:+7.1%}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
