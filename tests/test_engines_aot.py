"""Ahead-of-time packages (engines/aot.py): the compiled engine with `aot` gives the eager frames, a
second engine on the same cache loads the packages without tracing anything, and a module whose
structure changed goes to torch.compile. AOTInductor compiles C++ here (the CPU), CUDA on a GPU."""

from __future__ import annotations

import numpy as np
import torch

from dreamcam.core.config import StreamConfig
from dreamcam.core.loading import ModelSpec, load_components
from dreamcam.core.stream import StreamDiffusion
from dreamcam.engines import EngineConfig, Geometry, create_engine
from dreamcam.engines.aot import AotModule

SIZE = 32


def _frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(n)]


def _dynamo_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def test_aot_engine_gives_the_eager_frames_and_a_second_start_loads_without_tracing(tiny_model_dir, tmp_path):
    spec = ModelSpec(str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd"))
    cfg = StreamConfig(width=SIZE, height=SIZE, t_index_list=(25,), cfg_type="none", seed=3, prompt="a cat")
    frames = _frames(2)
    want = [StreamDiffusion(load_components(spec), cfg)(f) for f in frames]
    config = EngineConfig(geometry=Geometry(SIZE, SIZE), cache_dir=tmp_path, aot=True)

    comps = load_components(spec)
    engine = create_engine("compiled", comps, config)
    assert engine.name == "compiled", engine.describe()
    stream = StreamDiffusion(comps, cfg, modules=engine.modules)
    got = [stream(f) for f in frames]
    for g, w in zip(got, want):
        assert np.abs(g.astype(int) - w.astype(int)).max() <= 2  # fp32; fused kernels round differently
    packages = {p: p.stat().st_mtime_ns for p in (tmp_path / "aot").glob("*.pt2")}
    assert sorted(p.name.split("--")[0] for p in packages) == ["decode", "encode", "unet"]

    traced = _dynamo_graphs()
    again = load_components(spec)
    second = create_engine("compiled", again, config)  # another start of the same model and shapes
    stream = StreamDiffusion(again, cfg, modules=second.modules)
    assert [stream(f).tobytes() for f in frames] == [g.tobytes() for g in got]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "aot").glob("*.pt2")} == packages  # loaded, not built
    assert _dynamo_graphs() == traced  # nothing traced by Dynamo: the packages served every call


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(16, 16)

    def forward(self, x: torch.Tensor, *, shift: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.proj(x)) + shift


def test_a_changed_structure_or_a_weight_changed_in_place(tmp_path):
    net = _Net()
    fallback_calls = []

    def fallback(*args, **named):
        fallback_calls.append(1)
        return net(*args, **named)

    served = AotModule("net", net, net, tmp_path, fallback)
    x, shift = torch.randn(16, 16), torch.randn(16, 16)
    torch.testing.assert_close(served(x, shift=shift), net(x, shift=shift))
    with torch.no_grad():
        net.proj.weight.mul_(-1.0)  # in place (a LoRA weight change): the package reads the module's own tensor
    torch.testing.assert_close(served(x, shift=shift), net(x, shift=shift))
    assert fallback_calls == [] and served.built == 1
    net.proj = torch.nn.Sequential(torch.nn.Linear(16, 16))  # new layers (a LoRA's adapters): not the package's
    torch.testing.assert_close(served(x, shift=shift), net(x, shift=shift))
    assert fallback_calls == [1]
