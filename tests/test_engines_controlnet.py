"""ControlNets through the engines on the CPU: the engine's ControlNet call, the driver's fenced
ControlNet methods, and the bookkeeping of graphs kept per shape key (the CUDA side is
tests/test_controlnet_gpu.py)."""

from __future__ import annotations

import numpy as np
import pytest

from dreamcam.core.config import StreamConfig
from dreamcam.core.controlnet import ControlNetStack, ControlNetUnit, load_controlnet
from dreamcam.core.loading import ModelSpec, load_components
from dreamcam.core.modules import EagerControlNet
from dreamcam.core.preprocess import Canny, SoftEdge
from dreamcam.core.stream import StreamDiffusion
from dreamcam.core.tiny import make_tiny_controlnet
from dreamcam.engines.config import EngineConfig, Geometry
from dreamcam.engines.driver import StreamDriver
from dreamcam.engines.eager import make_eager
from dreamcam.engines.graphed import KeptCaptures

from core_helpers import square_frames


@pytest.fixture(scope="module")
def comps(tiny_model_dir):
    return load_components(ModelSpec(str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd")))


@pytest.fixture(scope="module")
def nets(comps, tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("engine-cn")
    return [load_controlnet(str(make_tiny_controlnet(tiny_model_dir, root / f"n{i}", seed=i)), comps,
                            local_files_only=True) for i in (1, 2)]


def _cfg(**kw) -> StreamConfig:
    return StreamConfig(**{**dict(width=64, height=64, t_index_list=(30,), cfg_type="none", seed=2, prompt="a fox"),
                           **kw})


def _frames(n: int) -> list[np.ndarray]:
    return square_frames(n, seed=4)


def _stack(nets, scales=(0.8, 0.6)) -> ControlNetStack:
    return ControlNetStack([ControlNetUnit("canny", nets[0], Canny(50, 120), scales[0]),
                            ControlNetUnit("soft", nets[1], SoftEdge(), scales[1])])


def test_kept_captures_drop_the_least_recently_used():
    kept: KeptCaptures[str] = KeptCaptures(2)
    assert kept.put("a", "A") == [] and kept.put("b", "B") == []
    assert kept.put("c", "C") == ["A"]  # over the limit: the oldest goes
    assert kept.take("b") == "B" and "b" not in kept and kept.take("zz") is None
    assert kept.put("d", "D") == [] and kept.put("c", "C2") == [] and kept.values() == ["D", "C2"]
    assert kept.clear() == ["D", "C2"] and len(kept) == 0
    assert KeptCaptures(0).put("a", "A") == ["A"]  # keep=1: only the current capture


def test_the_eager_engine_runs_the_controlnets_like_the_core(comps, nets):
    frames = _frames(3)
    core = StreamDiffusion(comps, _cfg())
    core.set_controlnets(_stack(nets))
    want = [core(f) for f in frames]
    modules = make_eager(comps, EngineConfig(geometry=Geometry(64, 64)))
    stream = StreamDiffusion(comps, _cfg(), modules=modules)
    stack = _stack(nets)
    stream.set_controlnets(stack)
    calls = [u.call for u in stack.units]
    stack.use_engine(modules.controlnet)  # once per engine: the same calls (a compiled net is not recompiled)
    assert [u.call for u in stack.units] == calls
    for f, w in zip(frames, want):
        np.testing.assert_array_equal(stream(f), w)
    stack.use_engine(None)
    assert isinstance(stack.units[0].call, EagerControlNet)


def test_the_compiled_engine_runs_the_controlnets_beside_its_compiled_unet_halves(comps, nets, tmp_path):
    """On the CPU (Inductor's C++ kernels): the compiled engine gives the ControlNet stream the UNet
    in two compiled halves, and its frames are the eager engine's (to compiled rounding)."""
    from dreamcam.engines.compiled import CompiledHalves
    from dreamcam.engines.factory import create_engine

    engine = create_engine("compiled", comps, EngineConfig(geometry=Geometry(64, 64), cache_dir=tmp_path))
    assert isinstance(engine.modules.unet_halves, CompiledHalves)
    frames = _frames(2)
    eager = StreamDiffusion(comps, _cfg(), modules=make_eager(comps, EngineConfig(geometry=Geometry(64, 64))))
    eager.set_controlnets(_stack(nets))
    want = [eager(f) for f in frames]
    stream = StreamDiffusion(comps, _cfg(), modules=engine.modules)
    stream.set_controlnets(_stack(nets))
    for f, w in zip(frames, want):
        diff = np.abs(stream(f).astype(np.int16) - w.astype(np.int16))
        assert diff.mean() < 1.0, float(diff.mean())


def test_driver_controlnet_methods_scale_live_without_a_new_key(comps, nets):
    frames = _frames(4)
    driver = StreamDriver(StreamDiffusion(comps, _cfg()), lanes=2)
    plain = driver(frames[0])
    driver.set_controlnets(_stack(nets, (0.0, 0.0)))
    key = driver.stream.shape_key
    np.testing.assert_array_equal(driver(frames[0]), plain)  # both at 0: the plain step, same key
    driver.set_controlnet_scales({"canny": 0.8})
    on = driver.stream.shape_key
    assert on != key
    got = driver(frames[1])
    driver.set_controlnet_scales({"canny": 0.4})
    assert driver.stream.shape_key == on
    ref = StreamDiffusion(comps, _cfg())
    ref.set_controlnets(_stack(nets, (0.8, 0.0)))
    np.testing.assert_array_equal(got, ref(frames[1]))
    half = driver(frames[1])
    assert np.abs(half.astype(int) - got.astype(int)).mean() > 0  # the new scale shows in the next frame
    driver.set_controlnet_scales({"canny": 0.0})
    assert driver.stream.shape_key == key  # back to the plain structure: a kept graph would replay


def test_driver_takes_the_external_image(comps, nets):
    from dreamcam.core.preprocess import External

    driver = StreamDriver(StreamDiffusion(comps, _cfg()))
    driver.set_controlnets(ControlNetStack([ControlNetUnit("ext", nets[0], External(), 1.0)]))
    black = driver(_frames(1)[0])
    driver.set_control_image("ext", _frames(2)[1])
    assert np.abs(driver(_frames(1)[0]).astype(int) - black.astype(int)).mean() > 0


def test_tensorrt_unet_call_runs_the_residual_engine_only_with_residuals(comps, nets):
    """engines.tensorrt.UNetEngines (no TensorRT here: the two engines are the eager UNet behind
    counters): plain calls go to the plain engine; the first ControlNet builds the one with the
    residual inputs, which then gets every call that passes residuals."""
    import torch

    from dreamcam.core.modules import EagerUNet
    from dreamcam.engines.tensorrt import UNetEngines

    calls: list[str] = []

    def engine(name: str):
        unet = EagerUNet(comps.unet)

        def call(*args, **named):
            calls.append(name)
            return unet(*args, **named)

        return call

    builds: list[int] = []
    unets = UNetEngines(engine("plain"), lambda: builds.append(1) or engine("controlled"))
    sample, t, text = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 77, 1024)
    residuals = dict(zip(_residual_names(nets[0]), EagerControlNet(nets[0])(sample, t, text, torch.rand(1, 3, 64, 64))))
    with torch.no_grad():
        unets(sample, t, text)
        with pytest.raises(RuntimeError, match="set_controlnets"):
            unets(sample, t, text, **residuals)
        unets.ensure_controlled()
        unets.ensure_controlled()
        unets(sample, t, text, **residuals)
        unets(sample, t, text)
    assert calls == ["plain", "controlled", "plain"] and builds == [1]


def _residual_names(net) -> tuple[str, ...]:
    from dreamcam.core.controlnet import residual_shapes

    return tuple(residual_shapes(net.config, 8, 8))


def test_a_net_set_again_keeps_its_engine_call(comps, nets):
    """A new stack with a net the engine has seen reuses its call (the compiled engine: no recompile)."""
    modules = make_eager(comps, EngineConfig(geometry=Geometry(64, 64)))
    first, second = _stack(nets), _stack(nets)
    first.use_engine(modules.controlnet)
    second.use_engine(modules.controlnet)
    assert [u.call for u in first.units] == [u.call for u in second.units]


def test_an_update_that_reallocates_drops_the_kept_graphs(comps):
    """Kept graphs read the state tensors of their allocation; after a reallocating update none can
    replay again, so the driver releases them (their memory) at once."""
    from dreamcam.engines.graphed import _Capture

    driver = StreamDriver(StreamDiffusion(comps, _cfg()))
    kept = driver.graphed._kept  # no CUDA here: an empty capture stands in for a kept one
    kept.put("old", _Capture([], []))
    driver.update(guidance_scale=2.0)  # same allocation: kept
    assert len(kept) == 1
    driver.update(t_index_list=(20, 35))  # reallocated
    assert len(kept) == 0
