"""A per-device memory timeline of one simulation: true use, planned (reserved) memory, capacity, runs, OOMs.

matplotlib is imported only here, and only when a plot is asked for (``pip install matplotlib``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from vramgate.errors import ConfigError

if TYPE_CHECKING:
    from vramgate.simulate.engine import Simulation

_COLORS = {"ok": "tab:green", "oom": "tab:red", "error": "tab:orange", "cancelled": "tab:gray"}


def plot_timeline(sim: Simulation, path: str | Path) -> None:
    """Draw the memory timeline of every device of a finished simulation (run with ``timeline=True``)."""
    if sim.timeline is None:
        raise ConfigError("the simulation recorded no timeline (create it with timeline=True)")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("plotting needs matplotlib: pip install matplotlib") from None
    timeline = sim.timeline
    count = len(sim.specs)
    fig, axes = plt.subplots(count, 1, figsize=(12, 2.6 * count), sharex=True, squeeze=False)
    for device, ax in enumerate(axes[:, 0]):
        _device(ax, sim, device)
    axes[-1, 0].set_xlabel("simulated time (s)")
    axes[0, 0].legend(loc="upper right", fontsize="small")
    fig.suptitle(f"{sim.policy.name}: memory per device")
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    plt.close(fig)
    del timeline


def _device(ax: Any, sim: Simulation, device: int) -> None:
    timeline = sim.timeline
    assert timeline is not None
    capacity = sim.specs[device].memory_mib / 1024
    points = timeline.points[device]
    if points:
        times = [p[0] for p in points]
        ax.step(times, [p[1] / 1024 for p in points], where="post", label="true use", color="tab:blue")
        ax.step(
            times,
            [p[2] / 1024 for p in points],
            where="post",
            label="planned/reserved",
            color="tab:purple",
            linestyle="--",
        )
    ax.axhline(capacity, color="black", linewidth=1, label="capacity")
    bars = [b for b in timeline.bars if b[0] == device]
    for row, (_, start, end, outcome, _) in enumerate(bars):
        ax.broken_barh([(start, max(end - start, 1e-3))], (-4 - (row % 4) * 2, 1.6), color=_COLORS.get(outcome, "k"))
    ooms = [t for d, t in timeline.ooms if d == device]
    if ooms:
        ax.scatter(ooms, [capacity] * len(ooms), marker="x", color="tab:red", zorder=3, label="OOM")
    ax.set_ylabel(f"GPU {device} GiB\n{sim.specs[device].name}")
    ax.set_ylim(-12, capacity * 1.1)
