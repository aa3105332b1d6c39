"""CUDA graphs of a pure per-frame step: capture (safely), replay in 1 to 4 lanes, say when it fails.

`GraphedStep(step_fn, shape_key_fn, state_fn=...)` wraps a pure, capturable `step_fn(frames_uint8)
-> uint8` (the core's `StreamDiffusion.step_tensor`). The first frame (and the first after
`shape_key_fn()` or the frame shape changes) warms the step up on a side stream, restores the
step's state (`state_fn()`) and captures it; every other frame is: copy into the lane's static
input -> graph replay -> async copy out (to pinned host memory or a device tensor) -> one event.
`engines/driver.py` is the only caller: the one graph driver of the app and the benchmark.
Captures of earlier keys are kept (`keep` in all, least recently used dropped first), so a key
that comes back (a ControlNet switched off and on again: the stream's structure key) replays its
graph at once instead of capturing again.

Capture is guarded against what broke it in the field: Python's cyclic garbage collector freeing
another CUDA graph mid-capture (CUDAGraph::reset is not permitted while a stream captures, and the
capture is then invalidated), so garbage is collected before and collection is off during a
capture; other threads' CUDA calls do not invalidate it (capture_error_mode "thread_local"). A
failed capture is retried once after a full synchronize; if it still fails the step runs
uncaptured and `status()` says so, with the one message the app shows (`uncaptured_message`).

With background compiles (`compiles`, engines/background.py), a step that meets new shapes is
captured with the eager stand-ins that serve them, inside `compiles.held()` (no compile thread
touches the device during the capture); that stand-in graph replays until `compiles.compiling()`
is False, and the next frame captures the compiled step in its place. A replay needs Python a few
times a frame, the eager step about a thousand: beside a compiling thread that is the difference
between tens of frames a second and a few.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager, Generic, Hashable, Iterator, Protocol, TypeVar

import torch

log = logging.getLogger(__name__)

StepFn = Callable[[torch.Tensor], torch.Tensor]

# self-1step-512 on an H200 ran at 30.2 fps uncaptured against about 165 fps in a graph (f5d78ae)
UNCAPTURED_SLOWDOWN = "about 5x"


def uncaptured_message(reason: str) -> str:
    """The one line every surface (status line, OBS, doctor, log) shows when capture failed."""
    return (f"the stream runs without a CUDA graph ({UNCAPTURED_SLOWDOWN} slower): capture failed: {reason}")


WAITING = ("compiling the new shapes in the background: the eager modules serve the frames (slower) until "
           "they are ready")


class Compiles(Protocol):
    """Background compiles of new shapes (the module engines/background.py is one)."""

    def compiling(self) -> bool:
        """True while a compile runs or waits to start."""

    def held(self) -> ContextManager[None]:
        """A block in which no compile starts (those asked for start when it ends)."""


class NoCompiles:
    """Nothing compiles in the background (eager steps, TensorRT, tests)."""

    @staticmethod
    def compiling() -> bool:
        return False

    @staticmethod
    def held() -> ContextManager[None]:
        return nullcontext()


@dataclass(frozen=True)
class GraphStatus:
    """Whether the step replays as CUDA graphs. `applies` is False off CUDA (nothing to capture)."""

    applies: bool
    lanes: int = 0  # lanes captured for the current shape (0: not captured yet, or failed)
    error: str | None = None  # why the capture failed (the step then runs uncaptured)
    waiting: bool = False  # new shapes compile in the background: the eager stand-ins serve until they are ready

    @property
    def message(self) -> str:
        """Empty while all is well (or off CUDA), else `uncaptured_message` (or, for a while, `WAITING`)."""
        if not self.applies:
            return ""
        if self.error:
            return uncaptured_message(self.error)
        return WAITING if self.waiting else ""


@dataclass
class _Slot:
    host_out: torch.Tensor | None  # pinned; allocated on first host use
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
    """A frame in flight; `result()` waits for it: pinned host frames (valid until this slot is
    reused, `slots` submits later) or a device tensor ordered on the caller's current stream.
    With pinned host frames, `kept` is a device copy of the same frame that stays valid (what a
    caller keeps as its last output, so that the host frame needs only one copy, the caller's)."""

    def __init__(self, slot: _Slot | None, out: torch.Tensor, lane_stream: torch.cuda.Stream | None,
                 *, pinned: bool = False, kept: torch.Tensor | None = None) -> None:
        self._slot, self._out, self._lane_stream = slot, out, lane_stream
        self.pinned = pinned  # `result()` is a reused pinned buffer: copy it before the slot comes round again
        self.kept = kept

    def done(self) -> bool:
        """True once the output is complete (never waits)."""
        return self._slot is None or self._slot.done.query()

    def result(self) -> torch.Tensor:
        slot = self._slot
        if slot is None:  # computed uncaptured, already complete in program order
            return self._out
        if self._out.device.type == "cpu":
            slot.done.synchronize()
        else:  # device output: order the caller's stream after it, no host wait
            current = torch.cuda.current_stream(self._out.device)
            current.wait_event(slot.done)
            if self._lane_stream is not None:
                self._out.record_stream(current)  # allocated on the lane's stream, used on the caller's
        slot.busy = False
        return self._out


@dataclass
class _Capture:
    lanes: list[_Lane]
    slots: list[_Slot]


V = TypeVar("V")


class KeptCaptures(Generic[V]):
    """The captures of keys other than the current one, least recently used first, at most `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = max(0, limit)
        self._items: OrderedDict[Hashable, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def values(self) -> list[V]:
        return list(self._items.values())

    def put(self, key: Hashable, value: V) -> list[V]:
        """Keep `value` for `key`; returns what no longer fits (the caller drops it)."""
        self._items.pop(key, None)
        self._items[key] = value
        dropped = []
        while len(self._items) > self.limit:
            dropped.append(self._items.popitem(last=False)[1])
        return dropped

    def take(self, key: Hashable) -> V | None:
        return self._items.pop(key, None)

    def clear(self) -> list[V]:
        values, self._items = list(self._items.values()), OrderedDict()
        return values


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Collect garbage now and not during the capture: a CUDA graph of a dropped stream freed by
    the cyclic collector mid-capture invalidates the capture (seen on the H200 at f5d78ae)."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


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
        compiles: Compiles | None = None,
        keep: int = 2,
    ) -> None:
        if not 1 <= lanes <= 4:
            raise ValueError(f"lanes must be 1 to 4, got {lanes}")
        self.step_fn = step_fn
        self.shape_key_fn = shape_key_fn or (lambda: None)
        self.device = torch.device(device)
        self.warmup = warmup
        self.lanes = lanes
        self.n_slots = max(slots, lanes)
        self.stateless_fn = stateless_fn or (lambda: False)
        self.state_fn = state_fn  # the step's persistent state: restored after warm-up, so capture has no side effect
        self.compiles: Compiles = compiles or NoCompiles()
        self.captures = 0  # of the step as it will run (compiled modules, where they compile)
        self.stand_in_captures = 0  # of the eager stand-ins, while new shapes compiled in the background
        self.failures = 0  # capture attempts that failed (each retried once)
        self.capture_error: str | None = None  # set when capture failed: frames then run uncaptured
        self.timings: dict[str, float] = {}  # the last capture: warmup_s (first calls: compiles, autotuning), capture_s
        self._waiting = False  # the current shape waits for a background compile (see `compiles`)
        self._stand_in = False  # the current graph holds eager stand-ins for modules still compiling
        self._failed_key: Hashable = None
        self._failed_reason: str | None = None  # why the capture of _failed_key failed
        self._key: Hashable = object()
        self._lanes: list[_Lane] = []
        self._slots: list[_Slot] = []
        self._next = 0
        self._kept: KeptCaptures[_Capture] = KeptCaptures(keep - 1)  # captures of other keys
        self.switches = 0  # times a kept capture was taken up again instead of capturing

    @property
    def active_lanes(self) -> int:
        """Frames that can run on the GPU at once with the current capture (0 before the first)."""
        return len(self._lanes)

    def status(self) -> GraphStatus:
        return GraphStatus(self.device.type == "cuda", len(self._lanes), self.capture_error, self._waiting)

    # -- capture ---------------------------------------------------------------------------
    def _capture(self, first: torch.Tensor, n_lanes: int) -> None:
        """Warm up on a side stream (allocations, autotuning, lazy state), then capture each lane."""
        self._stash()
        torch.cuda.synchronize(self.device)
        static_in = torch.empty(first.shape, dtype=torch.uint8, device=self.device)
        static_in.copy_(first)
        state = self.state_fn() if self.state_fn else []
        saved = [t.clone() for t in state]
        # one lane: warm up on a side stream, capture on torch's capture stream, replay on the
        # caller's; several: each lane is warmed up, captured and replayed on a stream of its own
        streams = [torch.cuda.Stream(self.device) for _ in range(n_lanes)] if n_lanes > 1 else [None]
        current = torch.cuda.current_stream(self.device)
        start = time.perf_counter()
        try:
            with self.compiles.held():  # compiles the warm-up asks for start after the capture
                for stream in streams:
                    side = stream or torch.cuda.Stream(self.device)
                    side.wait_stream(current)
                    with torch.cuda.stream(side):
                        for _ in range(self.warmup):
                            self.step_fn(static_in)
                    current.wait_stream(side)
                torch.cuda.synchronize(self.device)
                stand_in = self.compiles.compiling()  # the warm-up met new shapes: eager stand-ins serve them
                warmed = time.perf_counter()
                with _collector_paused():
                    lanes = [self._capture_lane(static_in if i == 0 else static_in.clone(), stream)
                             for i, stream in enumerate(streams)]
            self.timings = {"warmup_s": warmed - start, "capture_s": time.perf_counter() - warmed}
        finally:  # warm-up steps must not count as frames, whether or not the capture worked
            with torch.inference_mode():  # also allows in-place writes to inference-mode state tensors
                for tensor, value in zip(state, saved):
                    tensor.copy_(value)
        self._lanes, self._stand_in = lanes, stand_in
        self._key = (self.shape_key_fn(), tuple(first.shape))
        self._slots = [_Slot(None, torch.cuda.Event()) for _ in range(self.n_slots)]
        self._next = 0
        self.captures += not stand_in
        self.stand_in_captures += stand_in

    def _capture_lane(self, static_in: torch.Tensor, stream: torch.cuda.Stream | None) -> _Lane:
        """A private memory pool per lane, and each lane captured on its own stream: PyTorch keys
        library workspaces (cuBLAS) by stream, so lanes replayed at once never share one."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
            static_out = self.step_fn(static_in)
        return _Lane(graph, static_in, static_out, stream)

    def _try_capture(self, first: torch.Tensor) -> bool:
        """Capture (retried once after a full synchronize, then with one lane if several fail:
        each lane holds its own memory); on failure remember why, and run the step uncaptured
        until the shape key or frame shape changes."""
        key = (self.shape_key_fn(), tuple(first.shape))
        if self.device.type != "cuda":
            self.capture_error = self._failed_reason = "no CUDA device"
            self._failed_key = key
            return False
        wanted = self.lanes if self.lanes > 1 and self.stateless_fn() else 1
        reason = ""
        for n_lanes in dict.fromkeys((wanted, 1)):
            for attempt in (1, 2):
                try:
                    self._capture(first, n_lanes)
                    self.capture_error = None
                    return True
                except Exception as exc:  # noqa: BLE001 - a step that cannot be captured still runs eagerly
                    self.failures += 1
                    self._release()
                    _synchronize_quietly(self.device)
                    reason = f"{type(exc).__name__}: {str(exc)[:200]}"
                    log.warning("capturing %d lane(s) failed (attempt %d of 2): %s", n_lanes, attempt, reason)
                    if self.compiles.compiling():  # its compiles run now: try again once they are done
                        return False
        log.warning("%s", uncaptured_message(reason))
        self.capture_error = self._failed_reason = reason
        self._failed_key = key
        return False

    def _release(self) -> None:
        """Drop the current graphs (their memory pools go back to the allocator) outside any capture."""
        self._lanes, self._slots, self._stand_in = [], [], False

    def _stash(self) -> None:
        """Keep the current capture for its key (dropping the least recently used beyond `keep`); a
        graph of stand-ins is dropped (its frames in flight done first): the compiled one replaces it."""
        if self._lanes and self._stand_in:
            self._wait_slots(self._slots)
        elif self._lanes:
            for dropped in self._kept.put(self._key, _Capture(self._lanes, self._slots)):
                self._wait_slots(dropped.slots)
        self._release()

    def _take_up(self, key: Hashable) -> bool:
        """Replay a kept capture of `key` from now on (no capture); False when none is kept."""
        if key not in self._kept:
            return False
        kept = self._kept.take(key)
        self._stash()
        self._lanes, self._slots, self._key, self._next = kept.lanes, kept.slots, key, 0
        self.capture_error = None  # this key's graphs replay (another key's capture may have failed)
        self._waiting = False  # kept captures are of compiled steps (stand-ins are never kept)
        self.switches += 1
        return True

    @staticmethod
    def _wait_slots(slots: list[_Slot]) -> None:
        for slot in slots:  # frames still in flight in a graph about to be dropped
            if slot.busy:
                slot.done.synchronize()

    def drop_kept(self) -> None:
        """Release the kept graphs of other keys (e.g. the state they read was reallocated: they
        can never replay again), after their frames in flight."""
        for kept in self._kept.clear():
            self._wait_slots(kept.slots)

    def close(self) -> None:
        """Release the graphs now (after the frames in flight), not whenever Python frees this."""
        if (self._lanes or len(self._kept)) and self.device.type == "cuda":
            _synchronize_quietly(self.device)
        self._kept.clear()
        self._release()

    # -- per frame -------------------------------------------------------------------------
    def submit_device(self, frames: torch.Tensor, *, to_host: bool) -> FrameHandle:
        """Frames already on the device (written on the caller's current stream) in; the output
        lands in pinned host memory (`to_host`) or a device tensor. Collect handles in submit order."""
        key = (self.shape_key_fn(), tuple(frames.shape))  # once per frame: the checks below compare it
        if self._failed_reason is not None and self._failed_key == key:
            self.capture_error = self._failed_reason
            return self._run_uncaptured(frames, to_host)
        if self._stand_in and self._key == key and not self.compiles.compiling():
            self._stash()  # the compiled modules are ready: capture them in place of the stand-ins
        if (not self._lanes or self._key != key) and not self._take_up(key):
            if self.compiles.compiling():  # a compile thread runs: a capture now could be invalidated
                self._waiting = True
                return self._run_uncaptured(frames, to_host)
            captured = self._try_capture(frames)
            self._waiting = self._stand_in or (not captured and self.capture_error is None)  # put off, not failed
            if not captured:
                return self._run_uncaptured(frames, to_host)
        slot, lane = self._next_slot()
        if lane.stream is None:  # one lane: everything on the caller's stream, no stream switch
            return self._launch(slot, lane, frames, to_host, None)
        frames.record_stream(lane.stream)  # its memory must outlive the copy on the lane's stream
        lane.stream.wait_stream(torch.cuda.current_stream(self.device))  # earlier state writes are seen
        with torch.cuda.stream(lane.stream):
            return self._launch(slot, lane, frames, to_host, lane.stream)

    def _run_uncaptured(self, frames: torch.Tensor, to_host: bool) -> FrameHandle:
        out = self.step_fn(frames)
        return FrameHandle(None, out.cpu() if to_host else out.clone(), None)

    def _launch(self, slot: _Slot, lane: _Lane, frames: torch.Tensor, to_host: bool,
                stream: torch.cuda.Stream | None) -> FrameHandle:
        """Copy in, replay, copy out, mark done, on the current stream (the lane's, when it has one)."""
        lane.static_in.copy_(frames, non_blocking=True)
        lane.graph.replay()
        if to_host:
            if slot.host_out is None or slot.host_out.shape != lane.static_out.shape:
                slot.host_out = torch.empty(lane.static_out.shape, dtype=torch.uint8, pin_memory=True)
            slot.host_out.copy_(lane.static_out, non_blocking=True)
            out, kept = slot.host_out, lane.static_out.clone()  # a device copy is cheaper than a host one
        else:
            out = kept = lane.static_out.clone()  # the graph's output buffer is reused next frame
        slot.done.record()
        slot.busy = True
        return FrameHandle(slot, out, stream, pinned=to_host, kept=kept)

    def _next_slot(self) -> tuple[_Slot, _Lane]:
        index = self._next
        self._next = (index + 1) % len(self._slots)
        slot = self._slots[index]
        if slot.busy:  # the caller never collected it: wait so its buffers can be reused
            slot.done.synchronize()
        return slot, self._lanes[index % len(self._lanes)]

    def fence(self) -> None:
        """Order the caller's next GPU work (e.g. a state write) after every frame in flight,
        without waiting on the host."""
        if self.device.type != "cuda":
            return
        current = torch.cuda.current_stream(self.device)
        for lane in self._lanes + [lane for kept in self._kept.values() for lane in kept.lanes]:
            if lane.stream is not None:
                current.wait_stream(lane.stream)


def _synchronize_quietly(device: torch.device) -> None:
    try:
        torch.cuda.synchronize(device)
    except Exception:  # noqa: BLE001 - the error that matters was already raised by the capture
        log.debug("synchronize after a failed capture raised", exc_info=True)


def capture_check(device: torch.device | str = "cuda") -> str:
    """Capture and replay a tiny graph (matmul, conv, elementwise): '' when CUDA graphs work here,
    else why not (for `dreamcam doctor`)."""
    try:
        device = torch.device(device)
        weight = torch.randn(8, 3, 3, 3, device=device, dtype=torch.float16)
        x = torch.randn(1, 3, 32, 32, device=device, dtype=torch.float16)

        def step(inp: torch.Tensor) -> torch.Tensor:
            y = torch.nn.functional.conv2d(inp.half(), weight, padding=1)
            return (y.flatten(1) @ y.flatten(1).T).clamp(0, 255).to(torch.uint8)

        graphed = GraphedStep(step, device=device, warmup=1)
        want = step(x)
        got = graphed.submit_device(x, to_host=False).result()
        torch.cuda.synchronize(device)
        if graphed.capture_error:
            return graphed.capture_error
        if (got.int() - want.int()).abs().max() > 1:  # library kernels may round differently, not more
            return "a captured graph gave other values than the same step uncaptured"
        graphed.close()
        return ""
    except Exception as exc:  # noqa: BLE001 - the check reports, never raises
        return f"{type(exc).__name__}: {str(exc)[:200]}"
