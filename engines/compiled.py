"""The compiled engine: torch.compile'd modules; the whole step then runs in one CUDA graph.

Inductor and Triton artifacts go to the engine cache folder, so the second start of the same
model and size loads kernels from disk instead of compiling them again.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .cache import use_compile_cache
from .config import EngineConfig
from .contract import StepModules
from .eager import Wrapped, make_eager


def tune_inductor(enabled: bool) -> None:
    """Settings that pay off for diffusion UNets on tensor-core GPUs (1x1 convs as matmuls, tuning)."""
    if not enabled:
        return
    import torch._inductor.config as ic

    ic.conv_1x1_as_mm = True
    ic.coordinate_descent_tuning = True
    ic.coordinate_descent_check_all_directions = True
    ic.epilogue_fusion = False


def compile_fn(fn: Callable[..., Any], mode: str) -> Callable[..., Any]:
    """torch.compile without Inductor's own CUDA graphs: the caller captures one graph per frame."""
    return torch.compile(fn, mode=None if mode == "default" else mode, dynamic=False, fullgraph=False)


def _compiled_call(fn: Callable[..., torch.Tensor], mode: str) -> Wrapped:
    def call(*args: torch.Tensor) -> torch.Tensor:
        return fn(*args)

    return Wrapped(compile_fn(call, mode), fn)


def compile_modules(modules: StepModules, config: EngineConfig) -> StepModules:
    mode = config.compile_mode
    return StepModules(unet=_compiled_call(modules.unet, mode), encode=_compiled_call(modules.encode, mode),
                       decode=_compiled_call(modules.decode, mode))


def make_compiled(components: Any, config: EngineConfig) -> StepModules:
    use_compile_cache(config.cache_dir)
    on_gpu = next(components.unet.parameters()).device.type == "cuda"
    tune_inductor(config.inductor_tuning and on_gpu)
    return compile_modules(make_eager(components, config), config)
