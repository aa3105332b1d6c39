"""Start time of an engine, first and second start, each in a fresh process, phase by phase.

`python -m bench.start_time [--engine compiled] [--sdxl] [--size 512] [--options JSON]` saves a random-weight model
as a diffusers folder (bench/app_e2e.py), then starts twice in fresh child processes with one engine
cache (a new empty folder unless `--cache-dir` is given): the first start compiles, the second reuses
the cache. Each child loads the folder as the app does (`core.loading.load_components`), builds the
engine, builds the stream and runs the first frame through the graph driver, and reports its phases:

- `import_s`: Python, torch, diffusers and dreamcam imports (from the process start);
- `cuda_init_s`: the process's CUDA initialisation (its first CUDA call), timed apart from the load;
- `model_imports_s`: the model classes' modules (diffusers and transformers import them lazily, at
  the first use: their package inits import every model they have, peft and scipy);
- `load_s`: the model from disk to the GPU;
- `engine_s`: `create_engine` (the compiled engine: torch.compile of each module at its probe);
- `stream_s`: `StreamDiffusion` (prompt encoding, state);
- `warmup_s`, `capture_s`: the first frame's warm-up calls (Dynamo guards, cuDNN autotuning, any
  recompile) and its CUDA graph capture; `first_frame_s` the whole first frame;
- `recompiles_at_first_frame`: Dynamo graphs compiled during the first frame (0 = the probe's served),
  `background_compile_at_first_frame`: whether the first frame had to start one (then it ran uncaptured);
- `total_s`: process start to the first frame out;
- `compile`: where the compiled engine's time went, over the engine build and the first frame
  together (torch's own compile timers and cache counters): `dynamo_trace_s` (Dynamo tracing each
  module's Python, paid in every new process), `backend_s` (AOTAutograd + Inductor: compiling, or
  loading from their caches), `compile_s` (both, with guards), `outside_compile_s` (the rest of the
  engine build and first frame: the probe's and warm-up's runs, cuDNN autotuning, the capture), and
  the FX-graph / AOTAutograd cache hits and misses (a second start should only hit).

`--options '{"compile_mode": ...}'` gives EngineConfig overrides (a bench variant's, e.g. that
max-autotune's choices come from the cache). Prints a table and a JSON line. `--one` runs one start
in this process (a child; `bench.run` uses it for its second start with the cache its own run filled).
"""

from __future__ import annotations

import time

PROCESS_START = time.time()  # before the heavy imports below: import_s counts them

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

PHASES = ("import_s", "cuda_init_s", "model_imports_s", "load_s", "engine_s", "stream_s", "warmup_s", "capture_s",
          "first_frame_s", "total_s")  # what one start reports, in order (the report reads them from here)


def _dynamo_graphs() -> int:
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover
        return 0
    return int(counters["stats"]["unique_graphs"])


COMPILE_TIMERS = {"dynamo_trace_s": "bytecode_tracing", "backend_s": "OutputGraph.call_user_compiler",
                  "compile_s": "_compile.compile_inner"}
CACHE_COUNTERS = {"fx_cache_hits": ("inductor", "fxgraph_cache_hit"), "fx_cache_misses": ("inductor", "fxgraph_cache_miss"),
                  "aot_cache_hits": ("aot_autograd", "autograd_cache_hit"),
                  "aot_cache_misses": ("aot_autograd", "autograd_cache_miss")}


def compile_stats() -> dict[str, float]:
    """torch's cumulative compile timers and cache counters in this process (zeros before any compile)."""
    from torch._dynamo.utils import compile_times, counters

    names, values = compile_times(repr="csv", aggregate=True)
    timers = dict(zip(names, (float(v) for v in values)))
    stats = {key: timers.get(name, 0.0) for key, name in COMPILE_TIMERS.items()}
    stats.update({key: float(counters[group][name]) for key, (group, name) in CACHE_COUNTERS.items()})
    return stats


