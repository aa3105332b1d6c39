"""Builds the core pipeline (a Processor) from AppSettings: model, tiny VAE, LCM-LoRA, device,
dtype, size, and an engine through dreamcam.engines (falling back to eager)."""

from __future__ import annotations

import logging
from typing import Any, Callable

from .processor import Processor
from .settings import AppSettings, StreamSettings

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
DEFAULT_TAESD = "madebyollin/taesd"
ENGINE_DTYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def effective_dtype(dtype: str, device: str) -> str:
    """Half precision is a GPU thing: on the CPU the pipeline runs in float32."""
    return "float32" if device == "cpu" else dtype


def unet_batch(settings: StreamSettings, frame_buffer_size: int) -> int:
    steps = len(settings.t_index_list) if settings.t_index_list else settings.steps
    batch = steps * frame_buffer_size
    if settings.cfg_type == "full":
        return batch * 2
    if settings.cfg_type == "initialize":
        return batch + frame_buffer_size
    return batch


def stream_config(app: AppSettings, settings: StreamSettings):
    from dreamcam.core.config import StreamConfig

    return StreamConfig(
        width=app.width, height=app.height, frame_buffer_size=app.frame_buffer_size, resize=app.resize,
        t_index_list=settings.t_index_list, strength=settings.strength, steps=settings.steps,
        cfg_type=settings.cfg_type, guidance_scale=settings.guidance_scale, delta=settings.delta,
        seed=settings.seed, prompt=settings.prompt, negative_prompt=settings.negative_prompt,
        similarity_threshold=settings.similarity_threshold if settings.similarity_filter else None,
        similarity_max_skip=settings.similarity_max_skip, transition_frames=settings.transition_frames,
    )


def model_spec(app: AppSettings, device: str, dtype: str, local_files_only: bool = False):
    from dreamcam.core.loading import ModelSpec

    tiny_vae = "auto" if app.tiny_vae == DEFAULT_TAESD else app.tiny_vae
    return ModelSpec(model=app.model, tiny_vae=tiny_vae, lcm_lora=app.lcm_lora, device=device,
                     dtype=dtype, local_files_only=local_files_only, config=app.model_config)


def build_engine(app: AppSettings, components: Any, settings: StreamSettings, device: str, dtype: str,
                 progress: Progress) -> Any | None:
    """The built engine (dreamcam.engines.Engine), or None for the core's own eager path."""
    engine = app.engine
    if device == "cpu" and engine == "auto":
        engine = "eager"  # compiled and TensorRT engines are for GPUs
    try:
        from dreamcam.engines import EngineConfig, Geometry, create_engine
    except ImportError:
        log.info("dreamcam.engines is not available; using the core's eager path")
        return None
    geometry = Geometry(height=app.height, width=app.width, frame_batch=app.frame_buffer_size,
                        unet_batch=unet_batch(settings, app.frame_buffer_size))
    config = EngineConfig(geometry=geometry, dtype=ENGINE_DTYPES[dtype], probe=engine != "eager")
    progress(f"building the {engine} engine (the first build of a compiled or TensorRT engine takes minutes)")
    built = create_engine(engine, components, config, log=lambda text: log.info("%s", text))
    if engine not in ("auto", built.name):  # asked for another engine: say why it is not used
        log.warning("%s", built.describe())
    progress(built.describe())
    return built


def usable_frames_in_flight(built: Any, wanted: int) -> int:
    """`wanted`, or 1 with a warning when the engine's modules cannot run two calls at once."""
    if wanted > 1 and not getattr(built, "concurrent", True):
        log.warning("the %s engine runs one frame at a time: frames_in_flight %d is not used", built.name, wanted)
        return 1
    return wanted


def attach_graph(built: Any, stream: Any, progress: Progress, frames_in_flight: int = 1) -> Any:
    """On a GPU, replay the stream's whole per-frame step as one CUDA graph (the measured fast
    path); if capture fails the stream keeps the engine's modules and says so. With
    `frames_in_flight` > 1 the returned processor keeps that many frames on the GPU at once."""
    if built is None or stream.device.type != "cuda":
        return stream
    frames_in_flight = usable_frames_in_flight(built, frames_in_flight)
    if frames_in_flight > 1:
        from dreamcam.engines.inflight import InFlightStream

        progress(f"per-frame step runs as CUDA graphs, up to {frames_in_flight} frames at once "
                 "(1-step streams; more steps run one at a time)")
        return InFlightStream(stream, frames_in_flight)
    try:
        if built.attach(stream) is not None:
            progress("per-frame step runs as one CUDA graph")
    except Exception as exc:  # noqa: BLE001 - a failed capture must not stop the stream
        log.warning("CUDA graph capture unavailable (%s); running the step without it", exc)
    return stream


def build_processor(app: AppSettings, settings: StreamSettings | None = None, *,
                    progress: Progress | None = None, local_files_only: bool = False) -> Processor:
    """Load the model and build the stream; `progress` gets one line per stage."""
    from dreamcam.core.loading import load_components
    from dreamcam.core.stream import StreamDiffusion

    say = progress or (lambda text: log.info("%s", text))
    settings = settings or StreamSettings()
    device = resolve_device(app.device)
    dtype = effective_dtype(app.dtype, device)
    say(f"loading {app.model} on {device} ({dtype})")
    components = load_components(model_spec(app, device, dtype, local_files_only))
    built = build_engine(app, components, settings, device, dtype, say)
    say("preparing the stream (prompt encoding, warm-up)")
    stream = StreamDiffusion(components, stream_config(app, settings), modules=built and built.modules)
    stream.engine_name = built.name if built else "eager"  # for the status line
    return attach_graph(built, stream, say, app.frames_in_flight)
