"""The shipped activation terms are what the tracer derives, and the estimator reads them without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vramgate.policy.models import BUILTIN_MODELS, DEFAULT_MODEL_CATALOG

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", [p.name for p in BUILTIN_MODELS])
def test_shipped_terms_are_rederived_by_the_tracer(name: str) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from vramgate.trace.profiles import traced_activations

    profile = DEFAULT_MODEL_CATALOG.get(name)
    derived = traced_activations(profile, layers=2)  # two blocks deep: the terms do not depend on depth
    assert set(derived) == set(profile.activations) == {"generate.py", "diffusers"}
    for runner, term in derived.items():
        assert term == profile.activations[runner], runner


def test_diffusers_holds_about_a_quarter_of_generate_py_for_the_14b() -> None:
    acts = DEFAULT_MODEL_CATALOG.get("t2v-A14B").activations
    own, dif = acts["generate.py"], acts["diffusers"]
    for tokens, gib_own, gib_dif in ((32_760, 13.81, 3.48), (75_600, 31.87, 8.02), (171_360, 72.22, 18.16)):
        assert (own.bytes_per_token + own.bytes_per_full_token) * tokens / 2**30 == pytest.approx(gib_own, abs=0.02)
        assert (dif.bytes_per_token * tokens + dif.fixed_bytes) / 2**30 == pytest.approx(gib_dif, abs=0.02)
    assert own.peak_phase == "blocks.*.self_attn.rope"


def test_the_estimator_loads_the_traced_profiles_without_torch() -> None:
    code = (
        "import sys\n"
        "from vramgate.messages import RunParams, ResolvedOptions\n"
        "from vramgate.policy.estimate import Estimator\n"
        "p = RunParams(model='t2v-A14B', task='t2v', width=1280, height=720, frames=81, steps=40,"
        " options=ResolvedOptions(runner='diffusers'))\n"
        "note = next(c.note for c in Estimator().estimate(p, 'H100').components if c.name == 'activations')\n"
        "assert 'attn2' in note, note\n"
        "assert 'torch' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
