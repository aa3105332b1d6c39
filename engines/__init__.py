"""dreamcam.engines: fast backends for the UNet and autoencoder (eager, compiled, TensorRT).

`create_engine(name, components, EngineConfig(...))` returns an `Engine` whose `.modules` is a
`StepModules` for `StreamDiffusion(components, config, modules=...)`; `make_frame_runner` wraps
the stream's step in one CUDA graph with pinned host I/O.
"""

from .config import EngineConfig, Geometry
from .errors import EngineUnavailable

__all__ = ["EngineConfig", "Geometry", "EngineUnavailable", "create_engine", "make_frame_runner", "Engine"]


def __getattr__(name: str):
    # Lazy: importing the package must not import torch.compile machinery or the core.
    if name in ("create_engine", "Engine"):
        from . import factory

        return getattr(factory, name)
    if name == "make_frame_runner":
        from .runner import make_frame_runner

        return make_frame_runner
    raise AttributeError(name)