def compile_breakdown(before: dict[str, float], after: dict[str, float], elapsed_s: float) -> dict[str, float]:
    """What the compiles between two `compile_stats()` cost, and the time of `elapsed_s` outside them."""
    diff = {key: after[key] - before[key] for key in after}
    out = {key: round(diff[key], 2) for key in COMPILE_TIMERS}
    out["outside_compile_s"] = round(elapsed_s - diff["compile_s"], 2)
    out.update({key: int(diff[key]) for key in CACHE_COUNTERS})
    return out


def measure(engine_name: str, cache_dir: Path, model_dir: Path, *, small: bool = False, size: int = 512,
            family: str = "sd21", started: float = PROCESS_START, options: dict | None = None) -> dict:
    import torch

    from dreamcam.core.loading import ModelSpec, load_components
    from dreamcam.core.stream import StreamDiffusion
    from dreamcam.engines import EngineConfig, Geometry, create_engine
    from dreamcam.engines.background import compiling

    from .app_e2e import TAESD_FOLDER
    from .scenarios import SCENARIOS, frames_for

    imported = time.time()
    device = "cuda" if torch.cuda.is_available() and not small else "cpu"
    dtype = "float16" if device == "cuda" else "float32"
    t = time.perf_counter()
    if device == "cuda":
        torch.zeros(1, device=device)
        torch.cuda.synchronize()
    cuda_init_s = time.perf_counter() - t
    t = time.perf_counter()
    import diffusers
    import transformers

    for name in ("UNet2DConditionModel", "AutoencoderTiny", "AutoencoderKL"):
        getattr(diffusers, name)
    for name in ("CLIPTextModel", "CLIPTextModelWithProjection", "CLIPTokenizer"):
        getattr(transformers, name)
    model_imports_s = time.perf_counter() - t
    t = time.perf_counter()
    comps = load_components(ModelSpec(str(model_dir), tiny_vae=str(model_dir / TAESD_FOLDER[family]), device=device,
                                      dtype=dtype, local_files_only=True))
    if device == "cuda":
        torch.cuda.synchronize()
    load_s = time.perf_counter() - t
    scenario = replace(SCENARIOS["img2img-1step-512"], width=size, height=size)
    stats = compile_stats()
    t = time.perf_counter()
    engine = create_engine(engine_name, comps, EngineConfig(geometry=Geometry(size, size), cache_dir=cache_dir,
                                                            **(options or {})))
    engine_s = time.perf_counter() - t
    t = time.perf_counter()
    stream = StreamDiffusion(comps, scenario.stream_config(), modules=engine.modules)
    stream_s = time.perf_counter() - t
    frame = frames_for(scenario, count=1)[0][None]
    graphs = _dynamo_graphs()
    t = time.perf_counter()
    driver = engine.driver(stream)
    driver(frame)
    first_frame_s = time.perf_counter() - t
    background = compiling()  # the first frame met shapes the probe did not compile
    timings = driver.graphed.timings
    return {"engine": engine.name, "device": device, "family": family, "size": size,
            "import_s": round(imported - started, 2), "cuda_init_s": round(cuda_init_s, 2),
            "model_imports_s": round(model_imports_s, 2), "load_s": round(load_s, 2), "engine_s": round(engine_s, 2),
            "stream_s": round(stream_s, 2), "warmup_s": round(timings.get("warmup_s", 0.0), 2),
            "capture_s": round(timings.get("capture_s", 0.0), 2), "first_frame_s": round(first_frame_s, 2),
            "recompiles_at_first_frame": _dynamo_graphs() - graphs, "graph_error": driver.graph_status().error,
            "background_compile_at_first_frame": background,
            "compile": compile_breakdown(stats, compile_stats(), engine_s + stream_s + first_frame_s),
            "total_s": round(time.time() - started, 2)}


