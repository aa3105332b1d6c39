"""The arithmetic floor: counted FLOPs of one frame over a measured fp16 matmul rate."""

from __future__ import annotations

from typing import Callable

import torch


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of matmuls, convolutions and attention in fn (torch's FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_tflops(dtype: torch.dtype = torch.float16, n: int = 8192, reps: int = 20) -> float:
    """Measured dense matmul rate on random data (TFLOP/s), median of `reps` products."""
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    times.sort()
    return 2 * n**3 / times[len(times) // 2] / 1e12
