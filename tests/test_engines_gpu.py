"""GPU paths of the engines: one CUDA graph per frame, compiled modules, TensorRT engines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamcam.core.config import StreamConfig
from dreamcam.core.loading import ModelSpec, load_components
from dreamcam.core.stream import StreamDiffusion
from dreamcam.engines import EngineConfig, Geometry, create_engine
from dreamcam.engines.driver import StreamDriver

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _components(folder, dtype=torch.float16):
    return load_components(ModelSpec(str(folder), tiny_vae=str(folder / "taesd"), device="cuda", dtype=dtype))


def _frames(n: int, h: int = 64, w: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def _cfg(**kw) -> StreamConfig:
    base = dict(width=64, height=64, t_index_list=(20, 35), cfg_type="self", seed=5, prompt="a dog")
    base.update(kw)
    return StreamConfig(**base)


def _run(stream, frames) -> np.ndarray:
    return np.stack([stream(f) for f in frames])


def _close(a: np.ndarray, b: np.ndarray, max_mean: float = 1.0) -> None:
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.mean() <= max_mean, f"mean abs difference {diff.mean():.3f} (max {diff.max()})"


@pytest.mark.gpu
@needs_cuda
def test_cuda_graph_step_gives_the_frames_of_the_plain_step(tiny_model_dir):
    frames = _frames(5)
    want = _run(StreamDiffusion(_components(tiny_model_dir), _cfg()), frames)
    driver = StreamDriver(StreamDiffusion(_components(tiny_model_dir), _cfg()))
    got = _run(driver, frames)
    assert driver.graphed.capture_error is None and driver.graphed.captures == 1
    assert driver.graph_status().lanes == 1 and driver.graph_status().message == ""
    _close(got, want, 0.5)
    device = driver(torch.from_numpy(frames[0]).cuda())  # device frames in, device frames out
    assert device.is_cuda and device.shape == frames[0].shape


@pytest.mark.gpu
@needs_cuda
def test_graph_is_recaptured_when_the_shape_key_changes(tiny_model_dir):
    driver = StreamDriver(StreamDiffusion(_components(tiny_model_dir), _cfg()))
    frames = _frames(6)
    for f in frames[:2]:
        driver(f)
    driver.update(t_index_list=(10, 25, 40))  # 3 steps: new state tensors, new batch
    driver.update(guidance_scale=2.0)  # same shapes: no recapture
    outs = [driver(f) for f in frames[2:]]
    assert driver.graphed.captures == 2
    reference = StreamDiffusion(_components(tiny_model_dir), _cfg(t_index_list=(10, 25, 40), guidance_scale=2.0))
    assert outs[-1].shape == reference(frames[-1]).shape


@pytest.mark.gpu
@needs_cuda
def test_submitting_the_next_frame_before_collecting_keeps_the_frames(tiny_model_dir):
    frames = _frames(4)
    want = _run(StreamDiffusion(_components(tiny_model_dir), _cfg()), frames)
    driver = StreamDriver(StreamDiffusion(_components(tiny_model_dir), _cfg()))
    handles = [driver.submit(f) for f in frames[:2]]  # host work of frame 2 overlaps frame 1 on the GPU
    outs = [h.result() for h in handles] + [driver(f) for f in frames[2:]]
    assert driver.graphed.capture_error is None
    _close(np.stack(outs), want, 0.5)


@pytest.mark.gpu
@needs_cuda
def test_frames_in_flight_overlap_on_the_gpu_and_come_back_in_order(tiny_model_dir):
    frames = _frames(7)
    one_step = _cfg(t_index_list=(30,), cfg_type="none")
    want = _run(StreamDiffusion(_components(tiny_model_dir), one_step), frames)
    driver = StreamDriver(StreamDiffusion(_components(tiny_model_dir), one_step), lanes=3)
    outs = []
    for chunk in (frames[:3], frames[3:6], frames[6:]):  # at most `lanes` uncollected frames
        handles = [driver.submit(f) for f in chunk]
        outs += [h.result() for h in handles]
    assert driver.graphed.capture_error is None and driver.lanes == 3
    _close(np.stack(outs), want, 0.5)
    two_step = StreamDriver(StreamDiffusion(_components(tiny_model_dir), _cfg()), lanes=3)
    two_step(frames[0])
    assert two_step.lanes == 1  # the in-flight buffer carries state from frame to frame


@pytest.mark.gpu
@needs_cuda
def test_sdxl_conditioning_is_captured_in_the_graph(tmp_path_factory):
    """SDXL's pooled embeddings and time ids are call inputs captured with the step: a live
    prompt change (copied into them in place) shows in the replayed graph's frames."""
    from dreamcam.core.tiny import make_tiny_model

    folder = make_tiny_model(tmp_path_factory.mktemp("tiny-sdxl-gpu"), "sdxl")
    config = _cfg(t_index_list=(30,), cfg_type="self", prompt="a dog", guidance_scale=1.5)
    frames = _frames(4)
    eager = StreamDiffusion(_components(folder), config)
    driver = StreamDriver(StreamDiffusion(_components(folder), config))
    for i, frame in enumerate(frames):
        if i == 2:
            eager.update(prompt="a red boat")
            driver.update(prompt="a red boat")
        _close(driver(frame)[None], eager(frame)[None], 1.0)
    assert driver.graphed.capture_error is None and driver.graphed.captures == 1


