"""create_engine: the fallback chain with reasons, and frames equal to the core's default modules."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from dreamcam.core.config import StreamConfig
from dreamcam.core.loading import ModelSpec, load_components
from dreamcam.core.stream import StreamDiffusion
from dreamcam.engines import EngineConfig, EngineUnavailable, Geometry, create_engine
from dreamcam.engines.factory import _builders
from dreamcam.engines.driver import StreamDriver
from dreamcam.engines.graphed import GraphedStep

try:
    import tensorrt  # noqa: F401

    HAVE_TRT = True
except ImportError:
    HAVE_TRT = False


@pytest.fixture()
def components(tiny_model_dir):
    # Function scope: engines retune the modules they are given.
    return load_components(ModelSpec(str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd")))


def _config(tmp_path) -> EngineConfig:
    return EngineConfig(geometry=Geometry(64, 64), cache_dir=tmp_path)


def _frames(n: int, h: int = 64, w: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def _run(stream: StreamDiffusion, frames: list[np.ndarray]) -> np.ndarray:
    return np.stack([stream(f) for f in frames])


def _stream_config(**kw) -> StreamConfig:
    return StreamConfig(width=64, height=64, t_index_list=(20, 35), cfg_type="self", seed=3, prompt="a cat", **kw)


def test_unknown_engine_name_is_a_clear_error(components, tmp_path):
    with pytest.raises(ValueError, match="engine must be one of"):
        create_engine("fastest", components, _config(tmp_path))


@pytest.mark.skipif(HAVE_TRT, reason="checks the fallback where tensorrt is missing")
def test_tensorrt_missing_falls_back_with_the_reason(components, tmp_path):
    """The real missing library; the compiled step is made to fail as an out-of-memory would."""
    builders = _builders()

    def compiled_oom(components, config):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    builders["compiled"] = compiled_oom
    lines: list[str] = []
    engine = create_engine("tensorrt", components, _config(tmp_path), builders=builders, log=lines.append)
    assert engine.name == "eager"
    assert [name for name, _ in engine.attempts] == ["tensorrt", "compiled"]
    assert "tensorrt package is not installed" in engine.attempts[0][1]
    assert "out of GPU memory" in engine.attempts[1][1]
    assert "fell back from tensorrt" in engine.reason
    assert any("tensorrt engine unavailable" in line for line in lines)
    out = StreamDiffusion(components, _stream_config(), modules=engine.modules)(_frames(1)[0])
    assert out.shape == (64, 64, 3)  # the stream keeps running on the fallback


def test_fallback_reason_names_the_first_failure_and_the_rest(components, tmp_path):
    builders = _builders()
    builders["tensorrt"] = lambda c, cfg: (_ for _ in ()).throw(ImportError("No module named 'tensorrt'"))
    builders["compiled"] = lambda c, cfg: (_ for _ in ()).throw(RuntimeError("inductor failed"))
    engine = create_engine("tensorrt", components, _config(tmp_path), builders=builders)
    assert engine.name == "eager"
    assert engine.reason.startswith("fell back from tensorrt: tensorrt unavailable (missing library")
    assert engine.reason.endswith("then compiled too")
    assert "inductor failed" in engine.describe()


def test_auto_on_the_cpu_is_eager_and_says_why(components, tmp_path):
    engine = create_engine("auto", components, _config(tmp_path))
    assert engine.name == "eager"
    assert "the model is on the CPU" in engine.reason
    assert [n for n, _ in engine.attempts] == ["tensorrt", "compiled"]


def test_no_engine_at_all_raises(components, tmp_path):
    def broken(c, cfg):
        raise RuntimeError("broken")

    with pytest.raises(EngineUnavailable, match="no engine could run"):
        create_engine("compiled", components, _config(tmp_path), builders={"compiled": broken, "eager": broken})


def test_probe_catches_a_module_that_returns_the_wrong_shape(components, tmp_path):
    from dreamcam.core.modules import StepModules, eager_modules

    def bad(c, cfg):
        m = eager_modules(c)
        return StepModules(unet=lambda s, t, e: s[:, :2], encode=m.encode, decode=m.decode)

    engine = create_engine("compiled", components, _config(tmp_path), builders={"compiled": bad, "eager": _builders()["eager"]})
    assert engine.name == "eager" and "do not match" in engine.attempts[0][1]


def test_eager_engine_gives_the_same_frames_as_the_core_default(tiny_model_dir, tmp_path):
    spec = ModelSpec(str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd"))
    frames = _frames(4)
    want = _run(StreamDiffusion(load_components(spec), _stream_config()), frames)
    comps = load_components(spec)
    engine = create_engine("eager", comps, _config(tmp_path))
    got = _run(StreamDiffusion(comps, _stream_config(), modules=engine.modules), frames)
    np.testing.assert_array_equal(got, want)


def test_graph_driver_off_cuda_runs_uncaptured_with_the_same_frames(tiny_model_dir):
    spec = ModelSpec(str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd"))
    frames = _frames(3)
    want = _run(StreamDiffusion(load_components(spec), _stream_config()), frames)
    stream = StreamDiffusion(load_components(spec), _stream_config())
    driver = StreamDriver(stream)
    got = _run(driver, frames)
    status = driver.graph_status()
    assert not status.applies and status.message == ""  # CPU: nothing to capture, nothing to warn about
    np.testing.assert_array_equal(got, want)


def test_the_driver_holds_no_reference_cycle_so_a_dropped_stream_frees_its_graphs_at_once(tiny_model_dir):
    """A GraphedStep kept alive only by a reference cycle is freed by the cyclic collector at some
    later allocation, possibly in the middle of another stream's capture (which breaks it)."""
    import gc
    import weakref

    spec = ModelSpec(str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd"))
    driver = StreamDriver(StreamDiffusion(load_components(spec), _stream_config()), lanes=2)
    driver(_frames(1)[0])
    graphed, stream = weakref.ref(driver.graphed), weakref.ref(driver.stream)
    enabled = gc.isenabled()
    gc.disable()
    try:
        del driver
        assert graphed() is None and stream() is None  # freed by reference counting alone
    finally:
        if enabled:
            gc.enable()


def test_frames_in_flight_need_a_positive_lane_count_and_a_stateless_stream(tiny_model_dir):
    for lanes in (0, 5):
        with pytest.raises(ValueError, match="lanes"):
            GraphedStep(lambda x: x, lanes=lanes)
    spec = ModelSpec(str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd"))
    comps = load_components(spec)
    assert StreamDiffusion(comps, _stream_config().replace(t_index_list=(30,))).stateless
    assert not StreamDiffusion(comps, _stream_config()).stateless


@pytest.mark.skipif(HAVE_TRT, reason="checks the build process where tensorrt is missing")
def test_build_process_reports_missing_tensorrt(tmp_path):
    done = subprocess.run([sys.executable, "-m", "dreamcam.engines.tensorrt_build", "--onnx", str(tmp_path / "m.onnx"),
                           "--engine", str(tmp_path / "m.engine"), "--shapes", "{}"], capture_output=True, text=True)
    assert done.returncode == 2 and "tensorrt is not installed" in done.stderr


def test_compiled_engine_on_the_cpu_gives_the_core_frames(tiny_model_dir, tmp_path):
    """torch.compile (Inductor, C++ on the CPU) of the three modules; tiny shapes keep it short."""
    spec = ModelSpec(str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd"))
    cfg = StreamConfig(width=32, height=32, t_index_list=(25,), cfg_type="none", seed=3, prompt="a cat")
    frames = _frames(2, 32, 32)
    want = _run(StreamDiffusion(load_components(spec), cfg), frames)
    comps = load_components(spec)
    engine = create_engine("compiled", comps, EngineConfig(geometry=Geometry(32, 32), cache_dir=tmp_path))
    assert engine.name == "compiled", engine.describe()
    got = _run(StreamDiffusion(comps, cfg, modules=engine.modules), frames)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 2  # fp32; fused kernels round differently


def test_frames_in_flight_are_not_used_with_an_engine_that_runs_one_call_at_a_time(tiny_model_dir):
    from dreamcam.engines.factory import Engine

    spec = ModelSpec(str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd"))
    stream = StreamDiffusion(load_components(spec), _stream_config().replace(t_index_list=(30,)))
    said = []
    assert Engine("compiled", modules=None, reason="").driver(stream, 3, log=said.append).lanes == 3
    assert Engine("tensorrt", modules=None, reason="").driver(stream, 3, log=said.append).lanes == 1
    assert len(said) == 1 and "runs one frame at a time" in said[0]
