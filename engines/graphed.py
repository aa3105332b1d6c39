"""One CUDA graph over the whole per-frame step, with static buffers and pinned host I/O.

`GraphedStep(step_fn, shape_key_fn)` wraps a pure, capturable `step_fn(frames_uint8) -> uint8`
(the core's `StreamDiffusion.step_tensor`): the first call (and every call after `shape_key_fn()`
changes or the frame shape changes) warms the step up on a side stream and captures it; every
other call is: host frame -> pinned buffer -> async upload -> graph replay -> async download ->
one event wait. `submit()` + `FrameHandle.result()` let a caller overlap the next frame's host
work with this frame's GPU work (two host buffers in rotation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Hashable

import numpy as np
import torch

StepFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class _Slot:
    host_in: torch.Tensor
    host_out: torch.Tensor
    uploaded: torch.cuda.Event
    done: torch.cuda.Event
    busy: bool = False


class FrameHandle:
    """A frame in flight; `result()` waits for it (the one synchronize the sink needs)."""

    def __init__(self, slot: _Slot) -> None:
        self._slot = slot

    def result(self) -> torch.Tensor:
        """The output frame in pinned host memory; valid until this slot is reused (two submits later)."""
        self._slot.done.synchronize()
        self._slot.busy = False
        return self._slot.host_out


class _Done(FrameHandle):
    """An already finished frame (the uncaptured fallback path)."""

    def __init__(self, out: torch.Tensor) -> None:
        self._out = out

    def result(self) -> torch.Tensor:
        return self._out


class GraphedStep:
    def __init__(
        self,
        step_fn: StepFn,
        shape_key_fn: Callable[[], Hashable] | None = None,
        *,
        device: torch.device | str = "cuda",
        warmup: int = 2,
        slots: int = 2,
        state_fn: Callable[[], list[torch.Tensor]] | None = None,
    ) -> None:
        self.step_fn = step_fn
        self.shape_key_fn = shape_key_fn or (lambda: None)
        self.device = torch.device(device)
        self.warmup = warmup
        self.n_slots = slots
        self.state_fn = state_fn  # the step's persistent state: restored after warm-up, so capture has no side effect
        self.captures = 0
        self.capture_error: str | None = None  # set when capture failed: frames then run uncaptured
        self._key: Hashable = object()
        self._graph: torch.cuda.CUDAGraph | None = None
        self._slots: list[_Slot] = []
        self._next = 0

    # -- capture ---------------------------------------------------------------------------
    def _needs_capture(self, shape: tuple[int, ...]) -> bool:
        return self._graph is None or self._key != (self.shape_key_fn(), shape)

    def _capture(self, first: torch.Tensor) -> None:
        """Warm up on a side stream (allocations, autotuning, lazy state), then capture."""
        torch.cuda.synchronize(self.device)
        self._graph = None
        self.static_in = torch.empty(first.shape, dtype=torch.uint8, device=self.device)
        self.static_in.copy_(first)
        state = self.state_fn() if self.state_fn else []
        saved = [t.clone() for t in state]
        try:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self.step_fn(self.static_in)
            torch.cuda.current_stream(self.device).wait_stream(side)
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.static_out = self.step_fn(self.static_in)
        finally:  # warm-up steps must not count as frames, whether or not the capture worked
            with torch.inference_mode():  # also allows in-place writes to inference-mode state tensors
                for tensor, value in zip(state, saved):
                    tensor.copy_(value)
        self._graph = graph
        self._key = (self.shape_key_fn(), tuple(first.shape))
        self._slots = [self._new_slot(first.shape, self.static_out.shape) for _ in range(self.n_slots)]
        self.captures += 1

    @staticmethod
    def _new_slot(in_shape: torch.Size, out_shape: torch.Size) -> _Slot:
        return _Slot(
            host_in=torch.empty(in_shape, dtype=torch.uint8, pin_memory=True),
            host_out=torch.empty(out_shape, dtype=torch.uint8, pin_memory=True),
            uploaded=torch.cuda.Event(),
            done=torch.cuda.Event(),
        )

    # -- per frame -------------------------------------------------------------------------
    def _try_capture(self, first: torch.Tensor) -> bool:
        """Capture; on failure remember why and run the step uncaptured from then on."""
        if self.device.type != "cuda":
            self.capture_error = "no CUDA device: the step runs uncaptured"
            return False
        try:
            self._capture(first)
            return True
        except Exception as exc:  # noqa: BLE001 - a step that cannot be captured still runs eagerly
            self.capture_error = f"{type(exc).__name__}: {str(exc)[:200]}"
            self._graph = None
            torch.cuda.synchronize(self.device)
            return False

    def run_device(self, frames: torch.Tensor) -> torch.Tensor:
        """Device frames in, device frames out (the returned tensor is the graph's static output)."""
        if self.capture_error is not None:
            return self.step_fn(frames)
        if self._needs_capture(tuple(frames.shape)):
            if not self._try_capture(frames.to(self.device)):
                return self.step_fn(frames)
        else:
            self.static_in.copy_(frames, non_blocking=True)
        self._graph.replay()
        return self.static_out

    def submit(self, frames: np.ndarray | torch.Tensor) -> FrameHandle:
        """Host uint8 frames (fbs,H,W,3) in; the output arrives in a pinned host buffer."""
        shape = tuple(frames.shape)
        if self.capture_error is None and self._needs_capture(shape):
            self._try_capture(torch.as_tensor(frames).to(self.device))
        if self.capture_error is not None:
            return _Done(self.step_fn(torch.as_tensor(frames).to(self.device)).cpu())
        slot = self._slots[self._next]
        self._next = (self._next + 1) % len(self._slots)
        if slot.busy:  # the caller never collected it: wait so its buffers can be reused
            slot.done.synchronize()
        slot.uploaded.synchronize()  # the previous upload from this host buffer has finished
        _host_copy(slot.host_in, frames)
        stream = torch.cuda.current_stream(self.device)
        self.static_in.copy_(slot.host_in, non_blocking=True)
        slot.uploaded.record(stream)
        self._graph.replay()
        slot.host_out.copy_(self.static_out, non_blocking=True)
        slot.done.record(stream)
        slot.busy = True
        return FrameHandle(slot)

    def __call__(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self.submit(frames).result()

    def host_in_pinned(self) -> bool:
        return bool(self._slots) and all(s.host_in.is_pinned() and s.host_out.is_pinned() for s in self._slots)


def _host_copy(dst: torch.Tensor, src: Any) -> None:
    if isinstance(src, np.ndarray):
        np.copyto(dst.numpy(), src, casting="no")
    else:
        dst.copy_(src)
