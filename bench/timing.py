"""Timing helpers: per-frame host wall times (what the app sees) and CUDA-event stage times."""

from __future__ import annotations

import signal
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import numpy as np
import torch


@dataclass
class FrameStats:
    frames: int
    fps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float

    def as_dict(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def frame_times(fn: Callable[[int], object], frames: int, warmup: int = 3, *, seconds: float | None = None) -> FrameStats:
    """Calls fn(i) `frames` times (or until `seconds` pass); each call is one whole frame including its sync."""
    for i in range(warmup):
        fn(i)
    sync()
    times = []
    start = time.perf_counter()
    for i in range(frames):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
        if seconds is not None and time.perf_counter() - start > seconds:
            break
    total = time.perf_counter() - start
    ms = np.array(times) * 1e3
    return FrameStats(len(times), len(times) / total, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)),
                      float(ms.mean()))


def throughput(fn: Callable[[], object], frames: int, warmup: int = 3) -> float:
    """Frames per second with no sync between frames (GPU-bound rate; one sync at the end)."""
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(frames):
        fn()
    sync()
    return frames / (time.perf_counter() - start)


def graph_ms(fn: Callable[[], object], reps: int = 50) -> float:
    """Median GPU time of fn captured in a CUDA graph (launch gaps removed), by CUDA events."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    for _ in range(3):
        graph.replay()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    del graph
    return float(np.median(times))


def event_ms(fn: Callable[[], object], reps: int = 20) -> float:
    """Median GPU time of fn by CUDA events, launches included."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return float(np.median(times))


class VariantTimeout(BaseException):
    """Not an Exception: the engine factory's fallback chain must not swallow it (and start eager)."""


@contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raise VariantTimeout in the main thread after `seconds` (a compile that would eat the run)."""
    if not seconds or seconds <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def expire(signum, frame):  # noqa: ARG001
        raise VariantTimeout(f"did not finish within {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
