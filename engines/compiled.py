"""The compiled engine: torch.compile'd modules; the whole step then runs in one CUDA graph.

Inductor and Triton artifacts go to the engine cache folder, so the second start of the same
model and size loads kernels from disk instead of compiling them again.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch

from .cache import use_compile_cache
from .config import EngineConfig
from .contract import StepModules
from .eager import cast_modules, controlnet_factory, prepare


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


def _compiled_call(fn: Callable[..., torch.Tensor], mode: str, *, contiguous: bool) -> Callable[..., torch.Tensor]:
    """Compile the core's own callable, never a shared wrapper: Dynamo caches per code object,
    so three modules behind one wrapper function would share (and exhaust) one recompile budget.

    With `contiguous` the inputs (named conditioning too) are made contiguous first: Dynamo
    guards on strides, and the latents the stream computes can come out channels_last-strided
    (from the encoder) or not (txt2img noise); one layout means one compilation (the copy of a
    latent costs microseconds).
    """
    target = fn if inspect.isfunction(fn) or isinstance(fn, torch.nn.Module) else fn.__call__
    compiled = compile_fn(target, mode)
    if not contiguous:
        return compiled

    def call(*args: torch.Tensor, **named: torch.Tensor) -> torch.Tensor:
        return compiled(*(a.contiguous() for a in args), **{k: v.contiguous() for k, v in named.items()})

    return call


def compile_modules(modules: StepModules, config: EngineConfig, dtype: torch.dtype | None = None) -> StepModules:
    """The modules compiled; with `dtype` (the compute precision) also the ControlNets, each like
    the UNet (compiled at its first call: the capture's warm-up of a step that runs it)."""
    mode = config.compile_mode
    controlnet = modules.controlnet
    if dtype is not None:
        controlnet = controlnet_factory(config, dtype, lambda call: _compiled_call(call, mode, contiguous=True))
    # The encoder keeps the stream's layout: its uint8 NHWC frames permuted are channels_last already.
    return StepModules(unet=_compiled_call(modules.unet, mode, contiguous=True),
                       encode=_compiled_call(modules.encode, mode, contiguous=False),
                       decode=_compiled_call(modules.decode, mode, contiguous=True), controlnet=controlnet)


def raise_recompile_limit(limit: int = 64) -> None:
    """Each stream shape (batch, size) is one more compiled variant of the same module."""
    import torch._dynamo.config as dc

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dc, name):
            setattr(dc, name, max(getattr(dc, name), limit))


def make_compiled(components: Any, config: EngineConfig) -> StepModules:
    use_compile_cache(config.cache_dir)
    on_gpu = next(components.unet.parameters()).device.type == "cuda"
    tune_inductor(config.inductor_tuning and on_gpu)
    raise_recompile_limit()
    modules, dtype, io = prepare(components, config)
    return cast_modules(compile_modules(modules, config, dtype), dtype, io)
