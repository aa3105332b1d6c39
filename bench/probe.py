"""Exploration probe (not the benchmark): where can 1-step 512 go faster?

`python -m bench.probe --out probe.json` on a CUDA machine. Times, on the same compiled
modules: k CUDA graphs of the same 1-step step replayed on k CUDA streams (frames in flight
run concurrently on the GPU), cuDNN benchmark mode, and frame batching (frame_buffer_size).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import time
from typing import Any

import numpy as np
import torch

from .models import build, components as make_components
from .scenarios import SCENARIOS, frames_for


def log(msg: str) -> None:
    print(f"[probe {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Lanes:
    """k graphs of one stateless step, each replayed on its own CUDA stream."""

    def __init__(self, stream: Any, k: int, first: torch.Tensor) -> None:
        from dreamcam.engines.graphed import GraphedStep

        self.k = k
        self.graphs = [GraphedStep(stream.step_tensor, lambda: stream.shape_key, device="cuda") for _ in range(k)]
        for g in self.graphs:
            g.run_device(first)
        torch.cuda.synchronize()
        self.streams = [torch.cuda.Stream() for _ in range(k)]
        shape_out = self.graphs[0].static_out.shape
        self.host_in = [torch.empty(first.shape, dtype=torch.uint8, pin_memory=True) for _ in range(k)]
        self.host_out = [torch.empty(shape_out, dtype=torch.uint8, pin_memory=True) for _ in range(k)]
        self.done = [torch.cuda.Event() for _ in range(k)]

    def device_throughput(self, frame: torch.Tensor, frames: int) -> float:
        for _ in range(2):
            self._launch_dev(frame, frames=self.k)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        self._launch_dev(frame, frames)
        torch.cuda.synchronize()
        return frames / (time.perf_counter() - t0)

    def _launch_dev(self, frame: torch.Tensor, frames: int) -> None:
        main = torch.cuda.current_stream()
        for i in range(frames):
            lane = i % self.k
            s = self.streams[lane]
            s.wait_stream(main) if i < self.k else None
            with torch.cuda.stream(s):
                self.graphs[lane].static_in.copy_(frame, non_blocking=True)
                self.graphs[lane]._graph.replay()
        for s in self.streams:
            main.wait_stream(s)

    def host_to_host(self, host: list[np.ndarray], frames: int) -> dict:
        """k frames in flight, results collected in order; latency = submit to result."""
        pending: list[tuple[int, float]] = []
        lat = []
        start = None
        for i in range(frames + self.k + 3):
            if i == 3:
                torch.cuda.synchronize()
                start = time.perf_counter()
                lat.clear()
            lane = i % self.k
            if len(pending) == self.k:
                old_lane, t_sub = pending.pop(0)
                self.done[old_lane].synchronize()
                lat.append(time.perf_counter() - t_sub)
            t_sub = time.perf_counter()
            np.copyto(self.host_in[lane].numpy(), host[i % len(host)][None], casting="no")
            s = self.streams[lane]
            with torch.cuda.stream(s):
                g = self.graphs[lane]
                g.static_in.copy_(self.host_in[lane], non_blocking=True)
                g._graph.replay()
                self.host_out[lane].copy_(g.static_out, non_blocking=True)
                self.done[lane].record(s)
            pending.append((lane, t_sub))
        for lane, t_sub in pending:
            self.done[lane].synchronize()
            lat.append(time.perf_counter() - t_sub)
        total = time.perf_counter() - start
        ms = np.array(lat) * 1e3
        return {"fps": round(len(lat) / total, 1), "lat_p50_ms": round(float(np.percentile(ms, 50)), 2),
                "lat_p99_ms": round(float(np.percentile(ms, 99)), 2)}


def probe_stream(comps, modules, cfg, host, lanes: tuple[int, ...], frames: int, label: str, out: list) -> None:
    from dreamcam.core.stream import StreamDiffusion

    stream = StreamDiffusion(comps, cfg, modules=modules)
    fbs = cfg.frame_buffer_size
    batch = np.stack([host[j % len(host)] for j in range(fbs)])
    dev = torch.from_numpy(batch).cuda()
    t0 = time.perf_counter()
    for k in lanes:
        lanes_obj = Lanes(stream, k, dev)
        cap = time.perf_counter() - t0
        row = {"label": label, "fbs": fbs, "lanes": k, "capture_s": round(cap, 1),
               "device_fps": round(lanes_obj.device_throughput(dev, frames) * fbs, 1)}
        if fbs == 1:
            row["host_to_host"] = lanes_obj.host_to_host(host, frames)
        row["mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        log(json.dumps(row))
        out.append(row)
        del lanes_obj
        torch.cuda.empty_cache()
        t0 = time.perf_counter()


@contextlib.contextmanager
def _locked(path: str | None):
    if path is None:
        yield
        return
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="probe.json")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--parts", default="compiled,cudnn,fbs2,eager")
    ap.add_argument("--engine-options", default="{}", help="EngineConfig overrides as JSON")
    ap.add_argument("--label", default="compiled")
    ap.add_argument("--lock", default=None, help="a file locked while timing (runs beside other probes)")
    args = ap.parse_args()
    parts = args.parts.split(",")
    from dreamcam.engines.config import EngineConfig
    from dreamcam.engines.factory import create_engine

    torch.backends.cuda.matmul.allow_tf32 = True
    models = build("cuda", torch.float16)
    comps = make_components(models, "cuda", torch.float16)
    s = SCENARIOS["img2img-1step-512"]
    host = frames_for(s)
    out: list = []
    base = s.stream_config()

    def dump() -> None:
        with open(args.out, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "rows": out}, f, indent=1)

    if "eager" in parts:
        eng = create_engine("eager", comps, EngineConfig())
        probe_stream(comps, eng.modules, base, host, (1, 2, 4), args.frames, "eager", out)
        dump()
    t0 = time.perf_counter()
    eng = create_engine("compiled", comps, EngineConfig(**json.loads(args.engine_options)))
    log(f"compiled engine in {time.perf_counter() - t0:.1f}s: {eng.describe()}")
    if "compiled" in parts:
        with _locked(args.lock):
            probe_stream(comps, eng.modules, base, host, (1, 2, 4), args.frames, args.label, out)
        dump()
    if "cudnn" in parts:
        torch.backends.cudnn.benchmark = True
        probe_stream(comps, eng.modules, base, host, (1, 2), args.frames, "compiled+cudnn.benchmark", out)
        torch.backends.cudnn.benchmark = False
        dump()
    if "fbs2" in parts:
        probe_stream(comps, eng.modules, base.replace(frame_buffer_size=2), host, (1, 2), args.frames,
                     "compiled fbs2", out)
        dump()
    if "fbs4" in parts:
        probe_stream(comps, eng.modules, base.replace(frame_buffer_size=4), host, (1,), args.frames,
                     "compiled fbs4", out)
        dump()
    if "qkv" in parts:
        models.unet.fuse_qkv_projections()
        eng = create_engine("compiled", comps, EngineConfig())
        probe_stream(comps, eng.modules, base, host, (1, 2), args.frames, "compiled+fused qkv", out)
        dump()
    log("done")


if __name__ == "__main__":
    main()
