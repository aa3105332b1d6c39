"""Start time of an engine in a fresh process, e.g. the compiled engine's second start.

`python -m bench.start_time --engine compiled --cache-dir DIR` builds the bench models, creates
the engine with the engine cache in DIR (Inductor's kernels from a first start are reused from
disk) and runs the first frame through the CUDA-graph pipeline; `--options '{"compile_mode": ...}'`
gives EngineConfig overrides (a bench variant's, e.g. max-autotune's cached choices). Prints one JSON line:
{"engine_s": ..., "first_frame_s": ..., "total_s": ...}. `bench.run` calls it after its own
(first) start, so the two are measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch


def measure(engine_name: str, cache_dir: Path, *, small: bool = False, size: int = 512,
            options: dict | None = None) -> dict:
    from dreamcam.core.stream import StreamDiffusion
    from dreamcam.engines import EngineConfig, Geometry, create_engine
    from dreamcam.engines.driver import StreamDriver

    from .models import build, components
    from .scenarios import SCENARIOS, frames_for

    device = "cuda" if torch.cuda.is_available() and not small else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    comps = components(build(device, dtype, small=small), device, dtype)
    scenario = replace(SCENARIOS["img2img-1step-512"], width=size, height=size)
    start = time.perf_counter()
    engine = create_engine(engine_name, comps, EngineConfig(geometry=Geometry(size, size), cache_dir=cache_dir,
                                                                  **(options or {})))
    engine_s = time.perf_counter() - start
    stream = StreamDiffusion(comps, scenario.stream_config(), modules=engine.modules)
    frame = frames_for(scenario, count=1)[0][None]
    t0 = time.perf_counter()
    StreamDriver(stream)(frame)
    first_frame_s = time.perf_counter() - t0
    return {"engine": engine.name, "device": device, "engine_s": round(engine_s, 2),
            "first_frame_s": round(first_frame_s, 2), "total_s": round(engine_s + first_frame_s, 2)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", default="compiled")
    ap.add_argument("--cache-dir", type=Path, required=True)
    ap.add_argument("--small", action="store_true", help="tiny widths on the CPU: checks the code, not the time")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--options", type=json.loads, default={}, help="EngineConfig overrides as JSON")
    args = ap.parse_args(argv)
    print(json.dumps(measure(args.engine, args.cache_dir, small=args.small, size=args.size, options=args.options)),
          flush=True)


if __name__ == "__main__":
    main()
