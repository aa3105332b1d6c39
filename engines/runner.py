"""Run a stream's whole per-frame step as one CUDA graph.

`attach_graph(stream)` keeps the core's per-frame logic (`stream(frame)`: similarity filter,
warm-up, prompt transitions) and routes its `step_tensor` through a `GraphedStep`, recaptured
whenever `stream.shape_key` changes. `host_pipeline(stream)` is the shortest host-to-host path
(pinned buffers, async copies, one wait per frame) for callers that feed frames already at the
stream's size and drive warm-up themselves.
"""

from __future__ import annotations

from typing import Any

import torch

from .config import EngineConfig
from .graphed import GraphedStep


def _step_fn(stream: Any, config: EngineConfig | None):
    step = stream.step_tensor
    if config is not None and config.compile_scope == "step":
        from .compiled import compile_fn

        step = compile_fn(step, config.compile_mode)
    return step


def stream_state(stream: Any) -> list[torch.Tensor]:
    """The stream's persistent tensors (its state lives in tensor attributes, updated in place)."""
    return [v for v in vars(stream).values() if isinstance(v, torch.Tensor)]


def attach_graph(stream: Any, config: EngineConfig | None = None) -> GraphedStep | None:
    """Make `stream.step_tensor` replay one CUDA graph (no-op off CUDA). Returns the GraphedStep."""
    device = torch.device(stream.device)
    if device.type != "cuda":
        return None
    graphed = GraphedStep(_step_fn(stream, config), lambda: stream.shape_key, device=device,
                          state_fn=lambda: stream_state(stream))
    blank: dict[tuple, torch.Tensor] = {}

    def step_tensor(x_uint8: torch.Tensor | None) -> torch.Tensor:
        if x_uint8 is None:  # txt2img: the input is ignored, the graph still needs a fixed buffer
            c = stream.config
            shape = (stream.fbs, c.height, c.width, 3)
            x_uint8 = blank.setdefault(shape, torch.zeros(shape, dtype=torch.uint8, device=device))
        return graphed.run_device(x_uint8).clone()  # the graph's output buffer is reused next frame

    stream.step_tensor = step_tensor
    return graphed


def host_pipeline(stream: Any, config: EngineConfig | None = None, *, lanes: int = 1) -> GraphedStep:
    """uint8 host frames (fbs,H,W,3) in, pinned uint8 host frames out, through one graph per frame.

    Primes the stream on the first frame (fills the in-flight buffer) before capturing. With
    `lanes` > 1 and a stateless (1-step) stream, that many frames run on the GPU at once
    (`submit` them before collecting results); a multi-step stream runs in one lane.
    """
    step = _step_fn(stream, config)
    primed: dict[str, Any] = {"key": None}

    def prime_then_step(x: torch.Tensor) -> torch.Tensor:
        if primed["key"] != stream.shape_key:  # runs in the warm-up before a capture, never inside it
            stream.prime(x)
            primed["key"] = stream.shape_key
        return step(x)

    def state() -> list[torch.Tensor]:
        if primed["key"] != stream.shape_key:  # prime first, so the snapshot holds the primed state
            stream.prime(graphed.static_in)
            primed["key"] = stream.shape_key
        return stream_state(stream)

    graphed = GraphedStep(prime_then_step, lambda: stream.shape_key, device=stream.device, state_fn=state,
                          lanes=lanes, stateless_fn=lambda: stream.stateless)
    return graphed
