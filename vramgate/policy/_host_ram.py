"""Host RAM of one run, phase by phase: the peak is the largest phase, not the sum of everything ever loaded.

Per process, the host holds what is not on the GPU (``module.to()`` moves weights) in each phase:

* text encode: the DiT experts wait on the host (on one GPU they start there; an FSDP run keeps on the host only
  what ``offload_model`` or block streaming put there); the text encoder is on the host with ``t5_cpu`` or
  sequential offloading, else on the GPU;
* denoise, one phase per expert: the expert in use is on the GPU (a pinned host copy when DiT blocks stream), the
  idle experts wait on the host; the text encoder stays on the host where it went (``offload_model`` returns it);
* VAE decode: ``offload_model`` returns the DiT to the host; block streaming keeps its pinned copies.

Two techniques lower the peak: ``free_text_encoder`` drops the text encoder once the prompt is encoded (nothing of
it is held after the text-encode phase), and ``one_expert_in_ram`` keeps only the expert in use (or next in use) on
the host: the other one is read from the checkpoint at the expert boundary, the first freed before the next is
read. The reads from the checkpoint cost :func:`load_seconds`.
"""

from __future__ import annotations

from vramgate.messages.plans import ResolvedOptions
from vramgate.policy._derived import Derived

#: Sequential read of the disk the checkpoint is on, bytes per second: a PCIe 3.0 x4 NVMe SSD's rated figure
#: (Samsung 970 EVO Plus, 3,500 MB/s, the maker's data sheet), a common drive in a home box; newer PCIe 4.0
#: drives read about twice as fast, SATA SSDs six times slower.
DISK_READ_BYTES_PER_S = 3.5e9


def phases(o: ResolvedOptions, d: Derived, stored_bpp: float, blocks_streamed: bool) -> dict[str, float]:
    """Weight bytes on the host of each process in each phase (``denoise_1`` ... one per expert)."""
    world = o.gpus
    experts = d.experts
    # one expert's bytes in each process: FSDP shards it
    unit = d.expert_params * stored_bpp / (world if o.dit_fsdp else 1)
    one = o.one_expert_in_ram and experts > 1
    # DiT experts on the host while the text is encoded and while the video is decoded
    if o.dit_fsdp:
        waiting = float(experts) if (o.offload_model or blocks_streamed) else 0.0
        after = waiting
    else:
        waiting = float(experts)
        after = float(experts) if (o.offload_model or blocks_streamed) else experts - 1.0
    # while denoising: the active expert (a pinned copy when streaming) and the idle ones
    if o.dit_fsdp and not (o.offload_model or blocks_streamed):
        active, idle = 0.0, 0.0
    else:
        active, idle = (1.0 if blocks_streamed else 0.0), experts - 1.0
    if one:
        waiting = min(waiting, 1.0)
        idle = 0.0
        after = min(after, active if not o.offload_model else 1.0)
    te_full = d.text_encoder_bytes + d.image_encoder_bytes
    te_share = te_full / world if o.t5_fsdp else te_full
    te_encode = te_share if (o.t5_cpu or o.sequential_offload) else 0.0
    te_after = (
        0.0 if o.free_text_encoder else (te_share if (o.t5_cpu or o.offload_model or o.sequential_offload) else 0.0)
    )
    out = {"text_encode": waiting * unit + te_encode}
    for i in range(experts):
        out[f"denoise_{i + 1}"] = (active + idle) * unit + te_after
    out["vae_decode"] = after * unit + te_after
    return out


def load_seconds(o: ResolvedOptions, d: Derived) -> float:
    """Seconds the two techniques add, reading from the checkpoint at :data:`DISK_READ_BYTES_PER_S`.

    ``one_expert_in_ram``: each expert after the first, at its boundary (as stored on disk, whatever the run casts
    it to). ``free_text_encoder``: the text encoder, which the next run in the same process reads back.
    """
    read = 0.0
    if o.one_expert_in_ram and d.experts > 1:
        read += (d.experts - 1) * d.expert_params * d.checkpoint_bytes / (o.gpus if o.dit_fsdp else 1)
    if o.free_text_encoder:
        te_full = d.text_encoder_bytes + d.image_encoder_bytes
        read += te_full / o.gpus if o.t5_fsdp else te_full
    return read / DISK_READ_BYTES_PER_S


def cold_load_seconds(d: Derived) -> float:
    """Seconds a cold start spends reading the weights from the checkpoint at :data:`DISK_READ_BYTES_PER_S`:
    every expert as stored, the text (and image) encoder and the VAE. A resident model saves it."""
    stored = d.experts * d.expert_params * d.checkpoint_bytes
    return (stored + d.text_encoder_bytes + d.image_encoder_bytes + d.vae_bytes) / DISK_READ_BYTES_PER_S
