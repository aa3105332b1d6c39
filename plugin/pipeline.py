"""Builds the core pipeline (a CoreProcessor) from AppSettings and the start's StreamSettings: model,
tiny VAE, LCM-LoRA, device, dtype, the start size, an engine through dreamcam.engines (falling back
to eager) and its graph driver."""

from __future__ import annotations

import logging
from typing import Any, Callable

from .processor import CoreProcessor, core_update
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


def stream_config(app: AppSettings, settings: StreamSettings):
    from dreamcam.core.config import StreamConfig

    # the live settings map to the core as every later update does (one mapping: core_update)
    return StreamConfig(frame_buffer_size=app.frame_buffer_size, resize=app.resize, **core_update(settings))


def model_spec(app: AppSettings, device: str, dtype: str, local_files_only: bool = False):
    from dreamcam.core.loading import ModelSpec

    tiny_vae = "auto" if app.tiny_vae == DEFAULT_TAESD else app.tiny_vae
    return ModelSpec(model=app.model, tiny_vae=tiny_vae, lcm_lora=app.lcm_lora, device=device,
                     dtype=dtype, local_files_only=local_files_only, config=app.model_config)


def build_engine(app: AppSettings, components: Any, settings: StreamSettings, device: str, dtype: str,
                 progress: Progress) -> Any:
    """The built engine (dreamcam.engines.Engine), after the fallback chain."""
    from dreamcam.engines import EngineConfig, Geometry, create_engine

    from .conditioning import conditioning_of

    engine = app.engine
    if device == "cpu" and engine == "auto":
        engine = "eager"  # compiled and TensorRT engines are for GPUs
    elif engine == "auto" and any(conditioning_of(settings).keys().values()):
        engine = "compiled"  # TensorRT's UNet has its weights and inputs built in: no live ControlNet, LoRA, ...
        log.info("engine auto: starting at compiled (ControlNets, IP-Adapter and LoRAs need a UNet that takes them live)")
    start = stream_config(app, settings)
    geometry = Geometry(height=start.height, width=start.width, frame_batch=start.frame_buffer_size,
                        unet_batch=start.unet_batch)
    config = EngineConfig(geometry=geometry, dtype=ENGINE_DTYPES[dtype], probe=engine != "eager")
    progress(f"building the {engine} engine (the first build of a compiled or TensorRT engine takes minutes)")
    built = create_engine(engine, components, config, log=lambda text: log.info("%s", text), progress=progress)
    if engine not in ("auto", built.name):  # asked for another engine: say why it is not used
        log.warning("%s", built.describe())
    progress(built.describe())
    return built


def build_processor(app: AppSettings, settings: StreamSettings | None = None, *,
                    progress: Progress | None = None, local_files_only: bool = False,
                    loaders: Any = None, control_source: Any = None) -> CoreProcessor:
    """Load the model and build the stream and its graph driver; `progress` gets one line per stage.
    The ControlNets, IP-Adapter and LoRAs of `settings` are loaded before it returns (later changes
    load in the background); `loaders`: the plugin.conditioner.Loaders to read them with;
    `control_source`: the Source of external ControlNets (default: the one `app.control_source` names)."""
    from .conditioner import Conditioner
    from .conditioning import conditioning_of

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
    stream = StreamDiffusion(components, stream_config(app, settings), modules=built.modules)
    driver = built.driver(stream, app.frames_in_flight, log=lambda text: log.warning("%s", text))
    if stream.device.type == "cuda":
        say(f"per-frame step runs as CUDA graphs, up to {driver.lanes} frame(s) at once"
            + (" (1-step streams; more steps run one at a time)" if driver.lanes > 1 else ""))
    feed = None
    if control_source is not None or app.control_source:  # the external ControlNets' second source
        from .control_feed import ControlFeed
        from .sources import make_source

        feed = ControlFeed(control_source or make_source(app.control_source, width=settings.width,
                                                         height=settings.height, fps=app.fps), app.control_source or "")
        feed.start()
    conditioner = Conditioner(driver, built.name, loaders=loaders, local_files_only=local_files_only, feed=feed)
    wanted = conditioning_of(settings)
    if any(wanted.keys().values()):
        say("loading the ControlNets, IP-Adapter and LoRAs")
    try:
        conditioner.load_now(wanted, settings)
    except BaseException:  # nothing is left running (the control source's thread, the graphs)
        conditioner.close()
        driver.close()
        raise
    return CoreProcessor(driver, built.name, conditioner)
