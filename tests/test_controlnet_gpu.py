"""ControlNets in the captured step (CUDA): the whole step with one and two ControlNets (canny and
depth) replays as one CUDA graph equal to the uncaptured step; a scale change shows in the next
replay without a recapture; a scale crossing 0 changes the structure (a capture, or the graph kept
for that key); the compiled engine does the same with a compiled ControlNet."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamcam.core.config import StreamConfig
from dreamcam.core.controlnet import ControlNetStack, ControlNetUnit, load_controlnet
from dreamcam.core.depth import load_depth_model
from dreamcam.core.loading import ModelSpec, load_components
from dreamcam.core.preprocess import Canny, External
from dreamcam.core.stream import StreamDiffusion
from dreamcam.core.tiny import make_tiny_controlnet, make_tiny_depth_model
from dreamcam.engines import EngineConfig, Geometry, background, create_engine
from dreamcam.engines.driver import StreamDriver

from core_helpers import square_frames
from gpu_helpers import GPU_ONLY

pytestmark = GPU_ONLY


@pytest.fixture(scope="module")
def comps(tiny_model_dir):
    return load_components(ModelSpec(str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd"), device="cuda",
                                     dtype="float16", local_files_only=True))


@pytest.fixture(scope="module")
def parts(comps, tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu-cn")
    nets = [load_controlnet(str(make_tiny_controlnet(tiny_model_dir, root / f"n{i}", seed=i)), comps,
                            local_files_only=True) for i in (1, 2)]
    depth = load_depth_model(str(make_tiny_depth_model(root / "depth")), device="cuda", dtype=torch.float16,
                             local_files_only=True)
    return nets, depth


def _cfg(**kw) -> StreamConfig:
    return StreamConfig(**{**dict(width=64, height=64, t_index_list=(30,), cfg_type="self", seed=2, prompt="a fox"),
                           **kw})


def _frames(n: int) -> list[np.ndarray]:
    return square_frames(n, seed=6)


def _stack(parts, count: int, scales=(0.8, 0.6)) -> ControlNetStack:
    nets, depth = parts
    units = [ControlNetUnit("canny", nets[0], Canny(50, 120, device="cuda"), scales[0]),
             ControlNetUnit("depth", nets[1], depth, scales[1])]
    return ControlNetStack(units[:count])


def _close(a: np.ndarray, b: np.ndarray) -> None:
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.max() <= 2 and diff.mean() < 0.1, (int(diff.max()), float(diff.mean()))


@pytest.mark.parametrize("count", [1, 2])
def test_the_step_with_controlnets_replays_as_one_graph_equal_to_eager(comps, parts, count):
    frames = _frames(4)
    eager = StreamDiffusion(comps, _cfg())
    eager.set_controlnets(_stack(parts, count))
    want = [eager(f) for f in frames]
    driver = StreamDriver(StreamDiffusion(comps, _cfg()))
    driver.set_controlnets(_stack(parts, count))
    got = [driver(f) for f in frames]
    assert driver.graph_status().error is None and driver.graphed.captures == 1
    for g, w in zip(got, want):
        _close(g, w)
    plain = StreamDiffusion(comps, _cfg())(frames[-1])
    assert np.abs(got[-1].astype(int) - plain.astype(int)).mean() > 0.2  # the nets act inside the graph


def test_scale_changes_replay_without_recapture_and_zero_switches_graphs(comps, parts):
    frames = _frames(3)
    driver = StreamDriver(StreamDiffusion(comps, _cfg()))
    driver.set_controlnets(_stack(parts, 2))
    first = driver(frames[0])
    driver.set_controlnet_scales({"canny": 0.2, "depth": 1.2})
    changed = driver(frames[0])
    assert driver.graphed.captures == 1  # in-place scale writes: the same graph
    ref = StreamDiffusion(comps, _cfg())
    ref.set_controlnets(_stack(parts, 2, (0.2, 1.2)))
    _close(changed, ref(frames[0]))
    assert np.abs(changed.astype(int) - first.astype(int)).mean() > 0.2
    driver.set_controlnet_scales({"depth": 0.0})  # structure change: depth leaves the step
    only_canny = driver(frames[1])
    assert driver.graphed.captures == 2
    ref1 = StreamDiffusion(comps, _cfg())
    ref1.set_controlnets(_stack(parts, 2, (0.2, 0.0)))
    _close(only_canny, ref1(frames[1]))
    driver.set_controlnet_scales({"depth": 0.7})  # back: the kept graph replays, no capture
    driver(frames[2])
    assert driver.graphed.captures == 2 and driver.graphed.switches == 1
    assert driver.graph_status().error is None


def test_external_control_image_changes_inside_the_graph(comps, parts):
    nets, _ = parts
    driver = StreamDriver(StreamDiffusion(comps, _cfg(mode="txt2img", strength=1.0, t_index_list=None, steps=1)))
    driver.set_controlnets(ControlNetStack([ControlNetUnit("ext", nets[0], External(), 1.0)]))
    black = driver()
    driver.set_control_image("ext", _frames(1)[0])
    lit = driver()
    assert driver.graphed.captures == 1 and np.abs(lit.astype(int) - black.astype(int)).mean() > 0.2


@pytest.mark.parametrize("background_compile", [False, True])
def test_compiled_engine_compiles_the_controlnet_and_captures_the_step(comps, parts, tmp_path, background_compile):
    """Both ways a net attached after the start compiles: in the background (the default: the nets and
    UNet halves compile on other threads while the eager ones serve) and on the frame thread."""
    config = EngineConfig(geometry=Geometry(64, 64), cache_dir=tmp_path, background_compile=background_compile)
    engine = create_engine("compiled", comps, config)
    assert engine.modules.unet_halves is not None  # the nets run beside the UNet's compiled down half
    frames = _frames(3)
    eager = StreamDiffusion(comps, _cfg())
    eager.set_controlnets(_stack(parts, 2))
    want = [eager(f) for f in frames]
    driver = StreamDriver(StreamDiffusion(comps, _cfg(), modules=engine.modules))
    driver.set_controlnets(_stack(parts, 2))
    got = [driver(f) for f in frames]
    if background_compile:  # those frames came from the eager nets and halves, in a graph; then the compiled step's
        assert driver.graphed.stand_in_captures == 1 and driver.graph_status().lanes == 1
        assert driver.graph_status().waiting
        assert background.wait_idle(600)
        got, want = [driver(f) for f in frames] + got, want * 2
    assert driver.graph_status().error is None and driver.graphed.captures == 1
    for g, w in zip(got, want):
        diff = np.abs(g.astype(np.int16) - w.astype(np.int16))
        assert diff.mean() < 1.0, float(diff.mean())  # compiled kernels round differently
    driver.set_controlnet_scales({"canny": 0.3})
    driver(frames[0])
    assert driver.graphed.captures == 1


@pytest.mark.tensorrt
def test_tensorrt_builds_a_controlnet_engine_and_the_residual_unet(comps, parts, tiny_model_dir, tmp_path):
    """Where TensorRT imports: setting a ControlNet builds its engine and the UNet with residual
    inputs (cached: a second stack of the same net loads them), and the frames follow eager's."""
    pytest.importorskip("tensorrt")
    nets, _ = parts
    config = EngineConfig(geometry=Geometry(64, 64), cache_dir=tmp_path, trt_min_side=64, trt_max_side=256)
    frames = _frames(3)
    fresh = load_components(ModelSpec(str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd"), device="cuda",
                                      dtype="float16", local_files_only=True))
    eager = StreamDiffusion(fresh, _cfg())
    eager.set_controlnets(ControlNetStack([ControlNetUnit("canny", nets[0], Canny(50, 120, device="cuda"), 0.8)]))
    want = [eager(f) for f in frames]
    engine = create_engine("tensorrt", comps, config)
    assert engine.name == "tensorrt", engine.describe()
    driver = engine.driver(StreamDiffusion(comps, _cfg(), modules=engine.modules))
    driver.set_controlnets(ControlNetStack([ControlNetUnit("canny", nets[0], Canny(50, 120, device="cuda"), 0.8)]))
    got = [driver(f) for f in frames]
    for g, w in zip(got, want):
        assert np.abs(g.astype(int) - w.astype(int)).mean() < 2.0
    parts_built = sorted(p.parent.name.split("--")[0] for p in (tmp_path / "tensorrt").glob("*/model.engine"))
    assert parts_built == ["controlnet", "unet", "unet_control", "vae_decoder", "vae_encoder"]
    stamps = [p.stat().st_mtime_ns for p in sorted((tmp_path / "tensorrt").glob("*/model.engine"))]
    driver.set_controlnets(ControlNetStack([ControlNetUnit("canny", nets[0], Canny(50, 120, device="cuda"), 0.5)]))
    driver(frames[0])
    assert [p.stat().st_mtime_ns for p in sorted((tmp_path / "tensorrt").glob("*/model.engine"))] == stamps
