"""The TensorRT engine: export each module to ONNX, build (cached) engines, run them.

Engines live in `<cache>/tensorrt/<key>/` (see cache.EngineKey): a second start with the same
weights, LoRAs, sizes, TensorRT version and GPU loads them in seconds; any change builds anew.

ControlNets: each net is its own engine ("controlnet", keyed by its weights) with the UNet's
dynamic profile (its control image at the pixel sizes of that profile); the first ControlNet also
builds "unet_control", the UNet with the residual inputs control_down_*/control_mid (shapes:
core.controlnet.residual_shapes at the profile's min/opt/max latent sizes). The UNet call runs
that engine when the step passes residuals and the plain one otherwise. Both are built when the
app sets the ControlNets (`StepModules.controlnet(net)`: minutes the first time, then cached).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from dreamcam.core.controlnet import residual_shapes
from dreamcam.core.modules import CONTROL_MID, CONTROLNET_COND_NAMES

from . import onnx_export
from .cache import EngineKey, engine_dir, lora_set, model_fingerprint
from .config import EngineConfig
from .contract import Condition, EagerControlNet, StepModules, model_parts, unet_conditions
from .eager import make_eager, module_dtype, tune_module, use_sdpa
from .errors import EngineUnavailable
from .profiles import ShapeProfile, choose_profile

Shapes = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


@dataclass
class PartPlan:
    """One module to export and build."""

    part: str
    fn: Callable[..., torch.Tensor]
    owner: torch.nn.Module
    example: tuple[torch.Tensor, ...]
    spec: onnx_export.ExportSpec
    profile: ShapeProfile
    shapes: Shapes


def require_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise EngineUnavailable("tensorrt", f"the tensorrt package is not installed ({exc}); pip install 'dreamcam[tensorrt]'") from exc
    if not torch.cuda.is_available():
        raise EngineUnavailable("tensorrt", "no CUDA GPU is available")
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise EngineUnavailable("tensorrt", f"TensorRT {trt.__version__} is too old; 10 or newer is needed")
    return trt


def _unet_shapes(profile: ShapeProfile, config: EngineConfig, text_dim: int,
                 conditions: tuple[Condition, ...]) -> Shapes:
    g = config.geometry
    return {"sample": profile.latent_shapes(g.latent_channels), "timestep": profile.batch_shapes(),
            "encoder_hidden_states": profile.batch_shapes(g.text_len, text_dim),
            **{c.name: profile.batch_shapes(*c.row_shape) for c in conditions}}


def residual_profile_shapes(unet_config: Any, profile: ShapeProfile) -> Shapes:
    """(min, opt, max) of every ControlNet residual over the profile's latent sizes."""
    f = profile.vae_factor
    lo, hi = profile.min_side // f, profile.max_side // f
    sizes = [(profile.min_batch, lo, lo), (profile.opt_batch, profile.opt_height // f, profile.opt_width // f),
             (profile.max_batch, hi, hi)]
    per_size = [(b, residual_shapes(unet_config, h, w)) for b, h, w in sizes]
    return {name: tuple((b, *shapes[name]) for b, shapes in per_size) for name in per_size[0][1]}


def _profiles(config: EngineConfig) -> tuple[ShapeProfile, ShapeProfile]:
    g = config.geometry
    sides = dict(min_side=config.trt_min_side, max_side=config.trt_max_side, vae_factor=g.vae_factor)
    return (choose_profile(g.height, g.width, g.unet_batch, **sides),
            choose_profile(g.height, g.width, g.frame_batch, **sides))


def profile_fits(config: EngineConfig) -> Callable[[int, int, int], str]:
    """`StepModules.fits` of engines built for `config`'s profiles: their sides and the UNet batch
    are fixed when the engine is built, so a live change outside them is refused with how to get it."""
    unet_profile, vae_profile = _profiles(config)
    frames = config.geometry.frame_batch

    def fits(height: int, width: int, unet_batch: int) -> str:
        p = unet_profile
        if not (p.contains(height, width, p.min_batch) and vae_profile.contains(height, width, frames)):
            return (f"the TensorRT engine takes sizes with sides from {p.min_side} to {p.max_side} (its optimisation "
                    f"profile), got {width}x{height}; restart at that size to build an engine for it")
        if not p.contains(height, width, unet_batch):
            rows = f"{p.min_batch}" if p.min_batch == p.max_batch else f"{p.min_batch} to {p.max_batch}"
            return (f"the TensorRT engine was built for a UNet batch of {rows} (steps x frames, more with full or "
                    f"initialize guidance), this needs {unet_batch}; restart with it to build an engine for it")
        return ""

    return fits


def plan_parts(modules: StepModules, unet: torch.nn.Module, vae: torch.nn.Module, config: EngineConfig,
               device: torch.device, conditions: tuple[Condition, ...] = ()) -> list[PartPlan]:
    g = config.geometry
    dtype = module_dtype(unet)
    text_dim = int(unet.config.cross_attention_dim)
    unet_profile, vae_profile = _profiles(config)
    h, w = g.latent_hw
    images = torch.rand(g.frame_batch, 3, g.height, g.width, device=device, dtype=dtype) * 2 - 1
    latents = torch.randn(g.frame_batch, g.latent_channels, h, w, device=device, dtype=dtype)
    return [
        PartPlan("unet", modules.unet, unet,
                 onnx_export.unet_example(g.unet_batch, (h, w), g.text_len, text_dim, dtype=dtype, device=device,
                                          conditions=conditions),
                 onnx_export.unet_spec(conditions), unet_profile, _unet_shapes(unet_profile, config, text_dim, conditions)),
        PartPlan("vae_encoder", modules.encode, vae, (images,), onnx_export.ENCODER, vae_profile,
                 {"images": vae_profile.image_shapes(3)}),
        PartPlan("vae_decoder", modules.decode, vae, (latents,), onnx_export.DECODER, vae_profile,
                 {"latents": vae_profile.latent_shapes(g.latent_channels)}),
    ]


def plan_controlled_unet(unet_call: Callable[..., torch.Tensor], unet: torch.nn.Module, config: EngineConfig,
                         device: torch.device, conditions: tuple[Condition, ...] = ()) -> PartPlan:
    """The UNet with the ControlNet residuals as inputs (same profile as the plain UNet)."""
    g = config.geometry
    text_dim = int(unet.config.cross_attention_dim)
    profile, _ = _profiles(config)
    residuals = residual_profile_shapes(unet.config, profile)
    example = onnx_export.unet_example(g.unet_batch, g.latent_hw, g.text_len, text_dim, dtype=module_dtype(unet),
                                       device=device, conditions=conditions, residuals_of=unet.config)
    return PartPlan("unet_control", unet_call, unet, example, onnx_export.unet_spec(conditions, tuple(residuals)),
                    profile, {**_unet_shapes(profile, config, text_dim, conditions), **residuals})


def plan_controlnet(call: Callable[..., tuple[torch.Tensor, ...]], net: torch.nn.Module, config: EngineConfig,
                    device: torch.device, conditions: tuple[Condition, ...] = ()) -> PartPlan:
    """One ControlNet with the UNet's profile; its control image spans the profile's pixel sizes."""
    g = config.geometry
    text_dim = int(net.config.cross_attention_dim)
    conditions = tuple(c for c in conditions if c.name in CONTROLNET_COND_NAMES)
    profile, _ = _profiles(config)
    names = tuple(residual_profile_shapes(net.config, profile))
    example = onnx_export.controlnet_example(g.unet_batch, g.latent_hw, g.text_len, text_dim, dtype=module_dtype(net),
                                             device=device, vae_factor=g.vae_factor, conditions=conditions)
    return PartPlan("controlnet", call, net, example, onnx_export.controlnet_spec(conditions, names), profile,
                    {**_unet_shapes(profile, config, text_dim, ()), "controlnet_cond": profile.image_shapes(3),
                     **{c.name: profile.batch_shapes(*c.row_shape) for c in conditions}})


def run_build(onnx_path: Path, engine_path: Path, shapes: Shapes, config: EngineConfig, timing_cache: Path) -> None:
    """Build in a child process; its progress bar goes to our stderr."""
    cmd = [sys.executable, "-m", "dreamcam.engines.tensorrt_build", "--onnx", str(onnx_path),
           "--engine", str(engine_path), "--shapes", json.dumps(shapes), "--timing-cache", str(timing_cache)]
    if config.trt_workspace_gb:
        cmd += ["--workspace-gb", str(config.trt_workspace_gb)]
    if config.dtype == "fp32":
        cmd.append("--fp32")
    print(f"dreamcam: building TensorRT engine {engine_path.parent.name} (minutes, once)", file=sys.stderr)
    try:
        done = subprocess.run(cmd, timeout=config.trt_build_timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise EngineUnavailable("tensorrt", f"engine build exceeded {config.trt_build_timeout_s:.0f} s") from exc
    reasons = {2: "tensorrt cannot be imported in the build process", 3: "TensorRT could not parse the ONNX model",
               4: "TensorRT could not build the engine (often out of GPU memory)"}
    if done.returncode != 0:
        why = reasons.get(done.returncode, f"the build process ended with code {done.returncode}")
        raise EngineUnavailable("tensorrt", f"{why}; see the messages above")


def ensure_engine(plan: PartPlan, model_hash: str, config: EngineConfig, trt_version: str, cc: str) -> Path:
    key = EngineKey(part=plan.part, model_hash=model_hash, lora_set=lora_set(config.lora_set), profile=plan.profile,
                    precision=config.dtype, backend_version=f"tensorrt-{trt_version}", compute_capability=cc)
    folder = engine_dir(config.cache_dir, key)
    engine = folder / "model.engine"
    if engine.exists():
        return engine
    onnx_path = onnx_export.export(plan.fn, plan.owner, plan.example, plan.spec, folder / "onnx" / "model.onnx")
    (folder / "key.json").write_text(json.dumps({**key.__dict__, "profile": plan.profile.__dict__}, default=str, indent=1))
    torch.cuda.empty_cache()
    run_build(onnx_path, engine, plan.shapes, config, Path(config.cache_dir) / "tensorrt" / f"timing-{trt_version}-sm{cc}.cache")
    return engine


def _as_io(fn: Callable[..., torch.Tensor], io: torch.dtype) -> Callable[..., torch.Tensor]:
    def call(*args: torch.Tensor, **named: torch.Tensor) -> torch.Tensor:
        return fn(*args, **named).to(io)

    return call


def _as_io_many(fn: Callable[..., tuple[torch.Tensor, ...]], io: torch.dtype) -> Callable[..., tuple[torch.Tensor, ...]]:
    def call(*args: torch.Tensor, **named: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(r.to(io) for r in fn(*args, **named))

    return call


class UNetEngines:
    """The UNet call: the plain engine, or (when the step passes ControlNet residuals) the engine
    with the residual inputs, built by `ensure_controlled` when the first ControlNet is set."""

    def __init__(self, plain: Callable[..., torch.Tensor], build_controlled: Callable[[], Callable[..., torch.Tensor]]):
        self.plain = plain
        self.controlled: Callable[..., torch.Tensor] | None = None
        self._build = build_controlled

    def ensure_controlled(self) -> None:
        if self.controlled is None:
            self.controlled = self._build()

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 **named: torch.Tensor) -> torch.Tensor:
        if CONTROL_MID not in named:
            return self.plain(sample, timestep, encoder_hidden_states, **named)
        if self.controlled is None:
            raise RuntimeError("the TensorRT UNet with ControlNet inputs is not built; set the ControlNets on the "
                               "stream (StreamDiffusion.set_controlnets), which builds it")
        return self.controlled(sample, timestep, encoder_hidden_states, **named)


def make_tensorrt(components: Any, config: EngineConfig) -> StepModules:
    trt = require_tensorrt()
    unet, vae = model_parts(components)
    device = next(unet.parameters()).device
    if device.type != "cuda":
        raise EngineUnavailable("tensorrt", "the model is not on a CUDA device")
    # Export plain (not channels_last) fp16 modules: TensorRT picks its own layouts.
    modules = make_eager(components, replace(config, channels_last=False))
    io = module_dtype(unet)
    cc = "%d.%d" % torch.cuda.get_device_capability(device)
    hashes = {"unet": model_fingerprint(unet), "vae_encoder": model_fingerprint(vae), "vae_decoder": model_fingerprint(vae)}
    conditions = unet_conditions(components)
    from .tensorrt_runtime import TrtModule

    def load(plan: PartPlan, model_hash: str) -> TrtModule:
        path = ensure_engine(plan, model_hash, config, trt.__version__, cc)
        return TrtModule(path, device, arg_names=plan.spec.inputs, output_names=plan.spec.outputs)

    built = {plan.part: _as_io(load(plan, hashes[plan.part]), io)
             for plan in plan_parts(modules, unet, vae, config, device, conditions)}
    unet_call = UNetEngines(built["unet"], lambda: _as_io(
        load(plan_controlled_unet(modules.unet, unet, config, device, conditions), hashes["unet"]), io))

    def controlnet(net: torch.nn.Module) -> Callable[..., tuple[torch.Tensor, ...]]:
        """Build (or load from the cache) this net's engine and the UNet's with residual inputs."""
        unet_call.ensure_controlled()
        tune_module(net, module_dtype(unet), channels_last=False)
        use_sdpa(net)
        plan = plan_controlnet(EagerControlNet(net), net, config, device, conditions)
        return _as_io_many(load(plan, model_fingerprint(net)), io)

    return StepModules(unet=unet_call, encode=built["vae_encoder"], decode=built["vae_decoder"], controlnet=controlnet,
                       fits=profile_fits(config))
