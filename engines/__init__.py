"""dreamcam.engines: fast backends for the UNet and autoencoder (eager, compiled, TensorRT).

`create_engine(name, components, EngineConfig(...))` returns an `Engine` whose `.modules` is a
`StepModules` for `StreamDiffusion(components, config, modules=...)`; `Engine.driver(stream,
frames_in_flight)` (or `StreamDriver(stream, lanes)`) is the one graph driver that runs the
stream's whole step as CUDA graphs with 1 to 4 frames in flight.
"""

from .config import EngineConfig, Geometry
from .errors import EngineUnavailable

__all__ = ["EngineConfig", "Geometry", "EngineUnavailable", "create_engine", "Engine", "StreamDriver"]


def __getattr__(name: str):
    # Lazy: importing the package must not import torch.compile machinery or the core.
    if name in ("create_engine", "Engine"):
        from . import factory

        return getattr(factory, name)
    if name == "StreamDriver":
        from .driver import StreamDriver

        return StreamDriver
    raise AttributeError(name)
