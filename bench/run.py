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

import torch


LORA_CASES = "1:16,2:16,4:16,1:64,2:64,4:64"  # --loras alone: N = 1, 2, 4 LoRAs at rank 16 and 64


@dataclass(frozen=True)
class Variant:
    label: str
    engine: str  # eager | compiled
    options: dict = field(default_factory=dict)  # EngineConfig overrides
    qkv_fusion: bool = False
    scenarios: tuple[str, ...] = ("img2img-1step-512",)


VARIANTS = {
    "eager": Variant("eager+graph", "eager"),
    "compiled": Variant("compiled+graph", "compiled"),
    "compiled-tuned": Variant("compiled+graph, inductor tuning", "compiled", {"inductor_tuning": True}),
    "compiled-qkv": Variant("compiled+graph, fused QKV", "compiled", qkv_fusion=True),
    "compiled-autotune": Variant("compiled max-autotune+graph", "compiled", {"compile_mode": "max-autotune-no-cudagraphs"}),
    "compiled-bf16": Variant("compiled+graph bf16", "compiled", {"dtype": "bf16"}),
    "step": Variant("eager modules, whole step compiled+graph", "eager", {"compile_scope": "step"}),
}


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


def floor(models, device: str, dtype) -> dict:
    from .floor import count_flops, matmul_tflops

    unet, vae = models.unet, models.vae
    x = torch.randn(1, 4, 64, 64, device=device, dtype=dtype)
    t = torch.tensor([999], device=device)
    text = torch.randn(1, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
    img = torch.rand(1, 3, 512, 512, device=device, dtype=dtype) * 2 - 1
    flops = {
        "unet_b1": count_flops(lambda: unet(x, t, encoder_hidden_states=text)),
        "taesd_encode": count_flops(lambda: vae.encode(img)),
        "taesd_decode": count_flops(lambda: vae.decode(x)),
    }
    rate = matmul_tflops(dtype) if device == "cuda" else float("nan")
    total = sum(flops.values())
    ms = total / (rate * 1e12) * 1e3
    return {"gflop": {k: round(v / 1e9, 1) for k, v in flops.items()}, "total_gflop": round(total / 1e9, 1),
            "matmul_tflops": round(rate, 1), "floor_ms": round(ms, 3), "floor_fps": round(1e3 / ms, 1)}


def run_variant(v: Variant, models, device: str, dtype, frames: int, budget: Budget, cache_dir: Path) -> dict:
    from dreamcam.engines import EngineConfig, Geometry, create_engine

    from .models import components as make_components
    from .scenarios import SCENARIOS, run_scenario

    comps = make_components(models, device, dtype)
    # Restore a clean model each variant (earlier variants may have fused QKV or changed dtype).
    config = EngineConfig(geometry=Geometry(512, 512), cache_dir=cache_dir, **v.options)
    out: dict[str, Any] = {"variant": v.label, "engine": v.engine}
    t0 = time.perf_counter()
    engine = create_engine(v.engine, comps, config, log=log)
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
            r = run_scenario(SCENARIOS[name], comps, engine.modules, frames=frames, device=device, config=config)
        except Exception as exc:  # noqa: BLE001 - record and go on
            r = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            traceback.print_exc()
        out["scenarios"][name] = r
        log(f"    {json.dumps(r)}")
    return out


def second_start(cache_dir: Path, budget: Budget, *, small: bool = False) -> dict:
    """The compiled engine's start in a fresh process, reusing the cache this run just filled."""
    if budget.left() < 90:
        return {"skipped": "time budget"}
    cmd = [sys.executable, "-m", "bench.start_time", "--engine", "compiled", "--cache-dir", str(cache_dir)]
    try:
        done = subprocess.run(cmd + (["--small"] if small else []), capture_output=True, text=True,
                              timeout=budget.left(), cwd=Path(__file__).resolve().parent.parent)
    except subprocess.TimeoutExpired:
        return {"error": "time budget ran out"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"error": (done.stderr or done.stdout).strip()[-300:]}
    return json.loads(lines[-1])


def app_e2e(args: argparse.Namespace, budget: Budget) -> dict:
    """`dreamcam run` end to end (child processes) on a random-weight SD-Turbo folder saved once."""
    from .app_e2e import CASES, run_cases, save_model

    if budget.left() < 120:
        return {name: {"skipped": "time budget"} for name in CASES}
    folder = save_model(args.cache_dir / "app-e2e-model", small=args.small)
    per_case = max(60.0, (budget.left() - 30) / len(CASES))
    return run_cases(folder, frames=args.app_frames, cache_dir=args.cache_dir, timeout_s=per_case, small=args.small)


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

    from .models import build
    from .reference import run_reference
    from .scenarios import SCENARIOS

    budget = Budget(args.budget_s)
    device = "cuda" if torch.cuda.is_available() and not args.small else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    results: dict[str, Any] = {"env": environment(), "variants": []}
    log(f"env {results['env']}")

    def save() -> None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))

    models = build(device, dtype, small=args.small)
    results["floor"] = floor(models, device, dtype)
    log(f"floor {results['floor']}")
    save()
    if not args.skip_reference:
        ref = run_reference(models, (512, 512), args.reference_frames, device, dtype)
        results["reference"] = {k: v.as_dict() for k, v in ref.items()}
        log(f"reference {results['reference']}")
        save()
    for key in [k for k in args.variants.split(",") if k]:
        if budget.left() < 60:
            results["variants"].append({"variant": VARIANTS[key].label, "skipped": "time budget"})
            continue
        v = VARIANTS[key]
        if key == args.all_scenarios:
            chosen = tuple(k for k in args.scenarios.split(",") if k) or tuple(SCENARIOS)
            unknown = [k for k in chosen if k not in SCENARIOS]
            if unknown:
                ap.error(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
            v = Variant(v.label, v.engine, v.options, v.qkv_fusion, chosen)
        models_v = build(device, dtype, small=args.small) if v.qkv_fusion or v.options.get("dtype") else models
        try:
            results["variants"].append(run_variant(v, models_v, device, dtype, args.frames, budget, args.cache_dir))
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            results["variants"].append({"variant": v.label, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
        save()
        del models_v
    if args.flicker:
        try:
            results["flicker"] = flicker_run(args, models, device, dtype, budget)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            results["flicker"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        log(f"flicker {results['flicker']}")
        save()
    if args.loras:
        try:
            results["loras"] = lora_run(args, models, device, dtype, budget)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            results["loras"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        log(f"loras {results['loras']}")
        save()
    if not args.no_app_e2e and device == "cuda":  # on the CPU (--small) two app runs would take minutes
        results["app_e2e"] = app_e2e(args, budget)
        log(f"app end to end {results['app_e2e']}")
        save()
    if not args.no_second_start and any(r.get("engine") == "compiled" and "scenarios" in r for r in results["variants"]):
        results["second_start"] = second_start(args.cache_dir, budget, small=args.small)
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
