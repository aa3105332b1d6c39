"""How the output flows through a live change that needs a new compile (issue 11 point 3).

A compiled-engine stream (1-step img2img at 512x512 on the GPU) runs frames one at a time through the
app's graph driver, numpy in, numpy out, captured in a CUDA graph. Then a live change arrives that no
compiled code serves yet: a new size (`size`: 768x512, the core reallocates, the compiled modules meet
new shapes; `size-default-switch`: 512x768 with Python's own thread switch interval during the compile,
against the engine's shorter one; `size-fine-switch`: 640x512 with a 4x shorter one still) or more
steps (`steps`: 2 steps, the UNet batch doubles). Frames keep being submitted while the new shapes
compile in the background (engines/background.py) and the eager modules serve them, captured in a
graph of their own; once the compile is done the next frame captures the compiled step.

Reported per change, from the time each frame came out: the median and longest gap between two
frames out (the longest is what a virtual camera would show as a stall), fps before the change, while
the background compile ran and after the new graph was captured, the seconds until the compile
finished, the frames served meanwhile, the driver's `graph_error` at the end and the lanes captured.
`python -m bench.live_change [--small] [--changes size,steps] [--json PATH]`; `--small` runs tiny
widths on the CPU (checks the code: no graph there, and the "compile" is Inductor's CPU one).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from .scenarios import SCENARIOS, frames_for
from .timing import sync



@dataclass(frozen=True)
class Change:
    """A live change and the engine options it runs under (EngineConfig overrides)."""

    settings: Callable[[int], dict[str, Any]]  # the stream's side -> the update
    options: tuple[tuple[str, Any], ...] = ()


CHANGES: dict[str, Change] = {
    "size": Change(lambda side: {"width": side + side // 2, "height": side}),  # 512 -> 768x512
    # the same pixels in other shapes (nothing compiled yet), with Python's own 5 ms switch interval
    "size-default-switch": Change(lambda side: {"width": side, "height": side + side // 2},
                                  (("compile_switch_interval_s", None),)),
    # another new shape with a 4x shorter interval than the engine's (the next step of that A/B)
    "size-fine-switch": Change(lambda side: {"width": side + side // 4, "height": side},
                               (("compile_switch_interval_s", 5e-5),)),
    "steps": Change(lambda side: {"t_index_list": [16, 32]}),
}
BEFORE_FRAMES = 60
AFTER_FRAMES = 60


@dataclass
class Timeline:
    """When each frame came out (perf_counter seconds) and in which phase it was submitted."""

    times: list[float]
    phases: list[str]

    def add(self, phase: str) -> None:
        self.times.append(time.perf_counter())
        self.phases.append(phase)

    def fps(self, phase: str) -> float | None:
        stamps = [t for t, p in zip(self.times, self.phases) if p == phase]
        if len(stamps) < 2:
            return None
        return round((len(stamps) - 1) / (stamps[-1] - stamps[0]), 1)

    def gaps_ms(self, start: int, end: int | None = None) -> dict[str, float]:
        """Median and longest time between two frames out, frames `start` to `end` (0: fewer than two)."""
        stamps = self.times[start:end]
        gaps = np.diff(stamps) * 1000 if len(stamps) >= 2 else np.zeros(1)
        return {"p50": round(float(np.median(gaps)), 1), "max": round(float(gaps.max()), 1)}


def measure_change(components: Any, modules: Any, change: dict[str, Any], *, side: int, config: Any,
                   timeout_s: float) -> dict[str, Any]:
    """One stream, one live `change`, the output timed frame by frame."""
    from dreamcam.core.stream import StreamDiffusion
    from dreamcam.engines.background import compiling
    from dreamcam.engines.driver import StreamDriver

    scenario = SCENARIOS["img2img-1step-512"]
    cfg = scenario.stream_config().replace(width=side, height=side)
    host = frames_for(type(scenario)(scenario.name, width=side, height=side))
    stream = StreamDiffusion(components, cfg, modules=modules)
    driver = StreamDriver(stream, config=config)
    line = Timeline([], [])
    for i in range(BEFORE_FRAMES):
        driver(host[i % len(host)])
        line.add("before")
    sync()
    t_change = time.perf_counter()
    driver.update(**change)
    first_after = len(line.times)
    busy: list[bool] = []  # per frame after the change: a background compile ran before or after it
    i, quiet = 0, 0
    while quiet < AFTER_FRAMES and time.perf_counter() - t_change < timeout_s:
        was = compiling()
        driver(host[i % len(host)])
        i += 1
        busy.append(was or compiling() or i == 1)
        quiet = 0 if busy[-1] else quiet + 1
        line.add("pending")
    last_busy = max((k for k, b in enumerate(busy) if b), default=-1)
    for k in range(len(busy)):  # "during": up to the last frame a compile ran beside; "after": the rest
        line.phases[first_after + k] = "during" if k <= last_busy else "after"
    t_compiled = line.times[first_after + last_busy] if 0 <= last_busy < len(busy) - 1 else None
    sync()
    status = driver.graph_status()
    result = {
        "change": change, "frames_during": line.phases.count("during"),
        "compile_s": round(t_compiled - t_change, 2) if t_compiled is not None else None,
        "gap_ms": line.gaps_ms(first_after - 1), "gap_before_ms": line.gaps_ms(1, first_after),
        "fps_before": line.fps("before"), "fps_during": line.fps("during"), "fps_after": line.fps("after"),
        "graph_error": status.error, "lanes_captured": status.lanes, "finished": quiet >= AFTER_FRAMES,
        "stand_in_captures": driver.graphed.stand_in_captures,
        "stream": {"width": stream.config.width, "height": stream.config.height, "steps": stream.num_steps},
    }
    driver.close()
    return result


def main(argv: list[str] | None = None) -> int:
    from dreamcam.engines import EngineConfig, Geometry, create_engine

    from .models import build, components as make_components

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--changes", default="size,size-default-switch,steps", help=f"comma-separated: {', '.join(CHANGES)}")
    ap.add_argument("--small", action="store_true", help="tiny widths on the CPU: checks the code, not the speed")
    ap.add_argument("--timeout-s", type=float, default=240.0, help="per change: the most to wait for its compile")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.changes.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHANGES]
    if unknown:
        ap.error(f"unknown change {unknown[0]!r}; choose from {', '.join(CHANGES)}")
    device = "cpu" if args.small or not torch.cuda.is_available() else "cuda"
    dtype = torch.float16 if device == "cuda" else torch.float32
    side = 512 if device == "cuda" else 64
    models = build(device, dtype, small=device != "cuda")
    components = make_components(models, device, dtype)
    results: dict[str, Any] = {"device": device, "side": side}
    engines: dict[tuple, Any] = {}  # one engine per set of options; each change meets shapes not compiled yet
    for name in names:
        change = CHANGES[name]
        config = EngineConfig(geometry=Geometry(side, side), **dict(change.options))
        if change.options not in engines:
            engines[change.options] = create_engine("compiled", components, config)
        engine = engines[change.options]
        results[name] = {"engine": engine.name, "options": dict(change.options),
                         **measure_change(components, engine.modules, change.settings(side), side=side,
                                          config=config, timeout_s=args.timeout_s)}
        print(name, json.dumps(results[name]), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
