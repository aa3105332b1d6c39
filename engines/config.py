"""Start-time options of the engines (the factory's input besides the model)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DTYPES = ("fp16", "bf16", "fp32")
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
COMPILE_SCOPES = ("modules", "step")
AUTOTUNE_SEARCHES = ("bounded", "full")


def default_cache_dir() -> Path:
    """$DREAMCAM_ENGINE_CACHE, else the user cache folder (platformdirs), else ~/.cache."""
    env = os.environ.get("DREAMCAM_ENGINE_CACHE")
    if env:
        return Path(env)
    try:
        from platformdirs import user_cache_dir

        return Path(user_cache_dir("dreamcam")) / "engines"
    except ImportError:  # pragma: no cover
        return Path.home() / ".cache" / "dreamcam" / "engines"


@dataclass(frozen=True)
class Geometry:
    """Shapes the engines are built and probed for (the stream's configured size)."""

    height: int = 512
    width: int = 512
    unet_batch: int = 1  # stream batch: steps x frame_buffer_size, x2 with full guidance
    frame_batch: int = 1  # frame_buffer_size: images through the autoencoder per step
    text_len: int = 77
    latent_channels: int = 4
    vae_factor: int = 8

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            value = getattr(self, name)
            if value <= 0 or value % self.vae_factor:
                raise ValueError(f"{name} must be a positive multiple of {self.vae_factor}, got {value}")
        if self.unet_batch < 1 or self.frame_batch < 1:
            raise ValueError("unet_batch and frame_batch must be at least 1")

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.height // self.vae_factor, self.width // self.vae_factor


@dataclass(frozen=True)
class EngineConfig:
    """How to build an engine; the defaults suit a CUDA GPU at 512x512."""

    geometry: Geometry = field(default_factory=Geometry)
    dtype: str = "fp16"
    channels_last: bool = True
    cache_dir: Path = field(default_factory=default_cache_dir)
    compile_mode: str = "default"
    compile_scope: str = "modules"  # "step": also compile the core's whole per-frame step
    inductor_tuning: bool = False  # conv 1x1 as matmul, coordinate-descent tuning (longer compile)
    # Issue 11 directions, each off until measured (`python -m bench.run` variants compare them):
    # max-autotune's search: "bounded" = Triton + ATen GEMM templates (default search space, epilogue
    # fusion), cuDNN convolutions, no coordinate descent; "full" = Inductor's own mode (much longer)
    autotune_search: str = "bounded"
    coordinate_descent: bool = False  # Inductor's coordinate-descent tuning of each kernel's launch config
    compile_threads: int = 0  # Inductor's compile workers (process-wide); 0 = Inductor's default (CPU count)
    channels_last_io: bool = False  # compiled modules get channels_last 4-D inputs; Inductor keeps that layout
    fuse_norm_silu: bool = False  # UNet ResnetBlock2D GroupNorm+SiLU (+temb add) as one Triton op (fused_norm.py)
    fp8_linear: bool = False  # UNet linear layers as fp8 e4m3 matmuls on sm >= 8.9 (fp8.py)
    # new shapes after the start (a live change of steps or guidance, a ControlNet or IP-Adapter attached) compile
    # on a thread of their own while the eager modules serve (background.py), so the output keeps flowing;
    # off: they compile on the frame thread (the output waits, for a minute at a time)
    background_compile: bool = True
    # Python's thread switch interval while such a compile runs (the default is 5 ms): the frame thread gets
    # the GIL back sooner after each kernel launch (background.py); None leaves the process's own
    compile_switch_interval_s: float | None = 2e-4
    # the UNet, encoder and decoder as AOTInductor packages in the engine cache (aot.py): a later start
    # loads them without Dynamo's tracing; a changed structure (LoRA, IP-Adapter) uses torch.compile
    aot: bool = False
    # cuDNN's benchmark mode: the first call of each convolution shape times its kernels (every process
    # pays that search again at its start); off: cuDNN's heuristics pick (issue 11: start vs speed)
    cudnn_benchmark: bool = True
    probe: bool = True  # run the new modules once at creation so failures fall back early
    lora_set: tuple[tuple[str, float], ...] = ()  # (name, scale) fused into the UNet, for cache keys
    trt_min_side: int = 256
    trt_max_side: int = 1024
    trt_workspace_gb: float | None = None
    trt_build_timeout_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got {self.compile_mode!r}")
        if self.autotune_search not in AUTOTUNE_SEARCHES:
            raise ValueError(f"autotune_search must be one of {', '.join(AUTOTUNE_SEARCHES)}, got {self.autotune_search!r}")
        if self.compile_threads < 0:
            raise ValueError(f"compile_threads must be 0 (Inductor's default) or more, got {self.compile_threads}")
        if self.compile_switch_interval_s is not None and not self.compile_switch_interval_s > 0:
            raise ValueError(f"compile_switch_interval_s must be above 0 or None, got {self.compile_switch_interval_s}")
        if self.compile_scope not in COMPILE_SCOPES:
            raise ValueError(f"compile_scope must be one of {', '.join(COMPILE_SCOPES)}, got {self.compile_scope!r}")

    @property
    def torch_dtype(self):
        import torch

        return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[self.dtype]
