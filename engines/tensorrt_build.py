"""Build a TensorRT engine from ONNX, in its own process, with a progress bar.

Run as `python -m dreamcam.engines.tensorrt_build --onnx M.onnx --engine M.engine --shapes J`
where J is JSON `{"input": [[min], [opt], [max]], ...}`. A separate process keeps the builder's
memory (workspace, tactics) out of the streaming process and lets a crash or an out-of-memory
during the build end in a clean error instead of taking the stream down.
Exit codes: 0 built, 2 TensorRT missing, 3 parse failed, 4 build failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _progress_monitor(trt):
    """A TensorRT IProgressMonitor that prints one updating line per build phase to stderr."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._steps: dict[str, int] = {}
            self._start = time.monotonic()

        def phase_start(self, phase_name, parent_phase, num_steps):
            self._steps[phase_name] = max(int(num_steps), 1)
            self._draw(phase_name, 0)

        def step_complete(self, phase_name, step):
            self._draw(phase_name, int(step) + 1)
            return True  # keep building

        def phase_finish(self, phase_name):
            self._draw(phase_name, self._steps.get(phase_name, 1))
            sys.stderr.write("\n")
            self._steps.pop(phase_name, None)

        def _draw(self, phase, done):
            total = self._steps.get(phase, 1)
            filled = int(30 * min(done, total) / total)
            elapsed = time.monotonic() - self._start
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {phase[:40]:40s} {done}/{total} {elapsed:6.0f}s")
            sys.stderr.flush()

    return Monitor()


def build(onnx_path: Path, engine_path: Path, shapes: dict, *, fp16: bool = True,
          workspace_gb: float | None = None, timing_cache: Path | None = None) -> int:
    try:
        import tensorrt as trt
    except ImportError as exc:
        print(f"tensorrt is not installed: {exc}", file=sys.stderr)
        return 2
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        for i in range(parser.num_errors):
            print(f"ONNX parse error: {parser.get_error(i)}", file=sys.stderr)
        return 3
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if workspace_gb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
    config.add_optimization_profile(profile)
    if hasattr(config, "progress_monitor"):
        config.progress_monitor = _progress_monitor(trt)
    cache = None
    if timing_cache is not None:
        blob = timing_cache.read_bytes() if timing_cache.exists() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        print("TensorRT could not build the engine (see the messages above)", file=sys.stderr)
        return 4
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    partial = engine_path.with_suffix(".partial")
    partial.write_bytes(bytes(serialized))
    partial.replace(engine_path)  # atomic: a killed build never leaves a truncated engine behind
    if cache is not None:
        timing_cache.write_bytes(bytes(cache.serialize()))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", type=Path, required=True)
    ap.add_argument("--engine", type=Path, required=True)
    ap.add_argument("--shapes", required=True, help="JSON: input name -> [min, opt, max] shapes")
    ap.add_argument("--fp32", action="store_true")
    ap.add_argument("--workspace-gb", type=float)
    ap.add_argument("--timing-cache", type=Path)
    args = ap.parse_args(argv)
    return build(args.onnx, args.engine, json.loads(args.shapes), fp16=not args.fp32,
                 workspace_gb=args.workspace_gb, timing_cache=args.timing_cache)


if __name__ == "__main__":
    sys.exit(main())
