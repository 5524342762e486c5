"""Reading the published reference figures (``wan_published.csv``, ``offload_tradeoffs.csv``) into runs.

Used by the calibration fit, the accuracy benchmark and the tests; not by the estimator itself. Peak memory in
the Wan table is in "GB", read here as GiB (binary units, as memory tools report them).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from vramgate.messages.plans import ResolvedOptions, RunParams
from vramgate.messages.requests import ParamDtype

GIB_MB = 1024.0

#: The reference data, shipped with the package (its README says where each figure comes from).
REFERENCE_DIR = Path(__file__).resolve().parent.parent / "data" / "reference"


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


@dataclass(frozen=True, slots=True)
class OffloadMemoryRow:
    """A row of ``offload_tradeoffs.csv`` whose runner streams DiT blocks, as a run and its published VRAM.

    ``params`` is the run as the row's runner does it (see :func:`read_offload_memory`), ``peak_mb`` its VRAM.
    """

    system: str
    mode: str
    params: RunParams
    gpu: str
    peak_mb: float

    @property
    def label(self) -> str:
        return f"{self.system} {self.params.options.dit_dtype} {self.mode}"


#: What the offload rows ran: Wan2.1-T2V-14B (the same DiT, VAE and text encoder as one t2v-A14B expert) at the
#: default size of DiffSynth-Studio's ``WanVideoPipeline.__call__`` and diffusers' ``WanPipeline.__call__``
#: (832x480, 81 frames, 50 steps); neither example passes a size.
OFFLOAD_RUN = RunParams(model="t2v-A14B", task="t2v", width=832, height=480, frames=81, steps=50)
#: A GPU to price VRAM-only rows on (the VRAM model does not depend on the GPU).
OFFLOAD_DEFAULT_GPU = "A100-80GB"


def read_offload_memory(path: str | Path, *, block_params: float, nonblock_params: float) -> list[OffloadMemoryRow]:
    """The rows of ``offload_tradeoffs.csv`` whose runner streams DiT blocks, mapped onto vramgate's options.

    * DiffSynth-Studio ``num_persistent_param_in_dit=N``: the embeddings and then whole blocks are kept on the GPU
      up to N parameters (``resident_blocks``; 0 is ``sequential_offload``); the pipeline moves idle models off the
      GPU (``offload_model``), decodes in tiles (``tiled=True``, ``vae_tiling``) and loads bf16 weights
      (``convert_model_dtype``; ``dit_dtype="fp8"`` for float8 storage).
    * diffusers group offloading at ``leaf_level``: every layer streamed (``sequential_offload``), the text
      encoder streamed block by block, the fp32 VAE resident and untiled.

    Rows that keep every DiT weight resident, or whose model is not in the catalog, are left out: the options
    map an all-resident run to ``generate.py``'s runner, and a 1.3B run's peak is its text encoder.
    """
    out = []
    for raw in _rows(Path(path)):
        mode, system = raw["mode"], raw["system"]
        if raw["model"] != "Wan2.1-T2V-14B":
            continue
        dtype: ParamDtype = "fp8" if raw["dtype"].startswith("fp8") else "bf16"
        if system == "DiffSynth-Studio" and "params persistent" in mode:
            persistent = float(mode.split()[0])
            blocks = max(0, int((persistent - nonblock_params) // block_params)) if persistent > 0 else 0
            options = ResolvedOptions(
                convert_model_dtype=True,
                offload_model=True,
                vae_tiling=True,
                dit_dtype=dtype,
                resident_blocks=blocks if blocks > 0 else None,
                sequential_offload=blocks == 0,
            )
        elif system == "diffusers" and "leaf_level" in mode:
            options = ResolvedOptions(convert_model_dtype=True, sequential_offload=True, dit_dtype=dtype)
        else:
            continue
        out.append(
            OffloadMemoryRow(
                system=system,
                mode=mode,
                params=RunParams(
                    model=OFFLOAD_RUN.model,
                    task=OFFLOAD_RUN.task,
                    width=OFFLOAD_RUN.width,
                    height=OFFLOAD_RUN.height,
                    frames=OFFLOAD_RUN.frames,
                    steps=OFFLOAD_RUN.steps,
                    options=options,
                ),
                gpu=raw.get("gpu") or OFFLOAD_DEFAULT_GPU,
                peak_mb=float(raw["vram_gb"]) * GIB_MB,
            )
        )
    return out
