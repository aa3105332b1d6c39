"""SDXL through the compiled engine in a CUDA graph (named text_embeds / time_ids), and a live
change that needs new compiled shapes on the GPU: frames keep coming, then the graph is captured."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from dreamcam.core.config import StreamConfig
from dreamcam.core.loading import ModelSpec, load_components
from dreamcam.core.stream import StreamDiffusion
from dreamcam.engines import EngineConfig, Geometry, background, create_engine

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _frames(n: int, size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    small = [rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8) for _ in range(n)]
    return [np.ascontiguousarray(np.repeat(np.repeat(s, 16, 0), 16, 1)) for s in small]  # smooth, not noise


def _mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _settle(driver, frame: np.ndarray) -> None:
    """A first frame; if its shapes were not the probe's they compile in the background: wait, and
    run one more, which captures the compiled step (1-step streams: extra frames change nothing)."""
    driver(frame)
    if background.compiling():
        assert background.wait_idle(600)
        driver(frame)


def _compare_compiled_with_eager(comps_eager, comps_compiled, size: int, tmp_path, max_mean: float) -> None:
    config = StreamConfig(width=size, height=size, t_index_list=(30,), cfg_type="self", guidance_scale=1.5,
                          prompt="a dog", seed=4)
    engine_config = EngineConfig(geometry=Geometry(size, size), cache_dir=tmp_path)
    eager = StreamDiffusion(comps_eager, config, modules=create_engine("eager", comps_eager, engine_config).modules)
    engine = create_engine("compiled", comps_compiled, engine_config)
    assert engine.name == "compiled", engine.describe()
    driver = engine.driver(StreamDiffusion(comps_compiled, config, modules=engine.modules))
    frames = _frames(4, size)
    _settle(driver, frames[0])
    eager(frames[0])
    for i, frame in enumerate(frames):
        if i == 2:  # a live prompt change: the pooled text_embeds are written in place under the graph
            eager.update(prompt="a red boat")
            driver.update(prompt="a red boat")
        got, want = driver(frame), eager(frame)
        assert _mean_abs(got, want) <= max_mean, f"frame {i}: mean abs difference {_mean_abs(got, want):.2f}"
    status = driver.graph_status()
    assert status.error is None and status.lanes == 1
    assert driver.graphed.failures == 0 and driver.graphed.captures == 1


@pytest.mark.gpu
@needs_cuda
def test_tiny_sdxl_through_the_compiled_engine_in_a_graph_gives_the_eager_frames(tmp_path_factory, tmp_path):
    from dreamcam.core.tiny import make_tiny_model

    folder = make_tiny_model(tmp_path_factory.mktemp("tiny-sdxl-compiled"), "sdxl")

    def comps():
        return load_components(ModelSpec(str(folder), tiny_vae=str(folder / "taesd"), device="cuda", dtype=torch.float16))

    _compare_compiled_with_eager(comps(), comps(), 64, tmp_path, 1.5)


@pytest.mark.gpu
@needs_cuda
def test_real_sdxl_architecture_through_the_compiled_engine_in_a_graph(tmp_path):
    """The SDXL-Turbo UNet architecture (2.6 B parameters, random weights) and TAESD-XL at 512:
    compiled modules captured in a graph, frames within fp16 tolerance of the eager engine's."""
    from bench.models import build, components

    models = build("cuda", torch.float16, family="sdxl")
    comps = components(models, "cuda", torch.float16)
    # one set of weights for both engines (5 GB); each engine retunes it the same way (channels_last, SDPA)
    _compare_compiled_with_eager(comps, comps, 512, tmp_path, 2.0)


@pytest.mark.gpu
@needs_cuda
def test_a_live_change_of_guidance_keeps_frames_coming_while_it_compiles_then_captures(tiny_model_dir, tmp_path):
    comps = load_components(ModelSpec(str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd"), device="cuda",
                                      dtype=torch.float16))
    config = StreamConfig(width=64, height=64, t_index_list=(30,), cfg_type="none", prompt="a cat", seed=1)
    engine_config = EngineConfig(geometry=Geometry(64, 64), cache_dir=tmp_path, background_compile=True)
    engine = create_engine("compiled", comps, engine_config)
    driver = engine.driver(StreamDiffusion(comps, config, modules=engine.modules))
    frames = _frames(2, 64)
    _settle(driver, frames[0])
    assert driver.graphed.captures == 1 and driver.graph_status().lanes == 1
    eager = StreamDiffusion(comps, config, modules=create_engine("eager", comps, engine_config).modules)
    eager(frames[0])
    driver.update(cfg_type="full", guidance_scale=2.0)  # UNet batch 1 -> 2: new compiled shapes
    eager.update(cfg_type="full", guidance_scale=2.0)
    served_while_compiling, saw_waiting, worst = 0, False, 0.0
    end = time.monotonic() + 300
    while time.monotonic() < end:
        frame = frames[served_while_compiling % 2]
        out = driver(frame)
        worst = max(worst, _mean_abs(out, eager(frame)))  # the eager modules' graph: the eager frames
        saw_waiting |= driver.graph_status().waiting
        if not background.compiling():
            break
        assert driver.graph_status().lanes == 1  # the stand-ins replay in a graph meanwhile
        served_while_compiling += 1
    assert not background.compiling()
    assert driver.graphed.stand_in_captures == 1 and saw_waiting  # the status said why frames were slower
    assert worst <= 1.0, worst
    driver(frames[0])  # the first frame after the compile captures the compiled step
    status = driver.graph_status()
    assert status.error is None and status.lanes == 1 and not status.waiting, status
    assert driver.graphed.captures == 2 and driver.graphed.failures == 0
    print(f"frames served while the new shapes compiled: {served_while_compiling}")
