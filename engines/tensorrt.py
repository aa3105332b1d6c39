"""The TensorRT engine: export each module to ONNX, build (cached) engines, run them.

Engines live in `<cache>/tensorrt/<key>/` (see cache.EngineKey): a second start with the same
weights, LoRAs, sizes, TensorRT version and GPU loads them in seconds; any change builds anew.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from . import onnx_export
from .cache import EngineKey, engine_dir, lora_set, model_fingerprint
from .config import EngineConfig
from .contract import Condition, StepModules, model_parts, unet_conditions
from .eager import make_eager, module_dtype
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


def plan_parts(modules: StepModules, unet: torch.nn.Module, vae: torch.nn.Module, config: EngineConfig,
               device: torch.device, conditions: tuple[Condition, ...] = ()) -> list[PartPlan]:
    g = config.geometry
    dtype = module_dtype(unet)
    text_dim = int(unet.config.cross_attention_dim)
    sides = dict(min_side=config.trt_min_side, max_side=config.trt_max_side, vae_factor=g.vae_factor)
    unet_profile = choose_profile(g.height, g.width, g.unet_batch, **sides)
    vae_profile = choose_profile(g.height, g.width, g.frame_batch, **sides)
    h, w = g.latent_hw
    images = torch.rand(g.frame_batch, 3, g.height, g.width, device=device, dtype=dtype) * 2 - 1
    latents = torch.randn(g.frame_batch, g.latent_channels, h, w, device=device, dtype=dtype)
    return [
        PartPlan("unet", modules.unet, unet,
                 onnx_export.unet_example(g.unet_batch, (h, w), g.text_len, text_dim, dtype=dtype, device=device,
                                          conditions=conditions),
                 onnx_export.unet_spec(conditions), unet_profile,
                 {"sample": unet_profile.latent_shapes(g.latent_channels), "timestep": unet_profile.batch_shapes(),
                  "encoder_hidden_states": unet_profile.batch_shapes(g.text_len, text_dim),
                  **{c.name: unet_profile.batch_shapes(*c.row_shape) for c in conditions}}),
        PartPlan("vae_encoder", modules.encode, vae, (images,), onnx_export.ENCODER, vae_profile,
                 {"images": vae_profile.image_shapes(3)}),
        PartPlan("vae_decoder", modules.decode, vae, (latents,), onnx_export.DECODER, vae_profile,
                 {"latents": vae_profile.latent_shapes(g.latent_channels)}),
    ]


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
    from .tensorrt_runtime import TrtModule

    built = {}
    for plan in plan_parts(modules, unet, vae, config, device, unet_conditions(components)):
        path = ensure_engine(plan, hashes[plan.part], config, trt.__version__, cc)
        built[plan.part] = _as_io(TrtModule(path, device, arg_names=plan.spec.inputs), io)
    return StepModules(unet=built["unet"], encode=built["vae_encoder"], decode=built["vae_decoder"])
