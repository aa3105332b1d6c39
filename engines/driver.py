"""The one graph driver: the core stream's per-frame logic around its step replayed as CUDA graphs.

`StreamDriver(stream, lanes)` is what the app (through plugin/processor.py) and the benchmark run:
`submit(frame) -> PendingFrame` calls `stream.prepare(frame)` (checks, similarity filter, upload,
fit, prompt transition, warm-up), runs `stream.step_tensor` through a `GraphedStep` (1 to 4 lanes;
more than one only for stateless 1-step streams), and `PendingFrame.result()` calls
`stream.finish(out, frame)` in submit order. Live updates fence the frames in flight first. Off
CUDA the same path runs the step uncaptured. The driver reads the stream only through its public
API (`step_tensor`, `step_state`, `shape_key`, `stateless`, ...) and never changes it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dreamcam.core.frames import like_input

from . import background
from .config import EngineConfig
from .graphed import FrameHandle, GraphedStep, GraphStatus

Frame = np.ndarray | torch.Tensor


class PendingFrame:
    """A submitted frame; `result()` waits for it. Collect in submit order."""

    def __init__(self, stream: Any, frame: Frame, handle: FrameHandle | None) -> None:
        self._stream, self._frame, self._handle = stream, frame, handle

    @property
    def skipped(self) -> bool:
        """The similarity filter skipped this frame: the result repeats the last output."""
        return self._handle is None

    def done(self) -> bool:
        return self._handle is None or self._handle.done()

    def result(self) -> Frame:
        if self._handle is None:
            return self._stream.repeat_last(self._frame)
        out = self._handle.result()
        if self._handle.pinned and isinstance(self._frame, np.ndarray):
            # the pinned buffer is reused a few submits later: the caller gets a numpy copy of it and the
            # stream keeps the device copy (one host copy per frame, not two)
            return self._stream.finish(self._handle.kept, self._frame, returned=like_input(out, self._frame))
        if self._handle.pinned:  # a host tensor frame: a tensor of its own
            out = out.clone()
        return self._stream.finish(out, self._frame)


def _step_fn(stream: Any, config: EngineConfig | None):
    if config is not None and config.compile_scope == "step":
        from .compiled import compile_fn

        return compile_fn(stream.step_tensor, config.compile_mode)
    return stream.step_tensor


class StreamDriver:
    """Frames in, frames out (like the stream's own `__call__`), the step in CUDA graphs."""

    def __init__(self, stream: Any, lanes: int = 1, *, config: EngineConfig | None = None) -> None:
        self.stream = stream
        # closures over the stream only (the stream never points back): no reference cycle, so a
        # dropped driver frees its graphs at once instead of in a later garbage collection
        self.graphed = GraphedStep(_step_fn(stream, config), lambda: stream.shape_key, device=stream.device,
                                   lanes=lanes, stateless_fn=lambda: stream.stateless, state_fn=stream.step_state,
                                   compiles=background)

    @property
    def lanes(self) -> int:
        """How many frames a caller should keep uncollected: the lanes of the current capture (one
        for a multi-step stream, where more would only queue), else the configured number."""
        return self.graphed.active_lanes or self.graphed.lanes

    def graph_status(self) -> GraphStatus:
        return self.graphed.status()

    @torch.no_grad()
    def submit(self, frame: Frame | None = None) -> PendingFrame:
        # prepare() rewrites inputs that frames in flight still read (prompt transition, new style image)
        if self.stream.transition_active or self.stream.ip_image_pending:
            self.graphed.fence()
        frame, x = self.stream.prepare(frame)
        if x is None:
            return PendingFrame(self.stream, frame, None)
        to_host = isinstance(frame, np.ndarray) or frame.device.type == "cpu"
        return PendingFrame(self.stream, frame, self.graphed.submit_device(x, to_host=to_host))

    def __call__(self, frame: Frame | None = None) -> Frame:
        return self.submit(frame).result()

    def update(self, **changes: Any) -> None:
        self.graphed.fence()  # no state write may land under a frame in flight
        before = self.stream.shape_key
        self.stream.update(**changes)
        if self.stream.shape_key != before:  # reallocated state: no kept graph can replay again
            self.graphed.drop_kept()

    def reset(self) -> None:
        self.graphed.fence()
        self.stream.reset()

    def fence(self) -> None:
        """Order the caller's next GPU work after the frames in flight (before the stream's models or
        conditioning change), without a host wait."""
        self.graphed.fence()

    def set_ip_adapter(self, adapter: Any) -> None:
        """Attach (or with None remove) the stream's IP-Adapter with no frame in flight (core/ip_adapter.py)."""
        self.graphed.fence()
        self.stream.set_ip_adapter(adapter)

    # ControlNets: fenced like update (no write lands under a frame in flight). A scale change is an
    # in-place write: the graph stays; a scale crossing 0 or another stack changes `shape_key`: the
    # next frame captures (or takes up the graph kept for that key: toggling back is free).
    def set_controlnets(self, stack: Any) -> None:
        self.graphed.fence()
        self.stream.set_controlnets(stack)

    def set_controlnet_scales(self, scales: dict[str, float]) -> None:
        self.graphed.fence()
        self.stream.set_controlnet_scales(scales)

    def set_control_image(self, name: str, frame: Frame) -> None:
        self.graphed.fence()
        self.stream.set_control_image(name, frame)

    def close(self) -> None:
        """Release the CUDA graphs now (a stream that is dropped should not wait for Python's GC)."""
        self.graphed.close()
