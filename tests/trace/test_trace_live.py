"""The live-bytes tracker against torch's own allocator, and the memory-efficient attention it forces."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch.profiler import ProfilerActivity, profile  # noqa: E402

from vramgate.trace._live import EfficientAttention, LiveBytes  # noqa: E402


def _allocator_peak(prof: object) -> tuple[int, int]:
    """(peak, final) of the CPU allocator's live bytes, replayed from the profiler's memory events."""
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]  # type: ignore[attr-defined]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        if event.device_type() == torch.autograd.DeviceType.CPU:
            live += event.nbytes()
            peak = max(peak, live)
    return peak, live


def _block(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    h = layer(x)
    y = x + h * 2.0
    z = torch.cat([y, h.view_as(y)])
    return z.double().sum(dim=0)


def test_the_tracker_matches_the_cpu_allocator_byte_for_byte() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64)).eval()
    x = torch.randn(333, 64)
    with torch.no_grad():
        _block(layer, x)  # warm up: lazily created kernels' buffers are not part of the run
    live = LiveBytes()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, torch.no_grad(), live:
        out = _block(layer, x)
        del out
    peak, final = _allocator_peak(prof)
    assert peak > 333 * 256 * 4  # the FFN's hidden activations were live at some point
    assert live.peak == peak
    assert live.live == final == 0


def test_views_in_place_ops_and_weights_allocate_nothing() -> None:
    weight = torch.randn(128, 128)
    live = LiveBytes()
    with live:
        a = torch.empty(1000, dtype=torch.float32)  # 4000 bytes
        b = a.view(10, 100).t()
        b.add_(1.0)
        w = weight.t()  # a view of a tensor made outside the trace: not counted
        assert w.shape == (128, 128)
        c = a[:500].clone()  # 2000 bytes
        assert live.live == 6000
        del a
        assert live.live == 6000  # b still holds a's storage
        del b
        assert live.live == 2000
        del c
    assert live.live == 0
    assert live.peak == 6000


def test_meta_tensors_are_counted_like_real_ones() -> None:
    counts = []
    for device in ("cpu", "meta"):
        live = LiveBytes(record=True)
        with torch.device(device), live:
            x = torch.zeros(64, 32, dtype=torch.bfloat16)
            y = (x.float() * 3).to(torch.float64)
            z = torch.cat([y, y])
            del x, y, z
        counts.append((live.peak, live.timeline))
    assert counts[0] == counts[1]
    n = 64 * 32
    assert counts[0][0] == n * 2 + n * 8 + 2 * n * 8  # x, y and z live together at the cat


def test_attention_never_materialises_the_score_matrix() -> None:
    q = torch.randn(1, 2, 2048, 16, device="meta", dtype=torch.bfloat16)
    live = LiveBytes()
    with EfficientAttention(), live:
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert out.shape == q.shape
    scores = 2 * 2048 * 2048 * 2
    assert live.peak < scores / 10  # output and the per-row log-sum-exp only
    assert live.peak == q.numel() * 2 + 2 * 2048 * 4


def test_efficient_attention_computes_the_same_values_on_real_tensors() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 64, 16) for _ in range(3))
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    with EfficientAttention():
        got = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(got, expected)


def test_the_peak_is_labelled_with_the_module_that_reached_it() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Sequential(torch.nn.Linear(8, 4096)))
    live = LiveBytes()
    with torch.no_grad(), live, live.watching(model):
        model(torch.zeros(16, 8))
    assert live.peak_label == "1.*"
