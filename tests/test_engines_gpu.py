"""GPU paths of the engines: one CUDA graph per frame, compiled modules, TensorRT engines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamcam.core.config import StreamConfig
from dreamcam.core.loading import ModelSpec, load_components
from dreamcam.core.stream import StreamDiffusion
from dreamcam.engines import EngineConfig, Geometry, create_engine
from dreamcam.engines.runner import attach_graph, host_pipeline

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
    stream = StreamDiffusion(_components(tiny_model_dir), _cfg())
    graphed = attach_graph(stream)
    got = _run(stream, frames)
    assert graphed.capture_error is None and graphed.captures == 1
    _close(got, want, 0.5)


@pytest.mark.gpu
@needs_cuda
def test_graph_is_recaptured_when_the_shape_key_changes(tiny_model_dir):
    stream = StreamDiffusion(_components(tiny_model_dir), _cfg())
    graphed = attach_graph(stream)
    frames = _frames(6)
    for f in frames[:2]:
        stream(f)
    stream.update(t_index_list=(10, 25, 40))  # 3 steps: new state tensors, new batch
    stream.update(guidance_scale=2.0)  # same shapes: no recapture
    outs = [stream(f) for f in frames[2:]]
    assert graphed.captures == 2
    reference = StreamDiffusion(_components(tiny_model_dir), _cfg(t_index_list=(10, 25, 40), guidance_scale=2.0))
    assert outs[-1].shape == reference(frames[-1]).shape


@pytest.mark.gpu
@needs_cuda
def test_host_pipeline_pinned_path_matches_and_overlaps(tiny_model_dir):
    frames = _frames(4)
    want = _run(StreamDiffusion(_components(tiny_model_dir), _cfg()), frames)
    pipe = host_pipeline(StreamDiffusion(_components(tiny_model_dir), _cfg()))
    first = pipe.submit(frames[0][None])
    handles = [first] + [pipe.submit(f[None]) for f in frames[1:2]]
    outs = [h.result().numpy()[0].copy() for h in handles]
    outs += [pipe(f[None]).numpy()[0].copy() for f in frames[2:]]
    assert pipe.capture_error is None and pipe.host_in_pinned()
    _close(np.stack(outs), want, 0.5)


@pytest.mark.gpu
@needs_cuda
def test_frames_in_flight_overlap_on_the_gpu_and_come_back_in_order(tiny_model_dir):
    frames = _frames(7)
    one_step = _cfg(t_index_list=(30,), cfg_type="none")
    want = _run(StreamDiffusion(_components(tiny_model_dir), one_step), frames)
    pipe = host_pipeline(StreamDiffusion(_components(tiny_model_dir), one_step), lanes=3)
    outs = []
    for chunk in (frames[:3], frames[3:6], frames[6:]):  # at most `lanes` uncollected frames
        handles = [pipe.submit(f[None]) for f in chunk]
        outs += [h.result().numpy()[0].copy() for h in handles]
    assert pipe.capture_error is None and pipe.active_lanes == 3
    _close(np.stack(outs), want, 0.5)
    two_step = host_pipeline(StreamDiffusion(_components(tiny_model_dir), _cfg()), lanes=3)
    two_step(frames[0][None])
    assert two_step.active_lanes == 1  # the in-flight buffer carries state from frame to frame


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
    stream = StreamDiffusion(comps2, _cfg(), modules=engine.modules)
    graphed = engine.attach(stream)
    got = _run(stream, frames)
    assert graphed.capture_error is None
    _close(got, want, 1.5)
    assert any((tmp_path / "inductor").iterdir())  # compiled artifacts cached on disk


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
    stream = StreamDiffusion(comps2, _cfg(), modules=engine.modules)
    engine.attach(stream)
    _close(_run(stream, frames), want, 2.0)
    built = sorted((tmp_path / "tensorrt").glob("*/model.engine"))
    assert len(built) == 3
    stamps = [p.stat().st_mtime_ns for p in built]
    again = create_engine("tensorrt", _components(tiny_model_dir), config)  # same key: loads, no rebuild
    assert again.name == "tensorrt" and [p.stat().st_mtime_ns for p in built] == stamps


@pytest.mark.gpu
@needs_cuda
def test_a_failed_multi_lane_capture_falls_back_to_one_lane_and_a_new_shape_tries_again():
    from dreamcam.engines.graphed import GraphedStep

    captures = {"n": 0, "fail_from": 2, "always": False}

    def step(x: torch.Tensor) -> torch.Tensor:
        if torch.cuda.is_current_stream_capturing():
            captures["n"] += 1
            if captures["always"] or captures["n"] == captures["fail_from"]:
                raise RuntimeError("out of memory while capturing (planted)")
        return (x.float() * 0.5).to(torch.uint8)

    graphed = GraphedStep(step, lambda: "key", lanes=3, stateless_fn=lambda: True)
    frame = torch.full((1, 8, 8, 3), 200, dtype=torch.uint8, device="cuda")
    assert graphed.submit(frame.cpu()).result()[0, 0, 0, 0] == 100
    assert graphed.capture_error is None and graphed.active_lanes == 1  # the second lane failed: one lane
    captures["always"] = True
    bigger = torch.full((1, 16, 16, 3), 100, dtype=torch.uint8, device="cuda")
    assert graphed.run_device(bigger)[0, 0, 0, 0] == 50  # uncaptured, still right
    assert graphed.capture_error and "planted" in graphed.capture_error
    captures["always"] = False
    captures["fail_from"] = -1
    graphed.run_device(frame)  # another shape: capture is tried again and works
    assert graphed.capture_error is None and graphed.active_lanes == 3
