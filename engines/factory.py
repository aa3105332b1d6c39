"""`create_engine`: the one way to get step modules, with a fallback chain and a reason.

tensorrt -> compiled -> eager. A requested engine that cannot run here (missing library, no
GPU, failed build, out of memory) is reported in one line and the next one is tried, so the
stream always starts; `auto` starts at the top and says which one it picked and why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .cache import save_compile_artifacts
from .choice import Choice, Detected, choose_engine, detect
from .config import EngineConfig
from .contract import StepModules, example_conditions, model_parts, unet_conditions
from .errors import EngineUnavailable, describe_failure
from .start_record import StartRecord, progress_line, start_key

ENGINE_NAMES = ("eager", "compiled", "tensorrt", "auto")
CHAIN = ("tensorrt", "compiled", "eager")
COMPILING = ("compiled",)  # engines whose probe compiles (progress lines with an estimate)

Builder = Callable[[Any, EngineConfig], StepModules]


def _builders() -> dict[str, Builder]:
    # Imported lazily: the tensorrt module must not be needed to use the others.
    def tensorrt(components: Any, config: EngineConfig) -> StepModules:
        from .tensorrt import make_tensorrt

        return make_tensorrt(components, config)

    def compiled(components: Any, config: EngineConfig) -> StepModules:
        from .compiled import make_compiled

        return make_compiled(components, config)

    def eager(components: Any, config: EngineConfig) -> StepModules:
        from .eager import make_eager

        return make_eager(components, config)

    return {"tensorrt": tensorrt, "compiled": compiled, "eager": eager}


@dataclass
class Engine:
    """The modules to hand to the stream, which engine made them, and why that one."""

    name: str
    modules: StepModules
    reason: str
    attempts: list[tuple[str, str]] = field(default_factory=list)  # (engine, why it was skipped)
    build_seconds: float = 0.0

    @property
    def concurrent(self) -> bool:
        """Whether several calls may run at once on different CUDA streams (frames in flight).
        A TensorRT module holds one execution context and one set of I/O buffers."""
        return self.name != "tensorrt"

    def driver(self, stream: Any, frames_in_flight: int = 1, config: EngineConfig | None = None,
               log: Callable[[str], None] | None = None):
        """The one graph driver over `stream` (see engines/driver.py): on CUDA the whole step replays
        as CUDA graphs, up to `frames_in_flight` at once where these modules allow concurrent calls."""
        from .driver import StreamDriver

        lanes = frames_in_flight
        if lanes > 1 and not self.concurrent:
            if log:
                log(f"the {self.name} engine runs one frame at a time: frames_in_flight {lanes} is not used")
            lanes = 1
        return StreamDriver(stream, lanes, config=config)

    def describe(self) -> str:
        skipped = "; ".join(f"{n}: {why}" for n, why in self.attempts)
        return f"engine {self.name} ({self.reason})" + (f" - skipped {skipped}" if skipped else "")


def probe(modules: StepModules, components: Any, config: EngineConfig, *, engine: str = "",
          progress: Callable[[str], None] | None = None) -> None:
    """Run each module once at the configured shapes: compilation and builds fail here, not mid-stream.

    With `progress` (a compiling engine) each part is announced with the time it took at the last start
    of the same shapes (engines/start_record.py), and its time is recorded for the next start."""
    unet, _ = model_parts(components)
    param = next(unet.parameters())
    g = config.geometry
    h, w = g.latent_hw
    dtype, device = param.dtype, param.device
    record = StartRecord(config.cache_dir) if progress else None
    key = start_key(engine, components, g, config.dtype) if record else ""

    def timed(part: str, what: str, call: Callable[[], torch.Tensor]) -> torch.Tensor:
        if record is None:
            return call()
        progress(progress_line(engine, what, record.last(key, part)))
        start = time.perf_counter()
        out = call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        record.save(key, part, time.perf_counter() - start)
        return out

    size = f"{g.height}x{g.width}"
    # no_grad, never inference_mode: the stream's step runs under no_grad, and Dynamo guards on the
    # inputs' dispatch keys (inference tensors have no autograd keys), so probing in inference mode
    # compiled every module a second time at the first frame (seen on the CPU: 3 recompiles)
    with torch.no_grad():
        # Laid out as the stream makes them (uint8 NHWC frames permuted): a compiled module then
        # sees the same strides in the stream and is not compiled a second time.
        frames = torch.randint(0, 256, (g.frame_batch, g.height, g.width, 3), dtype=torch.uint8, device=device)
        images = frames.permute(0, 3, 1, 2).to(dtype).div(127.5).sub(1.0)
        latents = timed("encode", f"the image encoder ({size}, batch {g.frame_batch})", lambda: modules.encode(images))
        sample = torch.randn(g.unet_batch, g.latent_channels, h, w, dtype=dtype, device=device)
        t = torch.full((g.unet_batch,), 500, dtype=torch.long, device=device)
        text = torch.randn(g.unet_batch, g.text_len, int(unet.config.cross_attention_dim), dtype=dtype, device=device)
        cond = example_conditions(unet_conditions(components), g.unet_batch, dtype=dtype, device=device)
        eps = timed("unet", f"the UNet ({size}, batch {g.unet_batch})", lambda: modules.unet(sample, t, text, **cond))
        out = timed("decode", f"the image decoder ({size}, batch {g.frame_batch})", lambda: modules.decode(latents))
    if tuple(eps.shape) != tuple(sample.shape) or out.shape[-2:] != images.shape[-2:]:
        raise RuntimeError(f"engine output shapes {tuple(eps.shape)}, {tuple(out.shape)} do not match the inputs")
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def create_engine(
    name: str,
    components: Any,
    config: EngineConfig | None = None,
    *,
    builders: dict[str, Builder] | None = None,
    log: Callable[[str], None] | None = None,
    detected: Detected | None = None,
    progress: Callable[[str], None] | None = None,
) -> Engine:
    """Step modules from the engine `name` ("eager", "compiled", "tensorrt", "auto"), or the next that works.

    `auto` starts where `choose_engine` says (TensorRT if it works, else compiled if Triton is
    usable, else eager; `detected` overrides what `detect` finds on this machine). `progress` gets a
    line per part the compiled engine compiles, with an estimate from the last start."""
    if name not in ENGINE_NAMES:
        raise ValueError(f"engine must be one of {', '.join(ENGINE_NAMES)}, got {name!r}")
    config = config or EngineConfig()
    builders = builders or _builders()
    chain = CHAIN if name == "auto" else CHAIN[CHAIN.index(name):]
    attempts: list[tuple[str, str]] = []
    choice: Choice | None = None
    if name == "auto":
        choice = choose_engine(detected or detect(str(_model_device(components))))
        attempts += list(choice.skipped)
        chain = CHAIN[CHAIN.index(choice.engine):]
    for candidate in chain:
        start = time.perf_counter()
        try:
            modules = builders[candidate](components, config)
            if config.probe:
                probe(modules, components, config, engine=candidate,
                      progress=progress if candidate in COMPILING else None)
                if candidate in COMPILING and (failed := save_compile_artifacts()) and log:
                    log(f"dreamcam: the Dynamo precompile cache was not written: {failed}")
        except Exception as exc:  # noqa: BLE001 - every failure means "try the next engine"
            why = describe_failure(exc)
            attempts.append((candidate, why))
            if log:
                log(f"dreamcam: {candidate} engine unavailable: {why}; trying the next one")
            _release_memory()
            continue
        reason = (f"auto picked it: {choice.reason}" if choice is not None and candidate == choice.engine
                  else _reason(name, candidate, attempts))
        engine = Engine(candidate, modules, reason, attempts, time.perf_counter() - start)
        if log:
            log(f"dreamcam: {engine.describe()}")
        return engine
    raise EngineUnavailable(name, "no engine could run: " + "; ".join(f"{n}: {w}" for n, w in attempts))


def _reason(requested: str, chosen: str, attempts: list[tuple[str, str]]) -> str:
    if requested == chosen:
        return "as requested"
    first = attempts[0] if attempts else ("?", "?")
    lead = "auto picked it" if requested == "auto" else f"fell back from {requested}"
    return f"{lead}: {first[0]} unavailable ({first[1]})" + (
        f", then {', '.join(n for n, _ in attempts[1:])} too" if len(attempts) > 1 else "")


def _model_device(components: Any) -> torch.device:
    unet, _ = model_parts(components)
    return next(unet.parameters()).device


def _release_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
