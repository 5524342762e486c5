"""The trace-driven simulator: vramgate's cores and the baseline policies against simulated GPUs on a virtual clock."""

from vramgate.simulate.faults import ALL_FAULTS, FaultSpec, parse_faults
from vramgate.simulate.metrics import PolicyResult
from vramgate.simulate.run import POLICIES, compare, simulate
from vramgate.simulate.trace import Trace, decode_trace, encode_trace, load_trace, parse_devices

__all__ = [
    "ALL_FAULTS",
    "POLICIES",
    "FaultSpec",
    "PolicyResult",
    "Trace",
    "compare",
    "decode_trace",
    "encode_trace",
    "load_trace",
    "parse_devices",
    "parse_faults",
    "simulate",
]
