"""What the simulator's vramgate policy tells the admission core about resident weights.

The simulated devices keep the weights of models they loaded (:mod:`vramgate.simulate._weights`); what no run
uses is evicted before anything of this system's would run out of memory. An admission core that does not hold
resident models in its ledgers would count those idle weights as others' memory, memory that never comes free,
and plan around it or wait for it. So the policy shows the core each sample as it will be once making room has
evicted them: their MiB are free, not this process's. Every plan still reserves its weights (a run that finds
them resident pins the rest), so the core never counts on memory that is not there.

This is the one place to change once the admission core holds resident models itself.
"""

from __future__ import annotations

import msgspec

from vramgate.messages.resources import DeviceSample


def without_idle_weights(sample: DeviceSample, idle_mb: int) -> DeviceSample:
    """``sample`` with ``idle_mb`` MiB of idle resident weights counted as free."""
    if idle_mb <= 0 or sample.lost:
        return sample
    torch = sample.torch
    if torch is not None:
        torch = msgspec.structs.replace(
            torch,
            allocated_mb=max(0, torch.allocated_mb - idle_mb),
            reserved_mb=max(0, torch.reserved_mb - idle_mb),
            active_mb=max(0, torch.active_mb - idle_mb),
        )
    return msgspec.structs.replace(
        sample, free_mb=sample.free_mb + idle_mb, used_mb=max(0, sample.used_mb - idle_mb), torch=torch
    )
