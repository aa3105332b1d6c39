"""New shapes compile in the background while the eager modules serve the frames.

A compiled module meets a new input signature (shapes, strides, dtype) when a live change (more
denoising steps, full guidance) changes the stream's batch. torch.compile would then compile on
the frame thread for many seconds: a frozen virtual camera. `LiveCompiled` instead answers that
call with the eager module and compiles the new signature on a thread of its own, on example
inputs of the same signature; later calls of that signature use the compiled code. The first
signature (the engine's probe, at start) compiles in the caller's thread as before.

Modules first used after the start (a ControlNet attached live, and the UNet's two halves that run
beside it) compile in the background from their first call (`compile_first=False`): attaching a
ControlNet never stalls the frames either.

`compiling()` is True while any such compile runs (or waits to start) in this process. The graph
driver captures the step that meets new shapes with the eager stand-ins inside `held()`: compiles
asked for in the block start when it ends, so no compile thread touches the device during the
capture (another thread's device synchronisation invalidates a capture on the same GPU). That
stand-in graph serves the frames while the compile runs; once `compiling()` is False the driver
captures the compiled step. A capture needed while a compile already runs waits for it (frames
uncaptured meanwhile).

While a compile runs, the frame thread and the compile thread share Python's GIL. Each kernel launch
of an eager frame lets the GIL go, and with Python's default 5 ms switch interval getting it back can
wait for the compiling thread's whole interval: a frame of a thousand launches could take seconds.
A compile therefore runs with a short switch interval (`switch_interval_s`, EngineConfig's
`compile_switch_interval_s`), and the process's own interval is back when the last compile ends.
"""

from __future__ import annotations

import logging
import sys
import threading
import weakref
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterator

import torch
from torch.utils import _pytree as pytree

from .contract import StepModules

log = logging.getLogger(__name__)
Call = Callable[..., torch.Tensor]

_lock = threading.Lock()
# One background compile at a time: Dynamo and FX keep their "tracing now" flags process-wide, so a
# compile starting while another thread traces fails ("FX to symbolically trace a dynamo-optimized
# function", seen on the H200 when a size change started the UNet's, encoder's and decoder's at once)
_one_compile = threading.Lock()
_running = 0  # background compiles in this process
_saved_interval: float | None = None  # the process's switch interval while compiles run with a shorter one
_holds = 0  # open `held()` blocks
_queued: list[threading.Thread] = []  # compile threads asked for inside them, started when the last ends


def compiling() -> bool:
    with _lock:
        return _running > 0


@contextmanager
def held() -> Iterator[None]:
    """Compile threads asked for inside this block start when it ends (the outermost, if nested)."""
    global _holds
    with _lock:
        _holds += 1
    try:
        yield
    finally:
        with _lock:
            _holds -= 1
            ready = _queued[:] if _holds == 0 else []
            if ready:
                _queued.clear()
        for thread in ready:
            thread.start()


def _launch(thread: threading.Thread) -> None:
    with _lock:
        if _holds:
            _queued.append(thread)
            return
    thread.start()


def wait_idle(timeout_s: float = 1800.0, poll_s: float = 0.05) -> bool:
    """Wait until no background compile runs (benchmarks: time the compiled, captured step, not the
    stand-in). True when idle."""
    import time

    end = time.monotonic() + timeout_s
    while compiling():
        if time.monotonic() > end:
            return False
        time.sleep(poll_s)
    return True


def _started(switch_interval_s: float | None = None) -> None:
    global _running, _saved_interval
    with _lock:
        _running += 1
        if switch_interval_s is not None and switch_interval_s < sys.getswitchinterval():
            if _saved_interval is None:
                _saved_interval = sys.getswitchinterval()
            sys.setswitchinterval(switch_interval_s)


def _finished() -> None:
    global _running, _saved_interval
    with _lock:
        _running -= 1
        if _running == 0 and _saved_interval is not None:
            sys.setswitchinterval(_saved_interval)
            _saved_interval = None


def _inputs(args: tuple, named: dict) -> tuple[tuple, dict]:
    return tuple(args), dict(sorted(named.items()))


def signature(args: tuple, named: dict) -> Hashable:
    """What torch.compile's guards look at here: each tensor's shape, strides, dtype and device, also
    inside tuples and named tuples (the UNet's down-half state), and the nesting itself."""
    def one(a: Any) -> Hashable:
        if isinstance(a, torch.Tensor):
            return (tuple(a.shape), a.stride(), a.dtype, a.device.type, a.device.index)
        return ("value", repr(a))
    leaves, spec = pytree.tree_flatten(_inputs(args, named))
    return str(spec), tuple(one(a) for a in leaves)


