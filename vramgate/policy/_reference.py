"""Reading the published reference figures (``wan_published.csv``) into run parameters.

Used by the calibration fit, the accuracy benchmark and the tests; not by the estimator itself. Peak memory in
the Wan table is in "GB", read here as GiB (binary units, as memory tools report them).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from vramgate.messages.plans import ResolvedOptions, RunParams

GIB_MB = 1024.0

#: Where the reference data lives relative to the repository root.
REFERENCE_DIR = Path("..") / "shared" / "data" / "reference"


@dataclass(frozen=True, slots=True)
class PublishedRow:
    """One row of ``wan_published.csv``: a run, the GPU it ran on, and its published time and peak."""

    params: RunParams
    gpu: str
    seconds: float
    peak_mb: float

    @property
    def label(self) -> str:
        p, o = self.params, self.params.options
        return f"{p.model} {p.width}x{p.height}x{p.frames} {self.gpu} x{o.gpus}"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        lines = [line for line in handle if line.strip() and not line.lstrip().startswith("#")]
    return list(csv.DictReader(lines))


def _flag(value: str) -> bool:
    return value.strip().lower() in ("true", "1", "yes")


def read_published(path: str | Path) -> list[PublishedRow]:
    """Rows of ``wan_published.csv``."""
    rows = []
    for raw in _rows(Path(path)):
        options = ResolvedOptions(
            offload_model=_flag(raw["offload_model"]),
            convert_model_dtype=_flag(raw["convert_model_dtype"]),
            t5_cpu=_flag(raw["t5_cpu"]),
            dit_fsdp=_flag(raw["dit_fsdp"]),
            t5_fsdp=_flag(raw["t5_fsdp"]),
            ulysses=int(raw["ulysses"]),
            gpus=int(raw["gpus"]),
        )
        params = RunParams(
            model=raw["model"],
            task=raw["task"],  # type: ignore[arg-type]
            width=int(raw["width"]),
            height=int(raw["height"]),
            frames=int(raw["frames"]),
            steps=int(raw["steps"]),
            options=options,
        )
        rows.append(
            PublishedRow(
                params=params,
                gpu=raw["gpu"],
                seconds=float(raw["seconds"]),
                peak_mb=float(raw["peak_gb"]) * GIB_MB,
            )
        )
    return rows


@dataclass(frozen=True, slots=True)
class StreamingRow:
    """One DiffSynth-Studio row of ``offload_tradeoffs.csv``: parameters kept resident and seconds per step."""

    gpu: str
    dtype: str
    persistent_params: float | None  # None: all weights resident
    seconds_per_step: float
    vram_mb: float


def read_streaming(path: str | Path) -> list[StreamingRow]:
    """The rows of ``offload_tradeoffs.csv`` with a GPU and a time per step (the DiffSynth-Studio ones)."""
    out = []
    for raw in _rows(Path(path)):
        if not raw.get("gpu") or not raw.get("seconds_per_step"):
            continue
        mode = raw["mode"]
        persistent: float | None
        if mode.startswith("all weights resident"):
            persistent = None
        elif "params persistent" in mode:
            persistent = float(mode.split()[0])
        else:
            continue
        out.append(
            StreamingRow(
                gpu=raw["gpu"],
                dtype=raw["dtype"],
                persistent_params=persistent,
                seconds_per_step=float(raw["seconds_per_step"]),
                vram_mb=float(raw["vram_gb"]) * GIB_MB,
            )
        )
    return out
