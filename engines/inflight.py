"""Frames in flight for the app: the core's per-frame logic, the step in `lanes` CUDA graphs.

`InFlightStream(stream, lanes)` is a processor with the core stream's interface (`__call__`,
`update`, `config`, `frames_skipped`, ...) plus `submit(frame) -> PendingFrame`. A caller that
submits several frames before collecting them (in submit order) gets them computed concurrently
on the GPU when the stream is stateless (1 step); otherwise they run one after another, still
overlapping the host work of the next frame with the GPU work of this one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .graphed import FrameHandle, GraphedStep
from .runner import stream_state

Frame = np.ndarray | torch.Tensor


class PendingFrame:
    """A submitted frame; `result()` waits for it. Collect in submit order."""

    def __init__(self, stream: Any, frame: Frame, handle: FrameHandle | None) -> None:
        self._stream, self._frame, self._handle = stream, frame, handle

    def done(self) -> bool:
        return self._handle is None or self._handle.done()

    def result(self) -> Frame:
        if self._handle is None:  # skipped by the similarity filter
            return self._stream.repeat_last(self._frame)
        # a plain pageable copy: the pinned buffer is reused a few submits later
        out = torch.from_numpy(self._handle.result().numpy().copy())
        return self._stream.finish(out, self._frame)


class InFlightStream:
    def __init__(self, stream: Any, lanes: int = 2) -> None:
        self.stream = stream
        self.graphed = GraphedStep(stream.step_tensor, lambda: stream.shape_key, device=stream.device,
                                   lanes=lanes, stateless_fn=lambda: stream.stateless,
                                   state_fn=lambda: stream_state(stream))

    @property
    def lanes(self) -> int:
        """How many frames a caller should keep uncollected: the lanes of the current capture (one
        for a multi-step stream, where more would only queue), else the configured number."""
        return self.graphed.active_lanes or self.graphed.lanes

    @torch.no_grad()
    def submit(self, frame: Frame | None = None) -> PendingFrame:
        if self.stream.transition_active:  # prepare() rewrites embeddings frames in flight still read
            self.graphed.fence()
        frame, x = self.stream.prepare(frame)
        if x is None:
            return PendingFrame(self.stream, frame, None)
        return PendingFrame(self.stream, frame, self.graphed.submit_device(x))

    def __call__(self, frame: Frame | None = None) -> Frame:
        return self.submit(frame).result()

    def update(self, **changes: Any) -> None:
        self.graphed.fence()  # no state write may land under a frame in flight
        self.stream.update(**changes)

    def reset(self) -> None:
        self.graphed.fence()
        self.stream.reset()

    def __getattr__(self, name: str) -> Any:  # config, frames_skipped, engine_name, ... of the stream
        return getattr(self.stream, name)
