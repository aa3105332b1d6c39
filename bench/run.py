"""One command for the whole benchmark: `python -m bench.run` (on a CUDA GPU).

Builds random-weight models with the real SD-Turbo / TAESD / CLIP architectures (configs in
bench/configs), then in one run times: the arithmetic floor, diffusers' img2img pipeline (PIL
and tensor I/O), and the project's stream with each engine variant over the scenarios. Writes
JSON (--json) and the Markdown report (--out, e.g. docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .timing import VariantTimeout, deadline


LORA_CASES = "1:16,2:16,4:16,1:64,2:64,4:64"  # --loras alone: N = 1, 2, 4 LoRAs at rank 16 and 64


@dataclass(frozen=True)
class Variant:
    label: str
    engine: str  # eager | compiled
    options: dict = field(default_factory=dict)  # EngineConfig overrides
    qkv_fusion: bool = False
    scenarios: tuple[str, ...] = ("img2img-1step-512",)


SPEED = ("speed-1step-512",)  # one frame at a time, stages, kernels: the variants' comparison
AUTOTUNE = {"compile_mode": "max-autotune-no-cudagraphs"}  # bounded search (engines/compiled.py)

VARIANTS = {
    "eager": Variant("eager+graph", "eager"),
    "compiled": Variant("compiled+graph", "compiled"),
    "compiled-tuned": Variant("compiled+graph, inductor tuning", "compiled", {"inductor_tuning": True}),
    "compiled-qkv": Variant("compiled+graph, fused QKV", "compiled", qkv_fusion=True),
    "compiled-bf16": Variant("compiled+graph bf16", "compiled", {"dtype": "bf16"}),
    "step": Variant("eager modules, whole step compiled+graph", "eager", {"compile_scope": "step"}),
    # issue 11 directions (docs/benchmarks.md "Issue 11 directions: how to run"); the baseline runs
    # the same scenario with `--all-scenarios compiled --scenarios speed-1step-512`
    "compiled-autotune": Variant("compiled max-autotune (bounded)+graph", "compiled", AUTOTUNE, scenarios=SPEED),
    "compiled-autotune-cd": Variant("compiled max-autotune (bounded) + coordinate descent+graph", "compiled",
                                    {**AUTOTUNE, "coordinate_descent": True}, scenarios=SPEED),
    "compiled-autotune-full": Variant("compiled max-autotune (Inductor's full mode)+graph", "compiled",
                                      {**AUTOTUNE, "autotune_search": "full"}, scenarios=SPEED),
    "compiled-cl": Variant("compiled channels_last io+graph", "compiled", {"channels_last_io": True}, scenarios=SPEED),
    "compiled-gnsilu": Variant("compiled fused GroupNorm+SiLU+graph", "compiled", {"fuse_norm_silu": True},
                               scenarios=SPEED),
    "compiled-fp8": Variant("compiled fp8 linears+graph", "compiled", {"fp8_linear": True}, scenarios=SPEED),
    "compiled-aot": Variant("compiled ahead of time (AOTInductor packages)+graph", "compiled", {"aot": True},
                            scenarios=SPEED),
    "compiled-heuristic": Variant("compiled, cuDNN heuristics (no benchmark search)+graph", "compiled",
                                  {"cudnn_benchmark": False}, scenarios=SPEED),
    "compiled-combo": Variant("compiled max-autotune + channels_last + GN+SiLU+graph", "compiled",
                              {**AUTOTUNE, "channels_last_io": True, "fuse_norm_silu": True}, scenarios=SPEED),
}
BASELINE = "compiled"  # the variant every other one is compared with (numerical difference, speed-up)


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def environment() -> dict:
    commit = os.environ.get("DREAMCAM_COMMIT") or subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "engines", "bench", "core"], capture_output=True,
                           text=True).stdout.strip()
    env = {"commit": commit or "unknown", "dirty": bool(dirty), "python": platform.python_version(),
           "torch": torch.__version__, "command": "python -m bench.run " + " ".join(sys.argv[1:])}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, gpu_mem_gb=round(p.total_memory / 2**30, 1), sm=f"{p.major}.{p.minor}",
                   cuda=torch.version.cuda)
    try:
        import diffusers

        env["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    return env


def floor(models, device: str, dtype, size: int = 512) -> dict:
    from dreamcam.core.modules import example_conditions, unet_conditions

    from .floor import count_flops, matmul_tflops
    from .models import components

    unet, vae = models.unet, models.vae
    x = torch.randn(1, 4, size // 8, size // 8, device=device, dtype=dtype)
    t = torch.tensor([999], device=device)
    text = torch.randn(1, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
    cond = example_conditions(unet_conditions(components(models, device, dtype)), 1, dtype=dtype, device=device)
    added = {"added_cond_kwargs": cond} if cond else {}  # SDXL: text_embeds, time_ids
    img = torch.rand(1, 3, size, size, device=device, dtype=dtype) * 2 - 1
    flops = {
        "unet_b1": count_flops(lambda: unet(x, t, encoder_hidden_states=text, **added)),
        "taesd_encode": count_flops(lambda: vae.encode(img)),
        "taesd_decode": count_flops(lambda: vae.decode(x)),
    }
    rate = matmul_tflops(dtype) if device == "cuda" else float("nan")
    total = sum(flops.values())
    ms = total / (rate * 1e12) * 1e3
    return {"size": size, "gflop": {k: round(v / 1e9, 1) for k, v in flops.items()}, "total_gflop": round(total / 1e9, 1),
            "matmul_tflops": round(rate, 1), "floor_ms": round(ms, 3), "floor_fps": round(1e3 / ms, 1)}


def run_variant(v: Variant, models, device: str, dtype, frames: int, budget: Budget, cache_dir: Path,
                *, timeout_s: float | None = None, outputs: dict[str, np.ndarray] | None = None) -> dict:
    """`timeout_s` bounds the engine build (compile + probe) and each scenario's first capture;
    a variant that runs past it, or that fell back to another engine, is reported as an error."""
    from dreamcam.engines import EngineConfig, Geometry, create_engine

    from .models import components as make_components
    from .scenarios import ALL_SCENARIOS, run_scenario

    comps = make_components(models, device, dtype)
    first = ALL_SCENARIOS[v.scenarios[0]]  # the engine is built (probed, compiled) at the first scenario's size
    config = EngineConfig(geometry=Geometry(first.height, first.width), cache_dir=cache_dir, **v.options)
    out: dict[str, Any] = {"variant": v.label, "engine": v.engine, "options": v.options}
    t0 = time.perf_counter()
    limit = None if timeout_s is None else min(timeout_s, max(budget.left() - 30, 1))
    try:
        with deadline(limit):
            engine = create_engine(v.engine, comps, config, log=log)
    except VariantTimeout as exc:
        out["error"] = f"engine build {exc} (compile timeout)"
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # what the interrupted build held
        return out
    if engine.name != v.engine:
        out["error"] = f"fell back to {engine.name}: {engine.reason}"
        return out
    if v.qkv_fusion:
        from dreamcam.engines.eager import fuse_qkv

        out["qkv_fused"] = fuse_qkv(comps.unet)
    out["engine_s"] = round(time.perf_counter() - t0, 1)
    out["chosen"] = engine.name
    out["reason"] = engine.reason
    out["scenarios"] = {}
    for name in v.scenarios:
        if budget.left() < 45:
            out["scenarios"][name] = {"skipped": "time budget"}
            log(f"  {name}: skipped (time budget)")
            continue
        log(f"  {v.label} / {name}")
        try:
            r = run_scenario(ALL_SCENARIOS[name], comps, engine.modules, frames=frames, device=device, config=config,
                             outputs=outputs, first_frame_timeout_s=limit)
        except VariantTimeout as exc:
            r = {"error": f"first frame {exc} (compile timeout)"}
        except Exception as exc:  # noqa: BLE001 - record and go on
            r = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            traceback.print_exc()
        out["scenarios"][name] = r
        log(f"    {json.dumps(r)}")
    return out


def add_differences(results: dict, outputs: dict[str, dict[str, np.ndarray]]) -> None:
    """Each variant's output frames against the baseline variant's (same inputs, same weights):
    mean and max absolute difference in uint8 levels, per scenario ("diff_vs_baseline")."""
    base_key = BASELINE if BASELINE in outputs else next(iter(outputs), None)
    base = outputs.get(base_key, {}) if base_key else {}
    for v in results["variants"]:
        for name, r in v.get("scenarios", {}).items():
            mine = outputs.get(v.get("key", ""), {}).get(name)
            if mine is None or name not in base or v.get("key") == base_key or mine.shape != base[name].shape:
                continue
            diff = np.abs(mine.astype(np.int16) - base[name].astype(np.int16))
            r["diff_vs_baseline"] = {"baseline": VARIANTS[base_key].label, "frames": int(diff.shape[0]),
                                     "mean_abs": round(float(diff.mean()), 3), "max_abs": int(diff.max()),
                                     "per_frame_mean_abs": [round(float(d.mean()), 3) for d in diff]}


def second_start(cache_dir: Path, budget: Budget, *, small: bool = False, family: str = "sd21",
                 variant: str = BASELINE) -> dict:
    """The compiled engine's start in a fresh process, reusing the cache this run just filled
    (`variant`'s engine options: e.g. that max-autotune's choices come from the cache)."""
    if budget.left() < 90:
        return {"skipped": "time budget"}
    cmd = [sys.executable, "-m", "bench.start_time", "--engine", "compiled", "--cache-dir", str(cache_dir),
           "--family", family, "--one", "--options", json.dumps(VARIANTS[variant].options)]
    try:
        done = subprocess.run(cmd + (["--small"] if small else []), capture_output=True, text=True,
                              timeout=budget.left(), cwd=Path(__file__).resolve().parent.parent)
    except subprocess.TimeoutExpired:
        return {"error": "time budget ran out"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"error": (done.stderr or done.stdout).strip()[-300:]}
    return {**json.loads(lines[-1]), "variant": variant}


def app_e2e(args: argparse.Namespace, budget: Budget) -> dict:
    """`dreamcam run` end to end (child processes) on a random-weight SD-Turbo folder saved once."""
    from .app_e2e import cases_for, run_cases, save_model

    cases = cases_for(args.family)
    if budget.left() < 120:
        return {name: {"skipped": "time budget"} for name in cases}
    folder = save_model(args.cache_dir / f"app-e2e-model-{args.family}", small=args.small, family=args.family)
    per_case = max(args.app_timeout_s, (budget.left() - 30) / len(cases))
    return run_cases(folder, frames=args.app_frames, cache_dir=args.cache_dir, timeout_s=per_case, small=args.small,
                     family=args.family)


def _engine_modules(name: str, models, device: str, dtype, cache_dir: Path, size: int):
    """(components, modules, engine config) of one engine on the bench models."""
    from dreamcam.engines import EngineConfig, Geometry, create_engine

    from .models import components as make_components

    comps = make_components(models, device, dtype)
    config = EngineConfig(geometry=Geometry(size, size), cache_dir=cache_dir)
    engine = create_engine(name if device == "cuda" else "eager", comps, config, log=log)
    return comps, engine.modules, config


def flicker_run(args: argparse.Namespace, models, device: str, dtype, budget: Budget) -> dict:
    """--flicker: bench/flicker.py with --cond-engine (eager and 64x64 with --small)."""
    from .flicker import CameraNoise, run_flicker

    if budget.left() < 60:
        return {"skipped": "time budget"}
    size = 64 if args.small else 512
    comps, modules, config = _engine_modules(args.cond_engine, models, device, dtype, args.cache_dir, size)
    warmup, frames = (3, 4) if args.small else (args.flicker_warmup, args.flicker_frames)
    result = run_flicker(comps, modules, size=size, warmup=warmup, frames=frames, config=config,
                         noise=CameraNoise(sigma=3.0, shift_px=args.flicker_shift))
    return {**result, "engine": args.cond_engine if device == "cuda" else "eager"}


def lora_run(args: argparse.Namespace, models, device: str, dtype, budget: Budget) -> dict:
    """--loras N:RANK,...: bench/loras.py, live vs fused, with --cond-engine (eager and 64x64 with --small)."""
    from .loras import parse_cases, run_loras

    size = 64 if args.small else 512
    comps, modules, config = _engine_modules(args.cond_engine, models, device, dtype, args.cache_dir, size)
    result = run_loras(comps, modules, parse_cases(args.loras), folder=args.cache_dir / "bench-loras",
                       frames=8 if args.small else args.frames, config=config, size=size, budget_left=budget.left,
                       log=log)
    return {**result, "engine": args.cond_engine if device == "cuda" else "eager"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Dreamcam GPU benchmark")
    ap.add_argument("--variants", default="eager,compiled", help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--all-scenarios", default="compiled", help="variant that runs every scenario")
    ap.add_argument("--scenarios", default="", help="comma list: what --all-scenarios runs (default: all)")
    ap.add_argument("--conditioning", action="store_true",
                    help="issue 10: --all-scenarios runs the plain 1-step 512 stream and the ControlNet scenarios "
                         "(cn-canny, cn-depth, cn-two, cn-scale0) instead of the default set (--scenarios still wins)")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--reference-frames", type=int, default=20)
    ap.add_argument("--budget-s", type=float, default=520)
    ap.add_argument("--json", type=Path, default=Path("bench-results.json"))
    ap.add_argument("--out", type=Path, help="write the Markdown report here (e.g. docs/benchmarks.md)")
    ap.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("DREAMCAM_ENGINE_CACHE", "/tmp/dreamcam-cache")))
    ap.add_argument("--small", action="store_true", help="tiny widths on the CPU: checks the code, not the speed")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--no-second-start", action="store_true",
                    help="skip timing the compiled engine's start in a fresh process with the warm cache")
    ap.add_argument("--no-app-e2e", action="store_true", help="skip the app end to end (`dreamcam run`, bench/app_e2e.py)")
    ap.add_argument("--app-frames", type=int, default=2000, help="frames of each app end-to-end run")
    ap.add_argument("--app-timeout-s", type=float, default=300,
                    help="least time each app run gets (a first compile of SDXL takes minutes)")
    ap.add_argument("--sdxl", action="store_true",
                    help="SDXL-Turbo (SDXL UNet, TAESD-XL, random weights) instead of SD-Turbo: its scenarios "
                         "(1 step, 512 and 1024), its app end to end and its second start")
    ap.add_argument("--second-start-variant", default=BASELINE, choices=sorted(VARIANTS),
                    help="whose engine options the second start uses (it must have run first)")
    ap.add_argument("--variant-timeout-s", type=float, default=0,
                    help="longest engine build (and first frame) of one variant; past it the variant is an error")
    ap.add_argument("--flicker", action="store_true",
                    help="flicker of a static noisy input per latent/image feedback setting (bench/flicker.py)")
    ap.add_argument("--flicker-frames", type=int, default=120, help="measured frames per flicker setting")
    ap.add_argument("--flicker-warmup", type=int, default=60, help="settling frames per flicker setting")
    ap.add_argument("--flicker-shift", type=float, default=0.0, help="random sub-pixel shift per frame (px, < 1)")
    ap.add_argument("--loras", nargs="?", const=LORA_CASES, default="",
                    help="live vs fused random LoRAs, N:RANK list (bench/loras.py; alone: 1,2,4 x rank 16,64)")
    ap.add_argument("--cond-engine", choices=("compiled", "eager"), default="compiled",
                    help="engine of --flicker and --loras (eager: CUDA graph without torch.compile, no compile wait)")
    args = ap.parse_args(argv)
    args.family = "sdxl" if args.sdxl else "sd21"

    from .models import build
    from .reference import run_reference
    from .scenarios import ALL_SCENARIOS, CONDITIONING_BASELINE, CONDITIONING_SCENARIOS, SCENARIOS, family_scenarios

    budget = Budget(args.budget_s)
    device = "cuda" if torch.cuda.is_available() and not args.small else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    results: dict[str, Any] = {"env": environment(), "variants": []}
    outputs: dict[str, dict[str, np.ndarray]] = {}  # variant key -> scenario -> uint8 output frames
    log(f"env {results['env']}")

    def save() -> None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))

    models = build(device, dtype, small=args.small, family=args.family)
    results["env"]["family"] = args.family
    results["floor"] = floor(models, device, dtype)
    if args.sdxl:
        results["floor_1024"] = floor(models, device, dtype, size=1024)
    log(f"floor {results['floor']}")
    save()
    if not args.skip_reference and not args.sdxl:  # the reference is diffusers' SD img2img pipeline
        ref = run_reference(models, (512, 512), args.reference_frames, device, dtype)
        results["reference"] = {k: v.as_dict() for k, v in ref.items()}
        log(f"reference {results['reference']}")
        save()
    for key in [k for k in args.variants.split(",") if k]:
        if budget.left() < 60:
            results["variants"].append({"variant": VARIANTS[key].label, "skipped": "time budget"})
            continue
        v = VARIANTS[key]
        if args.sdxl:  # the same variant on the SDXL models: its one-step 512 scenario by default
            v = Variant(v.label, v.engine, v.options, v.qkv_fusion, ("sdxl-img2img-1step-512",))
        if key == args.all_scenarios:
            default = ((CONDITIONING_BASELINE, *CONDITIONING_SCENARIOS) if args.conditioning
                       else family_scenarios(args.family))
            chosen = tuple(k for k in args.scenarios.split(",") if k) or default
            unknown = [k for k in chosen if k not in ALL_SCENARIOS]
            if unknown:
                ap.error(f"unknown scenarios {unknown}; known: {', '.join(ALL_SCENARIOS)}")
            v = Variant(v.label, v.engine, v.options, v.qkv_fusion, chosen)
        fresh = v.qkv_fusion or v.options.get("dtype")
        models_v = build(device, dtype, small=args.small, family=args.family) if fresh else models
        kept = outputs.setdefault(key, {})
        try:
            results["variants"].append(run_variant(v, models_v, device, dtype, args.frames, budget, args.cache_dir,
                                                   timeout_s=args.variant_timeout_s or None, outputs=kept))
        except (Exception, VariantTimeout) as exc:  # noqa: BLE001
            traceback.print_exc()
            results["variants"].append({"variant": v.label, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
        results["variants"][-1]["key"] = key
        add_differences(results, outputs)
        save()
        del models_v
    for key, wanted, run in (("flicker", args.flicker, flicker_run), ("loras", args.loras, lora_run)):
        if not wanted:
            continue
        try:
            results[key] = run(args, models, device, dtype, budget)
        except Exception as exc:  # noqa: BLE001 - record and go on
            traceback.print_exc()
            results[key] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        log(f"{key} {results[key]}")
        save()
    if not args.no_app_e2e and device == "cuda":  # on the CPU (--small) two app runs would take minutes
        results["app_e2e"] = app_e2e(args, budget)
        log(f"app end to end {results['app_e2e']}")
        save()
    if not args.no_second_start and any(r.get("engine") == "compiled" and "scenarios" in r for r in results["variants"]):
        results["second_start"] = second_start(args.cache_dir, budget, small=args.small, family=args.family,
                                               variant=args.second_start_variant)
        log(f"second start {results['second_start']}")
    save()
    from .report import render

    text = render(results)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