@dataclass(frozen=True)
class _Meta:
    """Shape, strides, dtype and device of a tensor, without keeping the tensor (or its memory)."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device


def _meta(a: Any) -> Any:
    return _Meta(tuple(a.shape), a.stride(), a.dtype, a.device) if isinstance(a, torch.Tensor) else a


def _example(m: Any) -> Any:
    """A tensor of the same signature, harmless values, no memory shared with the stream."""
    if not isinstance(m, _Meta):
        return m
    out = torch.empty_strided(m.shape, m.stride, dtype=m.dtype, device=m.device)
    return out.normal_() if m.dtype.is_floating_point else out.fill_(500)  # ints: timesteps


class LiveCompiled:
    """One module: `compiled` for every signature it has compiled, `eager` meanwhile. With
    `compile_first` the first signature compiles in the caller's thread (the engine's probe at start)."""

    def __init__(self, name: str, compiled: Call, eager: Call, *, on_event: Callable[[str], None] | None = None,
                 compile_first: bool = True, switch_interval_s: float | None = None) -> None:
        self.name = name
        self.switch_interval_s = switch_interval_s  # Python's thread switch interval while it compiles
        self.compiled, self.eager = compiled, eager
        self.compile_first = compile_first
        self.on_event = on_event or (lambda text: log.info("%s", text))
        self._ready: set[Hashable] = set()
        self._pending: set[Hashable] = set()
        self._failed: dict[Hashable, str] = {}
        self._guard = threading.Lock()

    def __call__(self, *args: Any, **named: Any) -> torch.Tensor:
        sig = signature(args, named)
        with self._guard:
            ready = sig in self._ready
            first = self.compile_first and not self._ready and not self._pending
        if ready and not compiling():  # no compiled call while another thread traces: Dynamo's and FX's
            return self.compiled(*args, **named)  # tracing flags are process-wide (seen on the H200)
        if ready:
            return self.eager(*args, **named)
        if first:  # the engine's probe at start: compile here (start-up shows its progress)
            out = self.compiled(*args, **named)
            with self._guard:
                self._ready.add(sig)
            return out
        self._start(sig, args, named)
        return self.eager(*args, **named)

    def _start(self, sig: Hashable, args: tuple, named: dict) -> None:
        with self._guard:
            if sig in self._pending or sig in self._failed:
                return
            self._pending.add(sig)
        tensors = [a for a in pytree.tree_leaves(tuple(args)) if isinstance(a, torch.Tensor)]
        self.on_event(f"compiling the {self.name} for new shapes {[tuple(a.shape) for a in tensors[:4]]} in the "
                      "background; the eager module serves the frames until it is ready")
        device = tensors[0].device if tensors else torch.device("cpu")
        meta = pytree.tree_map(_meta, _inputs(args, named))
        _started(self.switch_interval_s)
        _launch(threading.Thread(target=self._compile, args=(sig, meta, device), name=f"compile-{self.name}",
                                 daemon=True))

    def _compile(self, sig: Hashable, meta: tuple, device: torch.device) -> None:
        try:
            side = torch.cuda.Stream(device) if device.type == "cuda" else None
            with _one_compile, torch.no_grad(), (torch.cuda.stream(side) if side is not None else nullcontext()):
                args, named = pytree.tree_map(_example, meta)
                self.compiled(*args, **named)
                if side is not None:
                    side.synchronize()
            with self._guard:
                self._ready.add(sig)
            self.on_event(f"the {self.name} is compiled for the new shapes: the compiled module serves them now")
        except Exception as exc:  # noqa: BLE001 - the eager module keeps serving this signature
            with self._guard:
                self._failed[sig] = f"{type(exc).__name__}: {str(exc)[:200]}"
            log.warning("compiling the %s for new shapes failed (the eager module serves them): %s",
                        self.name, self._failed[sig])
        finally:
            with self._guard:
                self._pending.discard(sig)
            _finished()


class LiveHalves:
    """The UNet's two halves (core/unet_halves.py), each behind a `LiveCompiled`."""

    def __init__(self, down: LiveCompiled, up: LiveCompiled) -> None:
        self.down, self.up = down, up


def live_controlnets(compiled: Callable[[Any], Call], eager: Callable[[Any], Call],
                     on_event: Callable[[str], None] | None = None,
                     switch_interval_s: float | None = None) -> Callable[[Any], Call]:
    """The engine's ControlNet factory with each net's compiled call behind a `LiveCompiled`: a net
    attached live compiles in the background from its first call."""
    made: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # a dropped net is not kept alive

    def make(net: Any) -> Call:
        if net not in made:
            fast = compiled(net)  # first: the compiled factory retunes the net (precision, layout) for both
            made[net] = LiveCompiled("ControlNet", fast, eager(net), on_event=on_event, compile_first=False,
                                     switch_interval_s=switch_interval_s)
        return made[net]

    return make


def live_modules(compiled: StepModules, eager: StepModules, on_event: Callable[[str], None] | None = None,
                 switch_interval_s: float | None = None) -> StepModules:
    """Each compiled module behind a `LiveCompiled` with its eager twin; the ones first used after the
    start (ControlNets, the UNet halves beside them) compile in the background from their first call."""
    def live(name: str, fast: Call, slow: Call, *, at_start: bool = True) -> LiveCompiled:
        return LiveCompiled(name, fast, slow, on_event=on_event, compile_first=at_start,
                            switch_interval_s=switch_interval_s)

    halves = None
    if compiled.unet_halves is not None and eager.unet_halves is not None:
        halves = LiveHalves(live("UNet down half", compiled.unet_halves.down, eager.unet_halves.down, at_start=False),
                            live("UNet up half", compiled.unet_halves.up, eager.unet_halves.up, at_start=False))
    return StepModules(unet=live("UNet", compiled.unet, eager.unet),
                       encode=live("image encoder", compiled.encode, eager.encode),
                       decode=live("image decoder", compiled.decode, eager.decode),
                       controlnet=live_controlnets(compiled.controlnet, eager.controlnet, on_event, switch_interval_s),
                       unet_halves=halves)
