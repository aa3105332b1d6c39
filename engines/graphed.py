"""One CUDA graph over the whole per-frame step, with static buffers and pinned host I/O.

`GraphedStep(step_fn, shape_key_fn)` wraps a pure, capturable `step_fn(frames_uint8) -> uint8`
(the core's `StreamDiffusion.step_tensor`): the first call (and every call after `shape_key_fn()`
changes or the frame shape changes) warms the step up on a side stream and captures it; every
other call is: host frame -> pinned buffer -> async upload -> graph replay -> async download ->
one event wait. `submit()` + `FrameHandle.result()` let a caller overlap the next frame's host
work with this frame's GPU work (two host buffers in rotation).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Hashable

import numpy as np
import torch

log = logging.getLogger(__name__)

StepFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class _Slot:
    host_in: torch.Tensor
    host_out: torch.Tensor
    uploaded: torch.cuda.Event
    done: torch.cuda.Event
    busy: bool = False


@dataclass
class _Lane:
    """One captured copy of the step with its own buffers and memory pool; with several lanes
    each replays on its own CUDA stream, so frames in flight run on the GPU at the same time."""

    graph: torch.cuda.CUDAGraph
    static_in: torch.Tensor
    static_out: torch.Tensor
    stream: torch.cuda.Stream | None  # None: the caller's current stream (the one-lane case)


class FrameHandle:
    """A frame in flight; `result()` waits for it (the one synchronize the sink needs)."""

    def __init__(self, slot: _Slot) -> None:
        self._slot = slot

    def done(self) -> bool:
        """True once the output is in host memory (never waits)."""
        return self._slot.done.query()

    def result(self) -> torch.Tensor:
        """The output frame in pinned host memory; valid until this slot is reused (`slots` submits later)."""
        self._slot.done.synchronize()
        self._slot.busy = False
        return self._slot.host_out


class _Done(FrameHandle):
    """An already finished frame (the uncaptured fallback path)."""

    def __init__(self, out: torch.Tensor) -> None:
        self._out = out

    def done(self) -> bool:
        return True

    def result(self) -> torch.Tensor:
        return self._out


class GraphedStep:
    """`lanes` > 1 keeps that many frames on the GPU at once, each in its own graph on its own
    stream: small batch-1 kernels leave most of the GPU idle, so throughput grows while each
    frame's latency grows less. Only for steps that read no state an earlier frame wrote:
    `stateless_fn()` is asked at every capture, and when it says no the step runs in one lane."""

    def __init__(
        self,
        step_fn: StepFn,
        shape_key_fn: Callable[[], Hashable] | None = None,
        *,
        device: torch.device | str = "cuda",
        warmup: int = 2,
        slots: int = 2,
        lanes: int = 1,
        stateless_fn: Callable[[], bool] | None = None,
        state_fn: Callable[[], list[torch.Tensor]] | None = None,
    ) -> None:
        if lanes < 1:
            raise ValueError(f"lanes must be at least 1, got {lanes}")
        self.step_fn = step_fn
        self.shape_key_fn = shape_key_fn or (lambda: None)
        self.device = torch.device(device)
        self.warmup = warmup
        self.lanes = lanes
        self.n_slots = max(slots, lanes)
        self.stateless_fn = stateless_fn or (lambda: False)
        self.state_fn = state_fn  # the step's persistent state: restored after warm-up, so capture has no side effect
        self.captures = 0
        self.capture_error: str | None = None  # set when capture failed: frames then run uncaptured
        self._failed_key: Hashable = None
        self._key: Hashable = object()
        self._lanes: list[_Lane] = []
        self._slots: list[_Slot] = []
        self._next = 0

    @property
    def active_lanes(self) -> int:
        """Frames that can run on the GPU at once with the current capture (0 before the first)."""
        return len(self._lanes)

    # -- capture ---------------------------------------------------------------------------
    def _needs_capture(self, shape: tuple[int, ...]) -> bool:
        return not self._lanes or self._key != (self.shape_key_fn(), shape)

    def _capture(self, first: torch.Tensor, n_lanes: int) -> None:
        """Warm up on a side stream (allocations, autotuning, lazy state), then capture each lane."""
        torch.cuda.synchronize(self.device)
        self._lanes = []
        self.static_in = static_in = torch.empty(first.shape, dtype=torch.uint8, device=self.device)
        static_in.copy_(first)
        state = self.state_fn() if self.state_fn else []
        saved = [t.clone() for t in state]
        # one lane: warm up on a side stream, capture on torch's capture stream, replay on the
        # caller's; several: each lane is warmed up, captured and replayed on a stream of its own
        streams = [torch.cuda.Stream(self.device) for _ in range(n_lanes)] if n_lanes > 1 else [None]
        current = torch.cuda.current_stream(self.device)
        try:
            for stream in streams:
                side = stream or torch.cuda.Stream(self.device)
                side.wait_stream(current)
                with torch.cuda.stream(side):
                    for _ in range(self.warmup):
                        self.step_fn(static_in)
                current.wait_stream(side)
            torch.cuda.synchronize(self.device)
            lanes = [self._capture_lane(static_in if i == 0 else static_in.clone(), stream)
                     for i, stream in enumerate(streams)]
        finally:  # warm-up steps must not count as frames, whether or not the capture worked
            with torch.inference_mode():  # also allows in-place writes to inference-mode state tensors
                for tensor, value in zip(state, saved):
                    tensor.copy_(value)
        self._lanes = lanes
        self.static_out = lanes[0].static_out
        self._key = (self.shape_key_fn(), tuple(first.shape))
        self._slots = [self._new_slot(first.shape, self.static_out.shape) for _ in range(self.n_slots)]
        self._next = 0
        self.captures += 1

    def _capture_lane(self, static_in: torch.Tensor, stream: torch.cuda.Stream | None) -> _Lane:
        """A private memory pool per lane, and each lane captured on its own stream: PyTorch keys
        library workspaces (cuBLAS) by stream, so lanes replayed at once never share one."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            static_out = self.step_fn(static_in)
        return _Lane(graph, static_in, static_out, stream)

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
        """Capture (with fewer lanes if that fails: each lane holds its own memory); on failure
        remember why, and run the step uncaptured until the shape key or frame shape changes."""
        key = (self.shape_key_fn(), tuple(first.shape))
        if self.device.type != "cuda":
            self._fail(key, "no CUDA device: the step runs uncaptured")
            return False
        wanted = self.lanes if self.lanes > 1 and self.stateless_fn() else 1
        for n_lanes in dict.fromkeys((wanted, 1)):
            try:
                self._capture(first, n_lanes)
                self.capture_error = None
                return True
            except Exception as exc:  # noqa: BLE001 - a step that cannot be captured still runs eagerly
                self._lanes = []
                torch.cuda.synchronize(self.device)
                reason = f"{type(exc).__name__}: {str(exc)[:200]}"
                if n_lanes > 1:
                    log.warning("capturing %d frames in flight failed (%s); trying one", n_lanes, reason)
        self._fail(key, reason)
        return False

    def _fail(self, key: Hashable, reason: str) -> None:
        if self.device.type == "cuda":
            log.warning("CUDA graph capture failed, the step runs uncaptured: %s", reason)
        self.capture_error, self._failed_key = reason, key

    def _uncaptured(self, shape: tuple[int, ...]) -> bool:
        """The capture failed for this very shape key and frame shape (a new one is tried again)."""
        return self.capture_error is not None and self._failed_key == (self.shape_key_fn(), shape)

    def run_device(self, frames: torch.Tensor) -> torch.Tensor:
        """Device frames in, device frames out (the returned tensor is the graph's static output)."""
        if self._uncaptured(tuple(frames.shape)):
            return self.step_fn(frames)
        if self._needs_capture(tuple(frames.shape)):
            if not self._try_capture(frames.to(self.device)):
                return self.step_fn(frames)
        else:
            self.fence()
            self.static_in.copy_(frames, non_blocking=True)
        self._lanes[0].graph.replay()
        return self.static_out

    def submit(self, frames: np.ndarray | torch.Tensor) -> FrameHandle:
        """Host uint8 frames (fbs,H,W,3) in; the output arrives in a pinned host buffer.

        Results come back in submit order as long as callers collect handles in that order."""
        if not self._captured_for(tuple(frames.shape), lambda: torch.as_tensor(frames).to(self.device)):
            return _Done(self.step_fn(torch.as_tensor(frames).to(self.device)).cpu())
        slot, lane = self._next_slot()
        slot.uploaded.synchronize()  # the previous upload from this host buffer has finished
        _host_copy(slot.host_in, frames)
        return self._launch(slot, lane, slot.host_in)

    def submit_device(self, frames: torch.Tensor) -> FrameHandle:
        """Like `submit` for frames already on the GPU (written on the caller's current stream)."""
        if not self._captured_for(tuple(frames.shape), lambda: frames):
            return _Done(self.step_fn(frames).cpu())
        slot, lane = self._next_slot()
        if lane.stream is not None:
            frames.record_stream(lane.stream)  # its memory must outlive the copy on the lane's stream
        return self._launch(slot, lane, frames)

    def _captured_for(self, shape: tuple[int, ...], on_device: Callable[[], torch.Tensor]) -> bool:
        """Capture for this shape if needed (from `on_device()`); False: run this frame uncaptured."""
        if not self._uncaptured(shape) and self._needs_capture(shape):
            self._try_capture(on_device())
        return not self._uncaptured(shape)

    def _next_slot(self) -> tuple[_Slot, _Lane]:
        index = self._next
        self._next = (index + 1) % len(self._slots)
        slot = self._slots[index]
        if slot.busy:  # the caller never collected it: wait so its buffers can be reused
            slot.done.synchronize()
        return slot, self._lanes[index % len(self._lanes)]

    def _launch(self, slot: _Slot, lane: _Lane, source: torch.Tensor) -> FrameHandle:
        """Upload, replay, download on the lane's stream; one event marks the frame done."""
        current = torch.cuda.current_stream(self.device)
        stream = lane.stream or current
        if lane.stream is not None:
            lane.stream.wait_stream(current)  # state written before this frame (prompt, settings) is seen
        with torch.cuda.stream(stream):
            lane.static_in.copy_(source, non_blocking=True)
            slot.uploaded.record(stream)
            lane.graph.replay()
            slot.host_out.copy_(lane.static_out, non_blocking=True)
            slot.done.record(stream)
        slot.busy = True
        return FrameHandle(slot)

    def fence(self) -> None:
        """Order the caller's next GPU work (e.g. a state write) after every frame in flight,
        without waiting on the host."""
        current = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        for lane in self._lanes:
            if lane.stream is not None and current is not None:
                current.wait_stream(lane.stream)

    def __call__(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self.submit(frames).result()

    def host_in_pinned(self) -> bool:
        return bool(self._slots) and all(s.host_in.is_pinned() and s.host_out.is_pinned() for s in self._slots)


def _host_copy(dst: torch.Tensor, src: Any) -> None:
    if isinstance(src, np.ndarray):
        np.copyto(dst.numpy(), src, casting="no")
    else:
        dst.copy_(src)
