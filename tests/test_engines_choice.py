"""Which engine `auto` picks: the pure rule over what was detected, and create_engine following it."""

from __future__ import annotations

import pytest

from dreamcam.core.loading import ModelSpec, load_components
from dreamcam.engines import EngineConfig, Geometry, create_engine
from dreamcam.engines.choice import Detected, choose_engine, detect, triton_problem
from dreamcam.engines.factory import _builders


def test_tensorrt_wins_where_it_works():
    choice = choose_engine(Detected(cuda=True, tensorrt_problem=None, triton_problem=None))
    assert choice.engine == "tensorrt" and not choice.skipped
    assert "TensorRT imports and works" in choice.line()


def test_compiled_where_triton_works_and_tensorrt_does_not():
    choice = choose_engine(Detected(cuda=True, tensorrt_problem="the tensorrt package does not import",
                                    triton_problem=None))
    assert choice.engine == "compiled"
    assert "TensorRT is not usable (the tensorrt package does not import)" in choice.reason
    assert [name for name, _ in choice.skipped] == ["tensorrt"]


@pytest.mark.parametrize("platform, hint", [("win32", "triton-windows"), ("linux", "pip install triton")])
def test_eager_with_the_cuda_graph_when_neither_and_the_fix_names_the_platforms_triton(platform, hint):
    choice = choose_engine(Detected(cuda=True, platform=platform, tensorrt_problem="no tensorrt",
                                    triton_problem="the triton package does not import (ImportError)"))
    assert choice.engine == "eager"
    assert "CUDA graph" in choice.reason and hint in choice.reason
    assert [name for name, _ in choice.skipped] == ["tensorrt", "compiled"]
    assert hint in choice.skipped[1][1]


def test_off_cuda_always_eager_whatever_is_installed():
    choice = choose_engine(Detected(cuda=False, tensorrt_problem=None, triton_problem=None))
    assert choice.engine == "eager" and "the model is on the CPU" in choice.reason


def test_an_old_gpu_is_too_old_for_triton():
    problem = triton_problem((6, 1))
    assert problem is not None and ("compute capability 6.1" in problem or "does not import" in problem)


def test_detect_on_a_cpu_model():
    assert detect("cpu") == Detected(cuda=False)


@pytest.fixture()
def components(tiny_model_dir):
    return load_components(ModelSpec(str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd")))


def test_auto_starts_at_the_chosen_engine_and_gives_its_reason(components, tmp_path):
    """What was detected decides where the chain starts; TensorRT is not even tried."""
    built: list[str] = []
    builders = _builders()

    def recording(name):
        real = builders["eager"]  # the compiled builder would compile for minutes on the CPU

        def build(c, cfg):
            built.append(name)
            return real(c, cfg)
        return build

    fakes = {name: recording(name) for name in ("tensorrt", "compiled", "eager")}
    found = Detected(cuda=True, tensorrt_problem="the tensorrt package does not import", triton_problem=None)
    engine = create_engine("auto", components, EngineConfig(geometry=Geometry(64, 64), cache_dir=tmp_path),
                           builders=fakes, detected=found)
    assert built == ["compiled"] and engine.name == "compiled"
    assert engine.reason.startswith("auto picked it: TensorRT is not usable")
    assert engine.attempts == [("tensorrt", "the tensorrt package does not import")]


def test_doctor_says_which_engine_auto_runs_and_why_in_one_line():
    from dreamcam.plugin.doctor import check_engine, fix_lines

    windows = check_engine(Detected(cuda=True, platform="win32", tensorrt_problem="no tensorrt",
                                    triton_problem="the triton package does not import (ImportError)"))
    assert windows.detail.startswith("eager: neither TensorRT") and "\n" not in windows.detail
    assert "  pip install triton-windows" in fix_lines(windows.fix)
    fine = check_engine(Detected(cuda=True, tensorrt_problem="no tensorrt", triton_problem=None))
    assert fine.detail.startswith("compiled: ") and not fine.fix
    assert check_engine().detail.startswith("eager: the model is on the CPU")  # this machine: no GPU
