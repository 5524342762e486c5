"""The side-by-side table of policy results (rich for terminals, Markdown for the README).

``failed`` counts every request that ended failed (``failed OOM`` those whose last run ran out of memory, and
requests still waiting when the trace ended); ``leaked`` counts leases and waiting requests the policy still
held at the end, and allocations left on the devices; ``host OOM`` runs the host's OOM killer ended, ``load GPU-s``
the GPU time spent loading weights that were not resident.
"""

from __future__ import annotations

from collections.abc import Sequence

from vramgate.simulate.metrics import PolicyResult

COLUMNS: tuple[tuple[str, str], ...] = (
    ("policy", "policy"),
    ("done", "completed"),
    ("rejected", "rejected_upfront"),
    ("failed", "failed"),
    ("failed OOM", "failed_oom"),
    ("OOM events", "oom_events"),
    ("host OOM", "host_oom_kills"),
    ("wasted GPU-s", "wasted_gpu_s"),
    ("load GPU-s", "load_gpu_s"),
    ("makespan s", "makespan_s"),
    ("mean wait s", "mean_wait_s"),
    ("p95 wait s", "p95_wait_s"),
    ("p95 wait by priority", "p95_wait_by_priority"),
    ("mem use", "mean_memory_use"),
    ("over-commits", "overcommits"),
    ("leaked", "leaked_leases"),
)


def _cell(result: PolicyResult, field: str) -> str:
    value = getattr(result, field)
    if field == "p95_wait_by_priority":
        return " ".join(f"{p}:{v:.0f}" for p, v in value.items())
    if field == "mean_memory_use":
        return f"{value:.0%}"
    if isinstance(value, float):
        return f"{value:,.0f}"
    return str(value)


def rows(results: Sequence[PolicyResult]) -> list[list[str]]:
    table = [[_cell(r, field) for _, field in COLUMNS] for r in results]
    if results:
        makespan = [field for _, field in COLUMNS].index("makespan_s")
        for label, bound in (
            ("bound (no memory limits)", results[0].bound_makespan_s),
            ("speed-aware bound", results[0].speed_bound_makespan_s),
        ):
            row = [""] * len(COLUMNS)
            row[0] = label
            row[makespan] = f"{bound:,.0f}"
            table.append(row)
    return table


def render_table(results: Sequence[PolicyResult], *, markdown: bool = False) -> str:
    """The table as text: Markdown, or aligned columns."""
    header = [name for name, _ in COLUMNS]
    body = rows(results)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in body]
    return "\n".join(out)