def child(args: argparse.Namespace, cache_dir: Path, model_dir: Path, timeout_s: float) -> dict:
    """One start in a fresh process; its JSON line, or what went wrong."""
    cmd = [sys.executable, "-m", "bench.start_time", "--one", "--engine", args.engine, "--cache-dir", str(cache_dir),
           "--model-dir", str(model_dir), "--size", str(args.size)] + (["--sdxl"] if args.sdxl else []) + (
        ["--small"] if args.small else []) + (["--options", json.dumps(args.options)] if args.options else [])
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              cwd=Path(__file__).resolve().parent.parent)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"error": (done.stderr or done.stdout).strip()[-400:]}
    return json.loads(lines[-1])


def table(rows: dict[str, dict]) -> str:
    head = "| start | " + " | ".join(PHASES) + " | recompiles at first frame |"
    lines = [head, "|" + " --- |" * (len(PHASES) + 2)]
    for name, r in rows.items():
        if "error" in r:
            lines.append(f"| {name} | {r['error'][-200:]} |")
            continue
        lines.append(f"| {name} | " + " | ".join(f"{r[p]:.2f}" for p in PHASES)
                     + f" | {r['recompiles_at_first_frame']} |")
    return "\n".join(lines) + "\n\n" + compile_table(rows)


def compile_table(rows: dict[str, dict]) -> str:
    """Engine build + first frame of each start, split into Dynamo tracing, backend and the rest."""
    keys = [*COMPILE_TIMERS, "outside_compile_s", *CACHE_COUNTERS]
    lines = ["| start | " + " | ".join(keys) + " |", "|" + " --- |" * (len(keys) + 1)]
    for name, r in rows.items():
        if "compile" in r:
            lines.append(f"| {name} | " + " | ".join(str(r["compile"][k]) for k in keys) + " |")
    return "\n".join(lines)


def _folder(args: argparse.Namespace) -> Path:
    family = "sdxl" if args.sdxl else "sd21"
    return args.model_dir or Path(tempfile.gettempdir()) / f"dreamcam-start-model-{family}{'-small' if args.small else ''}"


def _folder_exists(args: argparse.Namespace) -> bool:
    return (_folder(args) / "model_index.json").is_file()


def model_folder(args: argparse.Namespace) -> Path:
    from .app_e2e import save_model

    return save_model(_folder(args), small=args.small, family="sdxl" if args.sdxl else "sd21")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", default="compiled")
    ap.add_argument("--cache-dir", type=Path, help="the engine cache (default: a new empty folder: a true first start)")
    ap.add_argument("--model-dir", type=Path, help="the diffusers folder (default: a random model saved once in /tmp)")
    ap.add_argument("--sdxl", action="store_true", help="an SDXL-Turbo-architecture model instead of SD-Turbo")
    ap.add_argument("--family", choices=("sd21", "sdxl"), help="same as --sdxl for sdxl (bench.run passes it)")
    ap.add_argument("--small", action="store_true", help="tiny widths on the CPU: checks the code, not the time")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--timeout-s", type=float, default=580, help="per start")
    ap.add_argument("--one", action="store_true", help="one start in this process (prints its JSON line)")
    ap.add_argument("--options", type=json.loads, default={}, help="EngineConfig overrides as JSON")
    args = ap.parse_args(argv)
    args.sdxl = args.sdxl or args.family == "sdxl"
    if args.one and not _folder_exists(args):  # save it, then start again: the save is no part of a start
        model_folder(args)
        os.execv(sys.executable, [sys.executable, "-m", "bench.start_time", *(argv if argv is not None else sys.argv[1:])])
    model_dir = model_folder(args)
    if args.one:
        cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="dreamcam-cache-"))
        print(json.dumps(measure(args.engine, cache, model_dir, small=args.small, size=args.size,
                                 family="sdxl" if args.sdxl else "sd21", options=args.options)), flush=True)
        return
    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="dreamcam-start-cache-"))
    rows = {"first": child(args, cache, model_dir, args.timeout_s)}
    rows["second"] = child(args, cache, model_dir, args.timeout_s)
    print(f"engine {args.engine}, {'SDXL' if args.sdxl else 'SD-Turbo'} {args.size}x{args.size}, cache {cache}")
    print(table(rows))
    print(json.dumps(rows), flush=True)


if __name__ == "__main__":
    main()
