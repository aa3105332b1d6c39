"""A live change that needs new compiled shapes keeps the frames coming: the eager modules serve
them while the new shapes compile on another thread (engines/background.py). The only stand-in is
the compiler itself (torch.compile would take minutes on this CPU): a "compile" that holds its
first call of each new signature until the test lets it go."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from dreamcam.core.config import StreamConfig
from dreamcam.core.loading import ModelSpec, load_components
from dreamcam.core.modules import StepModules, eager_modules
from dreamcam.core.stream import StreamDiffusion
from dreamcam.engines import background
from dreamcam.engines.background import LiveCompiled, live_modules, signature
from dreamcam.engines.driver import StreamDriver


class SlowCompile:
    """Like a torch.compile'd module: the first call of a signature "compiles" (here: waits until
    `gate` opens, once `held` is set), later calls run the module. Records which thread ran it."""

    def __init__(self, fn, gate: threading.Event, held: threading.Event) -> None:
        self.fn, self.gate, self.held = fn, gate, held
        self.compiled: set = set()
        self.calls: list[tuple[str, object]] = []  # (thread name, signature)

    def __call__(self, *args, **named):
        sig = signature(args, named)
        self.calls.append((threading.current_thread().name, sig))
        if sig not in self.compiled:
            if self.held.is_set():
                assert self.gate.wait(timeout=120), "the test never opened the gate"
            self.compiled.add(sig)
        return self.fn(*args, **named)


@pytest.fixture()
def components(tiny_model_dir):
    return load_components(ModelSpec(str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd")))


def _frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(n)]


def _config() -> StreamConfig:
    return StreamConfig(width=64, height=64, t_index_list=(30,), cfg_type="none", seed=2, prompt="a cat",
                        guidance_scale=1.5)


def _wait_for_background(limit_s: float = 120) -> None:
    end = time.monotonic() + limit_s
    while background.compiling() and time.monotonic() < end:
        time.sleep(0.01)
    assert not background.compiling()


def _held_stream(components, tiny_model_dir):
    """(gate, held, the held "compiles", a driver over live modules with them, a plain stream to compare)."""
    gate, held = threading.Event(), threading.Event()
    eager = eager_modules(components)
    slow = StepModules(*(SlowCompile(fn, gate, held) for fn in (eager.unet, eager.encode, eager.decode)))
    driver = StreamDriver(StreamDiffusion(components, _config(), modules=live_modules(slow, eager)))
    plain = StreamDiffusion(load_components(ModelSpec(str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd"))),
                            _config())
    return gate, held, slow, driver, plain


def test_frames_keep_coming_while_a_live_change_compiles_and_then_the_compiled_module_serves(components, tiny_model_dir):
    gate, held, slow, driver, plain = _held_stream(components, tiny_model_dir)
    frames = _frames(9)
    for f in frames[:2]:  # the start: the first signature compiles in the frame thread
        np.testing.assert_array_equal(driver(f), plain(f))
    assert {name for name, _ in slow.unet.calls} == {threading.current_thread().name}

    held.set()  # from now on a new signature "compiles" until the gate opens
    driver.update(cfg_type="full")  # UNet batch 1 -> 2: a new signature for the UNet only
    plain.update(cfg_type="full")
    unet_calls = len(slow.unet.calls)
    for f in frames[2:6]:  # the compile is held: these frames would never come if it ran here
        np.testing.assert_array_equal(driver(f), plain(f))  # the eager UNet served them
    assert background.compiling()
    new_calls = slow.unet.calls[unet_calls:]
    assert [name for name, _ in new_calls] == ["compile-UNet"]  # only the background thread met the new shape
    assert all(name == threading.current_thread().name for name, _ in slow.decode.calls)  # decode: compiled as before

    gate.set()
    _wait_for_background()
    for f in frames[6:]:
        np.testing.assert_array_equal(driver(f), plain(f))
    served = slow.unet.calls[unet_calls + 1:]
    assert len(served) == 3 and all(name == threading.current_thread().name for name, _ in served)
    assert served[0][1] == new_calls[0][1]  # the same signature the background compiled


def test_a_live_size_change_compiles_the_new_size_in_the_background_while_the_frames_keep_coming(components,
                                                                                                 tiny_model_dir):
    """A new diffusion size is a new signature for all three modules: each compiles on a thread of its
    own, one after the other, while the eager twins serve frames of the new size (the plain stream's),
    then the compiled serve."""
    gate, held, slow, driver, plain = _held_stream(components, tiny_model_dir)
    frames = _frames(8)
    for f in frames[:2]:
        np.testing.assert_array_equal(driver(f), plain(f))
    parts = {"UNet": slow.unet, "image encoder": slow.encode, "image decoder": slow.decode}
    held.set()
    driver.update(width=96, height=48)
    plain.update(width=96, height=48)
    before = {name: len(part.calls) for name, part in parts.items()}
    for f in frames[2:5]:  # held compiles: these frames would never come if any ran on this thread
        out = driver(f)
        assert out.shape == (48, 96, 3)
        np.testing.assert_array_equal(out, plain(f))
    assert background.compiling()
    started = [name for name, part in parts.items() if len(part.calls) > before[name]]
    assert len(started) == 1, started  # one compile at a time (Dynamo's tracing flags are process-wide)
    gate.set()
    _wait_for_background()
    for name, part in parts.items():
        assert part.calls[before[name]][0] == f"compile-{name}", name  # each compiled on its own thread
    for f in frames[5:]:
        np.testing.assert_array_equal(driver(f), plain(f))
    here = threading.current_thread().name
    for name, part in parts.items():
        served = part.calls[before[name] + 1:]
        assert len(served) == 3 and all(thread == here for thread, _ in served), name
        assert served[0][1] == part.calls[before[name]][1]  # the signature the background compiled


def test_a_failed_background_compile_leaves_the_eager_module_serving(caplog):
    eager_calls: list[int] = []

    def compiled(x):
        if x.shape[0] != 1:
            raise RuntimeError("inductor failed")
        return x + 1

    def eager(x):
        eager_calls.append(x.shape[0])
        return x + 1

    live = LiveCompiled("UNet", compiled, eager)
    assert live(torch.zeros(1)).item() == 1  # the first signature: compiled in the caller's thread
    assert live(torch.zeros(2)).tolist() == [1, 1]  # a new one: eager now, compile started
    _wait_for_background()
    assert live(torch.zeros(2)).tolist() == [1, 1] and eager_calls == [2, 2]  # still eager, not retried
    assert "inductor failed" in caplog.text


def test_a_compile_asked_for_inside_held_starts_only_when_the_block_ends():
    # the graph driver captures the eager stand-ins inside `held()`: a compile thread touching the
    # device during that capture would invalidate it (a device synchronisation from any thread does)
    ran = threading.Event()
    live = LiveCompiled("UNet", lambda x: ran.set() or x + 1, lambda x: x + 1, on_event=lambda text: None,
                        compile_first=False)
    with background.held():
        with background.held():  # nested: the outermost block decides
            assert live(torch.zeros(2)).tolist() == [1, 1]  # the eager stand-in answers at once
        assert background.compiling()  # asked for, waiting: the driver treats it as running
        time.sleep(0.3)
        assert not ran.is_set()
    assert ran.wait(30)
    _wait_for_background()


def test_the_status_says_while_new_shapes_compile_and_a_failure_still_wins():
    from dreamcam.engines.graphed import WAITING, GraphStatus

    assert GraphStatus(applies=True, waiting=True).message == WAITING
    assert GraphStatus(applies=True, error="boom", waiting=True).message.startswith("the stream runs without a CUDA graph")
    assert GraphStatus(applies=False, waiting=True).message == ""  # off CUDA there is no graph to wait for
    assert GraphStatus(applies=True).message == ""


def test_while_a_background_compile_runs_even_compiled_signatures_are_served_eagerly():
    # on the H200 a compiled call on the frame thread during another thread's compile raised (Dynamo's
    # and FX's tracing flags are process-wide): no compiled call may run while one is in progress
    calls: list[str] = []
    live = LiveCompiled("UNet", lambda x: calls.append("compiled") or x, lambda x: calls.append("eager") or x,
                        on_event=lambda text: None)
    x = torch.zeros(2)
    live(x)  # the first signature compiles in the caller's thread: now ready
    background._started()
    try:
        live(x)
    finally:
        background._finished()
    live(x)
    assert calls == ["compiled", "eager", "compiled"]


def test_the_compiled_engine_compiles_new_shapes_in_the_background_unless_told_not_to(components, tmp_path):
    """By default a shape the engine has not compiled is answered at once (by the eager twin) while a
    thread compiles it; a compiled shape in another memory layout is no new shape (the compiled graphs
    take one layout: the probe's compile serves the stream's channels_last latents); with
    `background_compile=False` the caller's thread compiles a new shape."""
    from dreamcam.engines.compiled import make_compiled
    from dreamcam.engines.config import EngineConfig, Geometry

    latents = torch.randn(1, 4, 8, 8)
    for on in (True, False):
        decode = make_compiled(components, EngineConfig(geometry=Geometry(64, 64), cache_dir=tmp_path,
                                                        background_compile=on)).decode
        decode(latents)  # the first shape compiles on this thread (the engine's probe at start)
        decode(latents.contiguous(memory_format=torch.channels_last))
        assert not background.compiling()
        decode(torch.randn(2, 4, 8, 8))
        assert background.compiling() is on
        assert background.wait_idle(600)


def test_a_controlnet_attached_live_compiles_in_the_background_with_the_unet_halves(components, tiny_model_dir,
                                                                                    tmp_path):
    """A net attached to a running stream meets no compiled code yet: it and the UNet's two halves
    beside it (their first calls ever) compile on other threads, the frames keep coming from the
    eager net and halves, equal to a plain stream with the same net; then the compiled ones serve."""
    from dreamcam.core.controlnet import ControlNetStack, ControlNetUnit, load_controlnet
    from dreamcam.core.modules import EagerControlNet
    from dreamcam.core.preprocess import Canny
    from dreamcam.core.tiny import make_tiny_controlnet
    from dreamcam.core.unet_halves import EagerUNetHalves

    gate, held = threading.Event(), threading.Event()
    eager = eager_modules(components)
    slow_halves = EagerUNetHalves.of(components.unet)
    slow_halves.down, slow_halves.up = (SlowCompile(f, gate, held) for f in (slow_halves.down, slow_halves.up))
    nets: list[SlowCompile] = []

    def slow_net(net):
        nets.append(SlowCompile(EagerControlNet(net), gate, held))
        return nets[-1]

    slow = StepModules(*(SlowCompile(fn, gate, held) for fn in (eager.unet, eager.encode, eager.decode)),
                       controlnet=slow_net, unet_halves=slow_halves)
    driver = StreamDriver(StreamDiffusion(components, _config(), modules=live_modules(slow, eager)))
    plain = StreamDiffusion(load_components(ModelSpec(str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd"))),
                            _config())
    frames = _frames(8)
    driver(frames[0]), plain(frames[0])  # the start
    net = load_controlnet(str(make_tiny_controlnet(tiny_model_dir, tmp_path / "net", seed=1)), components,
                          local_files_only=True)
    held.set()
    driver.set_controlnets(ControlNetStack([ControlNetUnit("canny", net, Canny(50, 120), 0.8)]))
    plain.set_controlnets(ControlNetStack([ControlNetUnit("canny", net, Canny(50, 120), 0.8)]))
    for f in frames[1:4]:  # held compiles: these frames would never come if any ran on this thread
        np.testing.assert_array_equal(driver(f), plain(f))
    assert background.compiling()
    here = threading.current_thread().name
    parts = (nets[0], slow_halves.down, slow_halves.up)
    assert sum(bool(compiled.calls) for compiled in parts) == 1  # one compile at a time, the others queued
    assert all(name != here for compiled in parts for name, _ in compiled.calls)  # never on the frame thread

    gate.set()
    _wait_for_background()
    for compiled in parts:
        assert compiled.calls[0][0].startswith("compile-")  # each compiled on a thread of its own
    for f in frames[4:]:
        np.testing.assert_array_equal(driver(f), plain(f))
    for compiled in (nets[0], slow_halves.down, slow_halves.up):
        assert [name for name, _ in compiled.calls][-1] == here  # now the compiled ones serve the frames
