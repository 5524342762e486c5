"""GPU check of the traced activation terms: real peaks of randomly initialised full-size DiTs against the estimate.

Run from the repository root on a machine with a CUDA GPU (about 60 GiB free for the 14B at 720p), with torch
(CUDA build) and diffusers importable::

    python bench/gpu_trace_check.py [--layers 40] [--sizes 832x480,1280x720] [--tolerance 0.05]

For each runner of t2v-A14B (Wan's ``generate.py`` DiT as restated in ``vramgate.trace.wan_reference``, and
diffusers' ``WanTransformer3DModel``) it builds one expert in bf16 on the GPU with random weights, runs one
denoising forward per size and compares ``torch.cuda.max_memory_allocated`` above the weights with the traced term
the estimator ships (``vramgate/policy/traced.json``); the baseline is the calibrated formula that priced every
runner before the traces. Then it decodes one latent video per size with diffusers' ``AutoencoderKLWan`` (fp32)
against its traced term (baseline: the working memory calibrated for Wan's own VAE code).
Prints PASS / FAIL per check; exits 1 when a check fails, 2 without CUDA.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GIB = float(1 << 30)


def peak_of(run: Callable[[], Any]) -> float:
    import torch

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.no_grad():
        out = run()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return float(peak)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=40, help="DiT blocks to build (40: the full 14B)")
    parser.add_argument("--sizes", default="832x480,1280x720", help="comma-separated WxH at 81 frames")
    parser.add_argument("--tolerance", type=float, default=0.05, help="allowed relative error of the traced term")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    import msgspec
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from vramgate.messages import ResolvedOptions
    from vramgate.policy._derived import derive
    from vramgate.policy._physics import dit_activations
    from vramgate.policy.estimate import Estimator
    from vramgate.policy.models import DEFAULT_MODEL_CATALOG, parse_size
    from vramgate.trace.dit import cast_as_loaded, tokens_of, wan_inputs
    from vramgate.trace.profiles import wan_diffusers_config, wan_diffusers_inputs, wan_shape
    from vramgate.trace.wan_reference import WanReferenceDiT

    dev = torch.device("cuda")
    profile = DEFAULT_MODEL_CATALOG.get("t2v-A14B")
    estimator = Estimator()
    derived = derive(profile)
    untraced = derive(msgspec.structs.replace(profile, activations={}))
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    grids = [(21, h // 8, w // 8) for w, h in sizes]
    print(f"GPU: {torch.cuda.get_device_name()}, layers {args.layers}, sizes {args.sizes}", flush=True)
    failures = 0

    def check(runner: str, model: Any, build: Callable[[tuple[int, int, int], torch.device], dict[str, Any]]) -> None:
        nonlocal failures
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        print(f"{runner}: {weights / GIB:.1f} GiB of bf16 weights", flush=True)
        for (w, h), grid in zip(sizes, grids, strict=True):
            inputs = build(grid, dev)
            tokens = tokens_of(grid, profile.dit.patch)
            start = time.perf_counter()
            measured = peak_of(functools.partial(model, **inputs))
            seconds = time.perf_counter() - start
            options = ResolvedOptions(runner=runner)  # type: ignore[arg-type]
            traced, where = dit_activations(options, derived, estimator.constants, tokens, tokens, False)
            baseline, _ = dit_activations(options, untraced, estimator.constants, tokens, tokens, False)
            err = traced / measured - 1
            ok = abs(err) <= args.tolerance
            failures += not ok
            verdict = "PASS" if ok else "FAIL"
            print(
                f"[{verdict}] {runner} {w}x{h}x81 ({tokens} tokens): measured {measured / GIB:.2f} GiB,"
                f" traced {traced / GIB:.2f} GiB ({err:+.1%}, peak in {where}),"
                f" baseline {baseline / GIB:.2f} GiB ({baseline / measured - 1:+.1%}); {seconds:.1f} s",
                flush=True,
            )
            inputs.clear()

    torch.set_default_dtype(torch.bfloat16)
    shape = wan_shape(profile, layers=args.layers)
    with dev:
        reference = WanReferenceDiT(shape).eval()
    torch.set_default_dtype(torch.float32)
    check("generate.py", reference, wan_inputs(shape))
    del reference
    torch.cuda.empty_cache()

    config = wan_diffusers_config(profile, layers=args.layers)
    torch.set_default_dtype(torch.bfloat16)
    with dev:
        transformer = WanTransformer3DModel.from_config(config)
    torch.set_default_dtype(torch.float32)
    transformer = cast_as_loaded(transformer, torch.bfloat16).eval()
    check("diffusers", transformer, wan_diffusers_inputs(config, False, profile.text_encoder.text_len))
    del transformer
    torch.cuda.empty_cache()

    vae = AutoencoderKLWan().to(dev).eval()
    vae_term = profile.vae_decode["diffusers"]
    for (w, h), grid in zip(sizes, grids, strict=True):
        latents = torch.zeros(1, 16, *grid, device=dev)
        measured = peak_of(functools.partial(vae.decode, latents))
        pixels = w * h
        traced = vae_term.bytes_per_pixel * pixels + vae_term.bytes_per_pixel_frame * pixels * 81
        baseline = estimator.constants.vae_bytes_per_pixel("wan2.1") * pixels + 24.0 * pixels * 81
        err = traced / measured - 1
        ok = abs(err) <= args.tolerance
        failures += not ok
        print(
            f"[{'PASS' if ok else 'FAIL'}] diffusers AutoencoderKLWan decode {w}x{h}x81: measured {measured / GIB:.2f}"
            f" GiB, traced {traced / GIB:.2f} GiB ({err:+.1%}), baseline {baseline / GIB:.2f} GiB"
            f" ({baseline / measured - 1:+.1%})",
            flush=True,
        )
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
