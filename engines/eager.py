"""The eager engine: the core's modules in the chosen precision, SDPA attention, channels_last."""

from __future__ import annotations

import weakref
from dataclasses import replace
from typing import Any, Callable

import torch

from .config import EngineConfig
from .contract import EagerControlNet, StepModules, eager_modules, model_parts


def module_dtype(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def module_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def use_sdpa(unet: torch.nn.Module) -> None:
    """PyTorch's fused scaled-dot-product attention (flash / memory-efficient kernels)."""
    try:
        from diffusers.models.attention_processor import AttnProcessor2_0
    except ImportError:  # pragma: no cover - diffusers is a hard dependency
        return
    if hasattr(unet, "set_attn_processor"):
        unet.set_attn_processor(AttnProcessor2_0())


def fuse_qkv(unet: torch.nn.Module) -> bool:
    """One projection matmul instead of three per self-attention (fewer, larger GEMMs)."""
    fuse = getattr(unet, "fuse_qkv_projections", None)
    if fuse is None:
        return False
    try:
        fuse()
    except Exception:  # noqa: BLE001 - an optional speed-up; unsupported layouts keep the plain path
        return False
    return True


def tune_module(module: torch.nn.Module, dtype: torch.dtype, channels_last: bool) -> None:
    module.eval().requires_grad_(False)
    if module_dtype(module) != dtype:
        module.to(dtype=dtype)
    if channels_last:
        module.to(memory_format=torch.channels_last)


def _in(a: torch.Tensor, compute: torch.dtype) -> torch.Tensor:
    """An input in the compute precision (integer inputs such as timesteps stay as they are)."""
    return a.to(compute) if a.is_floating_point() else a


def _cast(fn: Callable[..., torch.Tensor], compute: torch.dtype, io: torch.dtype) -> Callable[..., torch.Tensor]:
    """`fn` in `compute` precision behind `io` precision inputs and outputs, named inputs too."""
    def call(*args: torch.Tensor, **named: torch.Tensor) -> torch.Tensor:
        return fn(*(_in(a, compute) for a in args), **{k: _in(v, compute) for k, v in named.items()}).to(io)

    return call


def _cast_many(fn: Callable[..., tuple[torch.Tensor, ...]], compute: torch.dtype,
               io: torch.dtype) -> Callable[..., tuple[torch.Tensor, ...]]:
    """As `_cast`, for a callable with several outputs (a ControlNet's residuals)."""
    def call(*args: torch.Tensor, **named: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(r.to(io) for r in fn(*(_in(a, compute) for a in args),
                                          **{k: _in(v, compute) for k, v in named.items()}))

    return call


class CastHalves:
    """The UNet's halves (core/unet_halves.py) in `compute` precision behind `io` precision: the
    state between them stays in `compute`, the residuals and the output cross in `io`."""

    def __init__(self, halves: Any, compute: torch.dtype, io: torch.dtype) -> None:
        self.halves, self.compute, self.io = halves, compute, io

    def down(self, *args: torch.Tensor, **named: torch.Tensor) -> Any:
        c = self.compute
        return self.halves.down(*(_in(a, c) for a in args), **{k: _in(v, c) for k, v in named.items()})

    def up(self, state: Any, **residuals: torch.Tensor) -> torch.Tensor:
        return self.halves.up(state, **{k: _in(v, self.compute) for k, v in residuals.items()}).to(self.io)


def cast_modules(modules: StepModules, compute: torch.dtype, io: torch.dtype) -> StepModules:
    """Run the modules in `compute` precision behind the stream's `io` precision (the ControlNet
    factory's calls and the UNet's halves too)."""
    if compute == io:
        return modules
    factory, halves = modules.controlnet, modules.unet_halves
    return StepModules(unet=_cast(modules.unet, compute, io), encode=_cast(modules.encode, compute, io),
                       decode=_cast(modules.decode, compute, io),
                       controlnet=lambda net: _cast_many(factory(net), compute, io),
                       unet_halves=CastHalves(halves, compute, io) if halves is not None else None,
                       fits=modules.fits)


def controlnet_factory(config: EngineConfig, dtype: torch.dtype,
                       wrap: Callable[[Callable], Callable] | None = None) -> Callable[[Any], Callable]:
    """The engine's ControlNet call: the net retuned like the UNet (precision, channels_last on a
    GPU, SDPA attention), called eagerly or through `wrap` (the compiled engine compiles it)."""
    made: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # a net set again (a new stack) is not
    # retuned or recompiled; a net the app drops is not kept alive

    def make(net: torch.nn.Module) -> Callable:
        if net not in made:
            tune_module(net, dtype, config.channels_last and module_device(net).type == "cuda")
            use_sdpa(net)
            call = EagerControlNet(net)
            made[net] = wrap(call) if wrap is not None else call
        return made[net]

    return make


def compute_dtype(config: EngineConfig, device: torch.device, io: torch.dtype) -> torch.dtype:
    """The configured precision on a GPU; on the CPU the core's own precision (fp16 CPU kernels are slow)."""
    return config.torch_dtype if device.type == "cuda" else io


def vae_dtype(components: Any, dtype: torch.dtype) -> torch.dtype:
    """The loader may keep a full VAE in float32 behind a float16 stream (SDXL's force_upcast);
    an engine keeps that choice."""
    own = getattr(components, "vae_dtype", None)
    return torch.float32 if own == torch.float32 and dtype == torch.float16 else dtype


def prepare(components: Any, config: EngineConfig, *, qkv_fusion: bool = False) -> tuple[StepModules, torch.dtype, torch.dtype]:
    """Retune the models in place; returns (the core's eager modules, compute dtype, the stream's dtype)."""
    unet, vae = model_parts(components)
    io = module_dtype(unet)
    device = module_device(unet)
    dtype = compute_dtype(config, device, io)
    channels_last = config.channels_last and device.type == "cuda"
    tune_module(unet, dtype, channels_last)
    tune_module(vae, vae_dtype(components, dtype), channels_last)
    use_sdpa(unet)
    if qkv_fusion:
        fuse_qkv(unet)
    if device.type == "cuda":  # shapes are static per stream: cuDNN may time its conv kernels (in each process)
        torch.backends.cudnn.benchmark = config.cudnn_benchmark
    return eager_modules(components), dtype, io


def make_eager(components: Any, config: EngineConfig, *, qkv_fusion: bool = False) -> StepModules:
    modules, dtype, io = prepare(components, config, qkv_fusion=qkv_fusion)
    return cast_modules(replace(modules, controlnet=controlnet_factory(config, dtype)), dtype, io)
