"""Side CUDA streams for independent parts of the step, so that their kernels overlap on the GPU.

At one frame at a time most kernels of the step are too small to fill the GPU, so work that does
not depend on the main chain (a ControlNet's preprocessor beside the VAE encoder, a second
ControlNet beside the first) runs faster on a stream of its own. `fork` runs a block on a named side
stream after everything enqueued so far on the current stream; `join` makes the current stream
wait for it. Both are plain stream waits, so a CUDA graph captured around them keeps the overlap
(the side streams become parallel branches of the graph). Tensors that cross streams are marked
with `record_stream`, so the caching allocator never hands their memory to other work while the
other stream may still read them. Off CUDA every block simply runs in order.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch

Tensor = torch.Tensor


class SideStreams:
    """Named side streams of one device (created on first use)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._streams: dict[str, torch.cuda.Stream] = {}

    @property
    def enabled(self) -> bool:
        return self.device.type == "cuda"

    @contextmanager
    def fork(self, name: str, reads: Iterable[Tensor] = ()) -> Iterator[None]:
        """Run the block on side stream `name`, after the current stream's work so far; `reads`:
        tensors of the current stream the block reads."""
        if not self.enabled:
            yield
            return
        side = self._streams.get(name)
        if side is None:
            side = self._streams[name] = torch.cuda.Stream(self.device)
        main = torch.cuda.current_stream(self.device)
        side.wait_stream(main)
        for t in reads:
            t.record_stream(side)
        with torch.cuda.stream(side):
            yield

    def join(self, name: str, outputs: Iterable[Tensor] = ()) -> None:
        """The current stream waits for side stream `name`; `outputs`: its tensors read from now on."""
        side = self._streams.get(name)
        if not self.enabled or side is None:
            return
        main = torch.cuda.current_stream(self.device)
        main.wait_stream(side)
        for t in outputs:
            t.record_stream(main)