@pytest.mark.gpu
@needs_cuda
def test_compiled_engine_in_a_graph_gives_the_eager_frames(tiny_model_dir, tmp_path):
    frames = _frames(4)
    config = EngineConfig(geometry=Geometry(64, 64, unet_batch=2), cache_dir=tmp_path)
    comps = _components(tiny_model_dir)
    eager = create_engine("eager", comps, config)
    want = _run(StreamDiffusion(comps, _cfg(), modules=eager.modules), frames)
    comps2 = _components(tiny_model_dir)
    engine = create_engine("compiled", comps2, config)
    assert engine.name == "compiled", engine.describe()
    driver = engine.driver(StreamDiffusion(comps2, _cfg(), modules=engine.modules))
    got = _run(driver, frames)
    assert driver.graphed.capture_error is None
    _close(got, want, 1.5)
    assert any((tmp_path / "inductor").iterdir())  # compiled artifacts cached on disk


@pytest.mark.gpu
@needs_cuda
def test_ahead_of_time_packages_capture_in_a_graph_and_load_at_the_next_start(tiny_model_dir, tmp_path):
    """The opt-in `aot` engine (engines/aot.py): AOTInductor's CUDA packages replayed in the step's
    CUDA graph give the eager frames, and a second engine on the same cache builds no package."""
    frames = _frames(4)
    config = EngineConfig(geometry=Geometry(64, 64, unet_batch=2), cache_dir=tmp_path, aot=True)
    comps = _components(tiny_model_dir)
    want = _run(StreamDiffusion(comps, _cfg(), modules=create_engine("eager", comps, config).modules), frames)
    firsts = []
    for _ in range(2):  # the first start builds the packages, the second loads them
        comps2 = _components(tiny_model_dir)
        engine = create_engine("compiled", comps2, config)
        assert engine.name == "compiled", engine.describe()
        driver = engine.driver(StreamDiffusion(comps2, _cfg(), modules=engine.modules))
        _close(_run(driver, frames), want, 1.5)
        assert driver.graphed.capture_error is None and driver.graphed.captures == 1
        firsts.append({p.name: p.stat().st_mtime_ns for p in (tmp_path / "aot").glob("*.pt2")})
    assert sorted(name.split("--")[0] for name in firsts[0]) == ["decode", "encode", "unet"]
    assert firsts[1] == firsts[0]  # nothing rebuilt


