"""The compiled engine: torch.compile'd modules; the whole step then runs in one CUDA graph.

Inductor and Triton artifacts go to the engine cache folder, so the second start of the same
model and size loads kernels from disk instead of compiling them again.
"""

from __future__ import annotations

import inspect
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch

from dreamcam.core.modules import EagerUNet
from dreamcam.core.unet_halves import EagerUNetHalves

from .aot import AotModule
from .background import live_modules
from .cache import use_compile_cache
from .config import EngineConfig
from .contract import StepModules
from .eager import cast_modules, controlnet_factory, prepare

# Inductor options of the bounded max-autotune search (issue 11): the earlier full search (mode
# "max-autotune-no-cudagraphs" = max_autotune + coordinate_descent_tuning, Triton conv templates)
# did not finish compiling the UNet in 550 s on the H200.
BOUNDED_AUTOTUNE = {
    "max_autotune": True,
    "max_autotune_gemm_backends": "TRITON,ATEN",
    "max_autotune_conv_backends": "ATEN",  # cuDNN convolutions (benchmark mode picks the kernel)
    "conv_1x1_as_mm": True,  # the resnets' 1x1 shortcut convs as tuned GEMMs (the residual add fused)
    "max_autotune_gemm_search_space": "DEFAULT",
    "epilogue_fusion": True,  # bias, activations, residual adds into the GEMM templates
    "autotune_local_cache": True,  # choices kept under TORCHINDUCTOR_CACHE_DIR (the engine cache)
    "precompilation_timeout_seconds": 120,
}


def tune_inductor(enabled: bool) -> None:
    """Settings that pay off for diffusion UNets on tensor-core GPUs (1x1 convs as matmuls, tuning)."""
    if not enabled:
        return
    import torch._inductor.config as ic

    ic.conv_1x1_as_mm = True
    ic.coordinate_descent_tuning = True
    ic.coordinate_descent_check_all_directions = True
    ic.epilogue_fusion = False


def inductor_options(config: EngineConfig) -> dict[str, Any] | None:
    """Per-compile Inductor options for `config` (None: Inductor's defaults for `compile_mode`).

    Options unknown to this torch version are left out (names move between releases)."""
    import torch._inductor.config as ic

    options: dict[str, Any] = {}
    if config.compile_mode == "max-autotune-no-cudagraphs":
        if config.autotune_search == "full":
            return None  # the mode itself
        options.update(BOUNDED_AUTOTUNE)
    if config.coordinate_descent:
        options["coordinate_descent_tuning"] = True
    if config.channels_last_io:
        options["force_layout_optimization"] = True
    return {k: v for k, v in options.items() if hasattr(ic, k)} or None


def compile_fn(fn: Callable[..., Any], mode: str, options: dict[str, Any] | None = None) -> Callable[..., Any]:
    """torch.compile without Inductor's own CUDA graphs: the caller captures one graph per frame.
    `options` (Inductor config for this compile only) replace `mode`: torch takes one or the other."""
    if options:
        return torch.compile(fn, options=options, dynamic=False, fullgraph=False)
    return torch.compile(fn, mode=None if mode == "default" else mode, dynamic=False, fullgraph=False)


def _layout(a: torch.Tensor, channels_last: bool) -> torch.Tensor:
    if channels_last and a.dim() == 4:
        return a.contiguous(memory_format=torch.channels_last)
    return a.contiguous()


def _compiled(fn: Callable[..., torch.Tensor], mode: str, options: dict[str, Any] | None,
              aot: AotPart | None) -> Callable[..., torch.Tensor]:
    """Compile the core's own callable, never a shared wrapper: Dynamo caches per code object,
    so three modules behind one wrapper function would share (and exhaust) one recompile budget.
    With `aot` the call is served from AOTInductor packages (aot.py), the torch.compile'd call being
    its fallback."""
    target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) or isinstance(fn, torch.nn.Module) else fn.__call__
    compiled = compile_fn(target, mode, options)
    if aot is not None:
        compiled = AotModule(aot.part, fn, aot.module, aot.folder, compiled, options=options)
    return compiled


def with_layout(fn: Callable[..., torch.Tensor], contiguous: bool,
                channels_last: bool = False) -> Callable[..., torch.Tensor]:
    """With `contiguous` the inputs (named conditioning too) are made contiguous first: Dynamo
    guards on strides, and the latents the stream computes can come out channels_last-strided
    (from the encoder) or not (txt2img noise); one layout means one compilation (the copy of a
    latent costs microseconds). With `channels_last` that one layout is channels_last for 4-D
    inputs (no layout change at the compiled graph's edges)."""
    if not contiguous:
        return fn

    def call(*args: torch.Tensor, **named: torch.Tensor) -> torch.Tensor:
        return fn(*(_layout(a, channels_last) for a in args), **{k: _layout(v, channels_last) for k, v in named.items()})

    return call


