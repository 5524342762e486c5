"""The VAE decode, traced: a meta trace is a real CPU run, and the terms separate frame work from the video."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from vramgate.policy.models import DEFAULT_MODEL_CATALOG  # noqa: E402
from vramgate.trace.profiles import traced_vae_decode  # noqa: E402
from vramgate.trace.vae import trace_vae_decode  # noqa: E402

TINY = {"base_dim": 8, "z_dim": 4, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1}


def test_a_meta_vae_trace_is_a_real_cpu_run() -> None:
    grids = ((3, 4, 4), (3, 8, 8), (5, 8, 8))
    runs = [
        trace_vae_decode(diffusers.AutoencoderKLWan, TINY, grids, (4, 8, 8), channels=4, device=d)
        for d in ("cpu", "meta")
    ]
    assert runs[0] == runs[1]
    term, points = runs[0]
    # the decoded video is held once, in fp32 RGB: 12 bytes per pixel of every frame (and a little of the last)
    assert term.bytes_per_pixel_frame == pytest.approx(12.0, abs=0.5)
    assert term.bytes_per_pixel > 10 * term.bytes_per_pixel_frame
    assert points[1].peak_bytes > points[0].peak_bytes


@pytest.mark.parametrize("name", ["t2v-A14B", "wan2.1-t2v-1.3B"])
def test_shipped_vae_terms_are_rederived_at_small_sizes(name: str) -> None:
    profile = DEFAULT_MODEL_CATALOG.get(name)
    small = traced_vae_decode(profile, grids=((5, 16, 16), (5, 32, 32), (9, 32, 32)))["diffusers"]
    shipped = profile.vae_decode["diffusers"]
    assert small.peak_phase == shipped.peak_phase
    assert small.bytes_per_pixel == pytest.approx(shipped.bytes_per_pixel, rel=0.005)
    assert small.bytes_per_pixel_frame == pytest.approx(shipped.bytes_per_pixel_frame, rel=0.01)


def test_only_the_wan21_vae_has_a_diffusers_term() -> None:
    assert traced_vae_decode(DEFAULT_MODEL_CATALOG.get("ti2v-5B")) == {}
    assert DEFAULT_MODEL_CATALOG.get("ti2v-5B").vae_decode == {}
