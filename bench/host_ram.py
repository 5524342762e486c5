"""Host RAM a torch CUDA process holds besides model weights: what the estimator's per-process runtime RAM covers.

Run on a machine with an NVIDIA GPU: ``python bench/host_ram.py``. It prints the process's resident set (RSS)
after each step of bringing up what a Wan run uses (torch, the CUDA context, cuBLAS, cuDNN, attention, the
libraries diffusers-style runners import), against the baseline of the bare interpreter measured in the same run,
and the host memory that pinning one Wan A14B FFN weight (13824 x 5120 bf16) takes against its nominal size.
"""

from __future__ import annotations

import importlib
import os

import psutil

MIB = float(1 << 20)


def rss_mb() -> float:
    return float(psutil.Process(os.getpid()).memory_info().rss) / MIB


def main() -> int:
    rows: list[tuple[str, float]] = [("bare python (baseline)", rss_mb())]
    import torch

    rows.append(("import torch", rss_mb()))
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 1
    torch.ones(1, device="cuda")
    torch.cuda.synchronize()
    rows.append(("CUDA context", rss_mb()))
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    (a @ a).sum().item()
    rows.append(("cuBLAS bf16 matmul", rss_mb()))
    conv = torch.nn.Conv3d(96, 96, 3, padding=1).cuda()
    conv(torch.randn(1, 96, 4, 64, 64, device="cuda")).sum().item()
    rows.append(("cuDNN conv3d (VAE)", rss_mb()))
    q = torch.randn(1, 40, 4096, 128, device="cuda", dtype=torch.bfloat16)
    torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().item()
    rows.append(("SDPA attention", rss_mb()))
    for name in ("transformers", "accelerate", "diffusers"):
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        rows.append((f"import {name}", rss_mb()))
    base = rows[0][1]
    print(f"{'step':34s} {'RSS MiB':>9s} {'over baseline':>14s}")
    for step, value in rows:
        print(f"{step:34s} {value:9.0f} {value - base:14.0f}")

    nominal = 13824 * 5120 * 2 / MIB
    before_avail = psutil.virtual_memory().available / MIB
    before_rss = rss_mb()
    pinned = [torch.empty(13824, 5120, dtype=torch.bfloat16).pin_memory() for _ in range(8)]
    taken = before_avail - psutil.virtual_memory().available / MIB
    print(
        f"pinning 8 FFN weights ({8 * nominal:.0f} MiB nominal): host available fell {taken:.0f} MiB, "
        f"RSS rose {rss_mb() - before_rss:.0f} MiB"
    )
    stats = getattr(torch.cuda, "host_memory_stats", None)
    if stats is not None:
        s = stats()
        print("host allocator:", {k: v for k, v in s.items() if "bytes" in k and "current" in k})
    del pinned
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