class AotPart(NamedTuple):
    """What `AotModule` needs besides the call: the module whose parameters it reads, where packages go."""

    part: str
    module: torch.nn.Module
    folder: Path


def compile_modules(modules: StepModules, config: EngineConfig, dtype: torch.dtype | None = None,
                    models: tuple[torch.nn.Module, torch.nn.Module] | None = None) -> StepModules:
    """The UNet and both TAESD/VAE halves, each compiled with the same mode and options; with `dtype`
    (the compute precision) also the ControlNets, each like the UNet (compiled at its first call: the
    capture's warm-up of a step that runs it). With `config.aot`, `models` = (the UNet, the
    autoencoder) the three calls read: they are served ahead of time (aot.py). With
    `config.background_compile` each compiled call sits behind its eager twin for new shapes
    (background.py), inside the layout change: a new signature there is one torch.compile's guards see.
    The ControlNets' switches sit outside theirs (`live_modules` wraps the factory's calls): a net
    compiles in the background from its first call anyway, and its inputs keep one layout a frame."""
    mode, options, cl = config.compile_mode, inductor_options(config), config.channels_last_io
    aot = _aot_parts(config, models)

    def fast(fn: Callable[..., torch.Tensor], part: str = "") -> Callable[..., torch.Tensor]:
        return _compiled(fn, mode, options, aot.get(part))

    controlnet = modules.controlnet
    if dtype is not None:
        controlnet = controlnet_factory(config, dtype, lambda call: with_layout(fast(call), contiguous=True))
    halves = modules.unet_halves
    inner = StepModules(unet=fast(modules.unet, "unet"), encode=fast(modules.encode, "encode"),
                        decode=fast(modules.decode, "decode"), controlnet=controlnet,
                        unet_halves=CompiledHalves(fast(halves.down), fast(halves.up)) if halves is not None else None)
    if config.background_compile:
        inner = live_modules(inner, modules, switch_interval_s=config.compile_switch_interval_s)
    # The encoder keeps the stream's layout unless told otherwise: its uint8 NHWC frames permuted
    # are channels_last already. The up half's state comes from the compiled down half, its residuals
    # from the compiled ControlNets: their layouts are the same every frame (one compilation).
    return StepModules(unet=with_layout(inner.unet, True, cl), encode=with_layout(inner.encode, cl, cl),
                       decode=with_layout(inner.decode, True, cl), controlnet=inner.controlnet,
                       unet_halves=None if halves is None else
                       CompiledHalves(with_layout(inner.unet_halves.down, True, cl), inner.unet_halves.up))


def _aot_parts(config: EngineConfig, models: tuple[torch.nn.Module, torch.nn.Module] | None) -> dict[str, AotPart]:
    if not config.aot or models is None:
        return {}
    unet, vae = models
    folder = Path(config.cache_dir) / "aot"
    return {"unet": AotPart("unet", unet, folder), "encode": AotPart("encode", vae, folder),
            "decode": AotPart("decode", vae, folder)}


class CompiledHalves(NamedTuple):
    """The UNet's two halves (core/unet_halves.py), each compiled like the whole UNet, at its first
    call: only a stream with ControlNets calls them (a plain stream compiles only the whole UNet)."""

    down: Callable[..., Any]
    up: Callable[..., torch.Tensor]


def rewrite_unet(unet: torch.nn.Module, config: EngineConfig) -> tuple[torch.nn.Module, dict[str, int]]:
    """The engine's own copy of the UNet with the opted-in module substitutions (weights shared with
    the components' UNet, which stays unchanged), and how many modules each replaced."""
    counts: dict[str, int] = {}
    if config.fuse_norm_silu:
        from .fused_norm import fuse_resnets

        unet, counts["fused_resnets"] = fuse_resnets(unet)
    if config.fp8_linear:
        from .fp8 import to_fp8

        unet, counts["fp8_linears"] = to_fp8(unet)
    return unet, counts


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
    if config.compile_threads:
        import torch._inductor.config as ic

        ic.compile_threads = config.compile_threads  # process-wide: the worker pool is shared
    modules, dtype, io = prepare(components, config)
    unet, _ = rewrite_unet(components.unet, config)
    if unet is not components.unet:
        modules = replace(modules, unet=EagerUNet(unet), unet_halves=EagerUNetHalves.of(unet))
    return cast_modules(compile_modules(modules, config, dtype, models=(unet, components.vae)), dtype, io)
