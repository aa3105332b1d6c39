"""Where the host time of one frame goes on the app's path (numpy in, numpy out, one at a time).

Times each phase of `StreamDriver.submit(frame).result()` separately, through the same public
calls the driver makes: `stream.prepare` (checks, similarity filter, upload, fit), the graph
launch (`GraphedStep.submit_device`: copy in, replay, copy out), the wait for the GPU, and
`stream.finish` (the copy the caller gets). The GPU time alone (device frames, no host copies)
is the floor; everything above it is host work the GPU waits for. `--profile` adds the top
functions of a cProfile of the same loop. `python -m bench.host_path [--small]`.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from typing import Any

import numpy as np
import torch

from dreamcam.core.frames import like_input

from .scenarios import SCENARIOS, frames_for
from .timing import sync, throughput

PHASES = ("prepare", "launch", "wait", "finish")


def phase_times(driver: Any, host: list[np.ndarray], frames: int) -> dict[str, float]:
    """Mean microseconds of each phase over `frames` frames, plus the whole frame."""
    stream, graphed = driver.stream, driver.graphed
    totals = dict.fromkeys((*PHASES, "frame"), 0.0)
    for i in range(frames):
        frame = host[i % len(host)]
        t0 = time.perf_counter()
        frame, x = stream.prepare(frame)
        t1 = time.perf_counter()
        handle = graphed.submit_device(x, to_host=True)
        t2 = time.perf_counter()
        out = handle.result()
        t3 = time.perf_counter()
        if handle.pinned:  # numpy frames, as engines/driver.py PendingFrame.result
            stream.finish(handle.kept, frame, returned=like_input(out, frame))
        else:
            stream.finish(out, frame)
        t4 = time.perf_counter()
        for name, value in zip((*PHASES, "frame"), (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
            totals[name] += value
    return {name: round(value / frames * 1e6, 1) for name, value in totals.items()}


def top_functions(fn, frames: int, top: int = 25) -> list[str]:
    profiler = cProfile.Profile()
    profiler.enable()
    for i in range(frames):
        fn(i)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    return [line for line in text.getvalue().splitlines() if line.strip()][-top - 1:]


def measure(components: Any, modules: Any, *, frames: int, device: str, config: Any = None,
            filter_on: bool = False, profile: bool = False) -> dict[str, Any]:
    from dreamcam.core.stream import StreamDiffusion
    from dreamcam.engines.driver import StreamDriver

    scenario = SCENARIOS["img2img-1step-512"]
    cfg = scenario.stream_config()
    if filter_on:  # the app's default: the filter runs on every frame (it never skips these)
        cfg = cfg.replace(similarity_threshold=0.999999, similarity_max_skip=10)
    if device != "cuda":
        cfg = cfg.replace(width=64, height=64)
        scenario = type(scenario)(scenario.name, width=64, height=64)
    stream = StreamDiffusion(components, cfg, modules=modules)
    driver = StreamDriver(stream, config=config)
    host = frames_for(scenario)
    dev = [torch.from_numpy(f).to(device) for f in host]
    for i in range(5):
        driver(host[i % len(host)])
    sync()
    result: dict[str, Any] = {"similarity_filter": filter_on, "graph_error": driver.graph_status().error}
    result["gpu_only_us"] = round(1e6 / throughput(lambda: driver(dev[0]), frames), 1)
    result["phases_us"] = phase_times(driver, host, frames)
    start = time.perf_counter()
    for i in range(frames):
        driver(host[i % len(host)])
    result["driver_call_us"] = round((time.perf_counter() - start) / frames * 1e6, 1)
    if profile:
        result["profile"] = top_functions(lambda i: driver(host[i % len(host)]), frames)
    driver.close()
    return result


def main(argv: list[str] | None = None) -> int:
    from .models import build

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--engine", default="compiled", help="eager | compiled")
    ap.add_argument("--small", action="store_true", help="tiny widths on the CPU: checks the code, not the speed")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)
    device = "cpu" if args.small or not torch.cuda.is_available() else "cuda"
    dtype = torch.float16 if device == "cuda" else torch.float32
    from dreamcam.engines import EngineConfig, Geometry, create_engine

    from .models import components as make_components

    models = build(device, dtype, small=args.small)
    components = make_components(models, device, dtype)
    config = EngineConfig(geometry=Geometry(512, 512))
    engine = create_engine(args.engine if device == "cuda" else "eager", components, config)
    out = {name: measure(components, engine.modules, frames=args.frames, device=device, config=config, filter_on=on,
                         profile=args.profile and on) for name, on in (("no-filter", False), ("filter", True))}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