@pytest.mark.tensorrt
@needs_cuda
def test_tensorrt_engine_builds_runs_and_is_cached(tiny_model_dir, tmp_path):
    pytest.importorskip("tensorrt")
    frames = _frames(3)
    config = EngineConfig(geometry=Geometry(64, 64, unet_batch=2), cache_dir=tmp_path, trt_min_side=64, trt_max_side=256)
    comps = _components(tiny_model_dir)
    want = _run(StreamDiffusion(comps, _cfg(), modules=create_engine("eager", comps, config).modules), frames)
    comps2 = _components(tiny_model_dir)
    engine = create_engine("tensorrt", comps2, config)
    assert engine.name == "tensorrt", engine.describe()
    driver = engine.driver(StreamDiffusion(comps2, _cfg(), modules=engine.modules))
    _close(_run(driver, frames), want, 2.0)
    built = sorted((tmp_path / "tensorrt").glob("*/model.engine"))
    assert len(built) == 3
    stamps = [p.stat().st_mtime_ns for p in built]
    again = create_engine("tensorrt", _components(tiny_model_dir), config)  # same key: loads, no rebuild
    assert again.name == "tensorrt" and [p.stat().st_mtime_ns for p in built] == stamps


@pytest.mark.gpu
@needs_cuda
def test_a_failed_multi_lane_capture_falls_back_to_one_lane_and_a_new_shape_tries_again():
    from dreamcam.engines.graphed import GraphedStep

    captures = {"n": 0, "fail": set(), "always": False}

    def step(x: torch.Tensor) -> torch.Tensor:
        if torch.cuda.is_current_stream_capturing():
            captures["n"] += 1
            if captures["always"] or captures["n"] in captures["fail"]:
                raise RuntimeError("out of memory while capturing (planted)")
        return (x.float() * 0.5).to(torch.uint8)

    graphed = GraphedStep(step, lambda: "key", lanes=3, stateless_fn=lambda: True)
    frame = torch.full((1, 8, 8, 3), 200, dtype=torch.uint8, device="cuda")
    captures["fail"] = {1}  # the first attempt fails once: the retry captures all three lanes
    assert graphed.submit_device(frame, to_host=True).result()[0, 0, 0, 0] == 100
    assert graphed.capture_error is None and graphed.active_lanes == 3 and graphed.failures == 1
    captures.update(n=0, fail={2, 5})  # both attempts at three lanes fail (captures 2 and 5): one lane
    bigger = torch.full((1, 12, 12, 3), 100, dtype=torch.uint8, device="cuda")
    assert graphed.submit_device(bigger, to_host=False).result()[0, 0, 0, 0] == 50
    assert graphed.capture_error is None and graphed.active_lanes == 1  # fell back to one lane
    captures["always"] = True
    biggest = torch.full((1, 16, 16, 3), 100, dtype=torch.uint8, device="cuda")
    assert graphed.submit_device(biggest, to_host=False).result()[0, 0, 0, 0] == 50  # uncaptured, still right
    status = graphed.status()
    assert status.error and "planted" in status.error
    assert "without a CUDA graph" in status.message and "5x slower" in status.message
    captures["always"] = False
    captures["fail"] = set()
    graphed.submit_device(frame, to_host=True).result()  # another shape: capture is tried again and works
    assert graphed.capture_error is None and graphed.active_lanes == 3 and graphed.status().message == ""


@pytest.mark.gpu
@needs_cuda
def test_a_graph_left_in_cyclic_garbage_does_not_break_the_next_capture():
    """What broke captures on the H200: a CUDA graph kept alive only by a reference cycle, freed by
    the cyclic garbage collector in the middle of another capture."""
    import gc

    from dreamcam.engines.graphed import GraphedStep

    def step(x: torch.Tensor) -> torch.Tensor:
        y = x.float()
        for _ in range(20):  # many small allocations: the collector would run during the capture
            y = y * 0.99 + [0.0][0]
        return y.to(torch.uint8)

    frame = torch.full((1, 8, 8, 3), 100, dtype=torch.uint8, device="cuda")
    thresholds = gc.get_threshold()
    gc.set_threshold(1)  # collect at almost every allocation of a Python object
    try:
        for _ in range(5):
            old = GraphedStep(step, lambda: "key")
            old.submit_device(frame, to_host=False).result()
            old.cycle = old  # garbage only the cyclic collector frees
            del old
            new = GraphedStep(step, lambda: "key")
            new.submit_device(frame, to_host=False).result()
            assert new.capture_error is None and new.failures == 0
            del new
    finally:
        gc.set_threshold(*thresholds)
    torch.cuda.synchronize()
