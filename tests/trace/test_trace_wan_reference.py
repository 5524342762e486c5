"""Wan's own DiT, restated and traced: real CPU runs against meta traces, linearity, and where the peak is."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from vramgate.trace.dit import linear_term, measure, tokens_of, trace_wan_reference, wan_inputs  # noqa: E402
from vramgate.trace.wan_reference import WanReferenceDiT, WanShape  # noqa: E402

SMALL = WanShape(dim=128, ffn_dim=256, heads=4, layers=2, text_dim=64, freq_dim=32, text_len=32)
SMALL_21 = WanShape(**{**SMALL.__dict__, "per_token_time": False})
GRIDS = ((5, 16, 16), (9, 32, 32))
#: The full-width 14B DiT, two blocks deep: the terms do not depend on depth.
A14B_2 = WanShape(dim=5120, ffn_dim=13824, heads=40, layers=2)


def _timeline(shape: WanShape, device: str, grid: tuple[int, int, int], sp: int = 1) -> tuple[int, list[int]]:
    from vramgate.trace._live import EfficientAttention, LiveBytes

    torch.manual_seed(0)
    dev = torch.device(device)
    with dev:
        model = WanReferenceDiT(shape, sp=sp).to(torch.bfloat16).eval()
    inputs = wan_inputs(shape)(grid, dev)
    live = LiveBytes(record=True)
    with torch.no_grad(), EfficientAttention(), live:
        out = model(**inputs)
    assert out.shape == (shape.out_dim, *grid)
    assert live.timeline is not None
    return live.peak, live.timeline


@pytest.mark.parametrize("shape", [SMALL, SMALL_21], ids=["wan2.2", "wan2.1"])
@pytest.mark.parametrize("sp", [1, 2])
def test_a_meta_trace_is_a_real_cpu_run_byte_for_byte(shape: WanShape, sp: int) -> None:
    real = _timeline(shape, "cpu", GRIDS[0], sp)
    fake = _timeline(shape, "meta", GRIDS[0], sp)
    assert real == fake
    assert real[0] > 0


def test_peak_live_bytes_are_linear_in_the_tokens() -> None:
    term, points = trace_wan_reference(A14B_2, ((21, 30, 52), (21, 60, 104)), sp=1)
    with torch.device("meta"):
        model = WanReferenceDiT(A14B_2).to(torch.bfloat16).eval()
    third = (21, 90, 160)
    point = measure(model, wan_inputs(A14B_2)(third, torch.device("meta")), tokens_of(third, (1, 2, 2)))
    predicted = term.bytes_per_token * point.tokens + term.fixed_bytes
    assert point.tokens == 75_600
    assert point.peak_bytes == pytest.approx(predicted, rel=1e-6)
    assert point.label == points[0].label == "blocks.*.self_attn.rope"


def test_wan22_holds_the_time_modulation_of_every_token_and_wan21_does_not() -> None:
    grids = ((21, 60, 104), (21, 90, 160))
    wan22, _ = trace_wan_reference(A14B_2, grids)
    wan21, _ = trace_wan_reference(WanShape(**{**A14B_2.__dict__, "per_token_time": False}), grids)
    dim = A14B_2.dim
    # e0 [B, L, 6, dim] and e [B, L, dim] in fp32, for the whole sequence on every rank
    assert wan22.bytes_per_full_token >= (24 + 4) * dim
    assert wan21.bytes_per_full_token < dim
    # per GPU: the chunked modulation (fp32), the fp32 residual, float64 RoPE copies of q and k
    assert wan22.bytes_per_token - wan21.bytes_per_token == 24 * dim
    assert wan22.peak_phase == wan21.peak_phase == "blocks.*.self_attn.rope"
    # 14B at 1280x720x81: Wan2.2's code holds 31.9 GiB; Wan2.1's 13.1 GiB
    assert (wan22.bytes_per_token + wan22.bytes_per_full_token) * 75_600 / 2**30 == pytest.approx(31.87, abs=0.05)
    assert (wan21.bytes_per_token + wan21.bytes_per_full_token) * 75_600 / 2**30 == pytest.approx(13.05, abs=0.05)


def test_the_two_points_must_peak_in_the_same_place() -> None:
    from vramgate.trace.dit import Point

    with pytest.raises(ValueError, match="peak moved"):
        linear_term(Point(100, 1000, "a"), Point(200, 3000, "b"), source="")
    with pytest.raises(ValueError, match="different token counts"):
        linear_term(Point(100, 1000, "a"), Point(100, 3000, "a"), source="")
