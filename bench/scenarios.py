"""The project's own path: core StreamDiffusion + an engine, through the app's graph driver."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from .timing import FrameStats, deadline, frame_times, graph_ms, sync, throughput


@dataclass(frozen=True)
class Scenario:
    name: str
    width: int = 512
    height: int = 512
    steps: int = 1
    strength: float = 0.5
    cfg_type: str = "none"
    guidance_scale: float = 1.2
    mode: str = "img2img"
    frame_buffer_size: int = 1
    app_path: bool = False  # also time host uint8 -> host uint8
    stages: bool = False  # also time encode / unet / decode alone
    lanes: tuple[int, ...] = ()  # host -> host with this many frames in flight, each on its own stream
    family: str = "sd21"  # the models it runs on (bench/models.py): "sdxl" scenarios run with `bench.run --sdxl`
    ip_adapter: bool = False  # a random IP-Adapter (bench/models.ip_adapter) attached, with a style image
    controlnets: tuple[tuple[str, float], ...] = ()  # (preprocessor canny | depth, scale), random-weight nets
    depth_side: int = 518  # the depth model's input size (Depth Anything's own: 518)

    def stream_config(self):
        from dreamcam.core.config import StreamConfig

        return StreamConfig(width=self.width, height=self.height, steps=self.steps, strength=self.strength,
                            cfg_type=self.cfg_type, guidance_scale=self.guidance_scale, mode=self.mode,
                            frame_buffer_size=self.frame_buffer_size,
                            prompt="a watercolor painting of a city", negative_prompt="blurry")


SCENARIOS = {
    "img2img-1step-512": Scenario("img2img-1step-512", app_path=True, stages=True, lanes=(1, 2, 3, 4)),
    "img2img-2step-512": Scenario("img2img-2step-512", steps=2, strength=0.6),
    "full-1step-512": Scenario("full-1step-512", cfg_type="full"),
    "self-1step-512": Scenario("self-1step-512", cfg_type="self"),
    "txt2img-1step-512": Scenario("txt2img-1step-512", mode="txt2img", strength=1.0),
    "img2img-1step-768x432": Scenario("img2img-1step-768x432", width=768, height=432, app_path=True),
    "img2img-1step-512-fbs2": Scenario("img2img-1step-512-fbs2", frame_buffer_size=2, lanes=(1, 2)),
    "img2img-1step-512-fbs4": Scenario("img2img-1step-512-fbs4", frame_buffer_size=4, lanes=(1, 2)),
    # SDXL-Turbo (SDXL UNet, TAESD-XL), 1 step, host uint8 -> host uint8 one at a time and 2 / 4 in flight
    "sdxl-img2img-1step-512": Scenario("sdxl-img2img-1step-512", app_path=True, stages=True, lanes=(1, 2, 4),
                                       family="sdxl"),
    "sdxl-img2img-1step-1024": Scenario("sdxl-img2img-1step-1024", width=1024, height=1024, app_path=True,
                                        stages=True, lanes=(1, 2, 4), family="sdxl"),
    # issue 11's comparison of engine variants: one frame at a time, stages and kernels, no lanes
    "speed-1step-512": Scenario("speed-1step-512", app_path=True, stages=True),
    "ip-adapter-1step-512": Scenario("ip-adapter-1step-512", app_path=True, ip_adapter=True),  # vs img2img-1step-512
}

COMPARED_FRAMES = 4  # output frames kept per scenario for the numerical difference between variants


def family_scenarios(family: str) -> tuple[str, ...]:
    """The scenarios that run on one model family (what `--all-scenarios` runs without `--scenarios`)."""
    return tuple(name for name, s in SCENARIOS.items() if s.family == family)


# issue 10: ControlNets on the same 1-step 512 stream, host uint8 -> host uint8 (`bench.run --conditioning`)
CONDITIONING_SCENARIOS = {
    "cn-canny": Scenario("cn-canny", app_path=True, controlnets=(("canny", 1.0),)),
    "cn-depth": Scenario("cn-depth", app_path=True, controlnets=(("depth", 1.0),)),
    "cn-two": Scenario("cn-two", app_path=True, controlnets=(("canny", 1.0), ("depth", 1.0))),
    "cn-scale0": Scenario("cn-scale0", app_path=True, controlnets=(("canny", 0.0),)),
}
CONDITIONING_BASELINE = "img2img-1step-512"  # the plain stream the conditioning targets compare with
# by name only (--scenarios): the depth lever if cn-depth misses its target
CONDITIONING_EXTRA = {"cn-depth-392": Scenario("cn-depth-392", app_path=True, controlnets=(("depth", 1.0),),
                                               depth_side=392)}
ALL_SCENARIOS = {**SCENARIOS, **CONDITIONING_SCENARIOS, **CONDITIONING_EXTRA}


def controlnet_stack(s: Scenario, components: Any):
    """The scenario's ControlNets: random-weight SD 2.1 ControlNets (one per unit) with their
    preprocessors on the device (canny; depth = a Depth-Anything-V2-Small-size model)."""
    from dreamcam.core.controlnet import ControlNetStack, ControlNetUnit
    from dreamcam.core.preprocess import Canny

    from .models import controlnet, depth_model

    units = []
    for i, (kind, scale) in enumerate(s.controlnets):
        pre = (depth_model(components.device, components.dtype, side=s.depth_side) if kind == "depth"
               else Canny(device=components.device))
        units.append(ControlNetUnit(f"{kind}{i}", controlnet(components.unet, i), pre, scale))
    return ControlNetStack(units)


def frames_for(s: Scenario, count: int = 8, seed: int = 0) -> list[np.ndarray]:
    """Smooth random colour fields (not flat, not white noise)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        small = rng.integers(0, 256, (s.height // 32 + 1, s.width // 32 + 1, 3), dtype=np.uint8)
        big = np.repeat(np.repeat(small, 32, 0), 32, 1)[: s.height, : s.width]
        out.append(np.ascontiguousarray(big))
    return out


def _stats(st: FrameStats) -> dict:
    return st.as_dict()


def run_scenario(s: Scenario, components: Any, modules: Any, *, frames: int, device: str, config: Any = None,
                 outputs: dict[str, np.ndarray] | None = None, first_frame_timeout_s: float | None = None) -> dict:
    """Times one scenario with the given engine modules through the app's own graph driver
    (`engines.driver.StreamDriver`). Returns a dict of numbers; `outputs[s.name]` gets the uint8
    outputs of the first COMPARED_FRAMES input frames (for the difference between variants);
    the first frame (capture, compiles of new shapes) may take `first_frame_timeout_s` at most."""
    from dreamcam.core.stream import StreamDiffusion
    from dreamcam.engines.driver import StreamDriver

    result: dict[str, Any] = {"scenario": s.name, "frames_per_call": s.frame_buffer_size}
    cuda = device == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    stream = StreamDiffusion(components, s.stream_config(), modules=modules)
    if s.controlnets:
        stream.set_controlnets(controlnet_stack(s, components))
        result["controlnets"] = [f"{k}@{v}" for k, v in s.controlnets]
    host = _batches(frames_for(s), s.frame_buffer_size)
    adapter = _attach_ip_adapter(stream, host[0][0], device, result) if s.ip_adapter else None
    dev = [torch.from_numpy(f).to(device) for f in host]
    driver = StreamDriver(stream, config=config)
    t0 = time.perf_counter()
    with deadline(first_frame_timeout_s):
        first = _settled(driver, host[0])  # warm-up + capture (+ compile of new shapes)
    result["capture_s"] = round(time.perf_counter() - t0, 2)
    result["graph_error"] = driver.graph_status().error
    result["capture_failures"] = driver.graphed.failures
    result["captures"] = driver.graphed.captures
    out = first.astype(np.float32)
    result["output_mean_std"] = [round(float(out.mean()), 2), round(float(out.std()), 2)]
    if outputs is not None:
        outputs[s.name] = np.stack([np.asarray(driver(host[i % len(host)])) for i in range(COMPARED_FRAMES)])

    # device path: frames already on the GPU, one sync per frame
    result["device"] = _stats(frame_times(lambda i: (driver(dev[i % len(dev)]), sync()), frames))
    result["device_throughput_fps"] = round(throughput(lambda: driver(dev[0]), frames), 1)
    if s.app_path:  # numpy uint8 in, numpy uint8 out, one frame at a time (the app's call)
        result["host_to_host"] = _stats(frame_times(lambda i: driver(host[i % len(host)]), frames))
        result["host_to_host_pipelined_fps"] = round(_pipelined(driver, host, frames), 1)
        result["core_call_numpy"] = _stats(frame_times(lambda i: driver(host[i % len(host)][0]), frames))  # HxWx3
    if cuda:
        result["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        result["reserved_gb"] = round(torch.cuda.memory_reserved() / 2**30, 2)
    if s.stages and cuda:
        result["stages_ms"] = stage_times(stream, modules, dev[0])
        result["top_kernels"] = kernel_profile(lambda: driver(dev[0]))
    if adapter is not None:
        result["ip_live_recaptures"] = _ip_live_recaptures(driver, adapter, host)
    result["captures_end"] = driver.graphed.captures  # more than `captures`: something recaptured mid-run
    result["graph_error"] = result["graph_error"] or driver.graph_status().error
    driver.close()
    # last: each in-flight driver captures graphs of its own (their memory is not in peak_mem_gb)
    if s.lanes:
        result["in_flight"] = {str(k): _in_flight(stream, config, host, frames, k) for k in s.lanes}
    failures = [r.get("graph_error") for r in result.get("in_flight", {}).values() if r.get("graph_error")]
    if failures and not result["graph_error"]:
        result["graph_error"] = failures[0]
    if adapter is not None:
        stream.set_ip_adapter(None)  # the shared UNet goes back to plain for the next scenario
    del driver, stream
    return result


def _settled(driver, frame: np.ndarray) -> np.ndarray:
    """The first frame, and if it met new shapes that compile in the background (engines/background.py),
    the wait for them and one more frame, which captures the compiled step: what follows is timed on it."""
    from dreamcam.engines.background import compiling, wait_idle

    out = driver(frame)
    if compiling():
        wait_idle()
        out = driver(frame)
    return out


def _attach_ip_adapter(stream, style, device: str, result: dict):
    """A random IP-Adapter on the stream, its style image encoded once (timed, ms)."""
    from .models import ip_adapter

    adapter = ip_adapter(stream.components, device, stream.dtype, small=device != "cuda")
    t0 = time.perf_counter()
    adapter.set_image(style)
    sync()
    result["ip_image_encode_ms"] = round((time.perf_counter() - t0) * 1e3, 2)
    stream.set_ip_adapter(adapter)
    return adapter


def _ip_live_recaptures(driver, adapter, host: list[np.ndarray]) -> int:
    """Captures caused by a live scale change and a new style image (should be 0)."""
    before = driver.graphed.captures
    adapter.set_scale(0.5)
    driver(host[0])
    adapter.set_image(host[1][0])
    driver(host[0])
    return driver.graphed.captures - before


def _batches(frames: list[np.ndarray], fbs: int) -> list[np.ndarray]:
    """(fbs,H,W,3) host batches cycling through the frames."""
    return [np.stack([frames[(i + j) % len(frames)] for j in range(fbs)]) for i in range(len(frames))]


def _keep_in_flight(submit, host: list[np.ndarray], frames: int, lanes: int) -> tuple[float, np.ndarray]:
    """Submit `frames` frames keeping up to `lanes` uncollected, collecting in submit order (as the
    app's runner does). Returns the seconds taken and each frame's ms from submit to result."""
    pending: list[tuple[Any, float]] = []
    latency: list[float] = []

    def collect() -> None:
        handle, t_submit = pending.pop(0)
        handle.result()
        latency.append(time.perf_counter() - t_submit)

    start = time.perf_counter()
    for i in range(frames):
        if len(pending) == lanes:
            collect()
        t_submit = time.perf_counter()
        pending.append((submit(host[i % len(host)]), t_submit))
    while pending:
        collect()
    return time.perf_counter() - start, np.array(latency) * 1e3


def _in_flight(stream, config, host: list[np.ndarray], frames: int, lanes: int) -> dict:
    """Host -> host with `lanes` frames on the GPU at once (each in its own graph and CUDA stream),
    results collected in submit order, through the app's driver. Latency = submit to result."""
    from dreamcam.engines.driver import StreamDriver

    driver = StreamDriver(stream, lanes, config=config)
    for i in range(3):  # the first captures
        _settled(driver, host[i % len(host)])
    seconds, ms = _keep_in_flight(driver.submit, host, frames, lanes)
    fbs = host[0].shape[0]
    status = driver.graph_status()
    driver.close()
    return {"lanes_used": status.lanes, "fps": round(frames * fbs / seconds, 1),
            "latency_p50_ms": round(float(np.percentile(ms, 50)), 2),
            "latency_p99_ms": round(float(np.percentile(ms, 99)), 2),
            "graph_error": status.error, "capture_failures": driver.graphed.failures}


def _pipelined(driver, host: list[np.ndarray], frames: int) -> float:
    """Two frames submitted on one lane: submit N+1 before collecting N (host work overlaps the GPU)."""
    pending = driver.submit(host[0])
    sync()
    start = time.perf_counter()
    for i in range(1, frames + 1):
        nxt = driver.submit(host[i % len(host)])
        pending.result()
        pending = nxt
    pending.result()
    return frames / (time.perf_counter() - start)


def stage_times(stream, modules, frame_dev: torch.Tensor) -> dict:
    """GPU time of each stage alone (each captured in its own graph) and of the whole step."""
    from dreamcam.core import frames as fr

    dtype = stream.dtype
    with torch.no_grad():
        images = fr.to_unit(frame_dev, dtype)
        lat = modules.encode(images)
        b = stream.unet_batch
        sample = torch.randn(b, *lat.shape[1:], device=lat.device, dtype=dtype)
        out = {
            "pre_uint8_to_unit": graph_ms(lambda: fr.to_unit(frame_dev, dtype)),
            "encode": graph_ms(lambda: modules.encode(images)),
            "unet": graph_ms(lambda: modules.unet(sample, stream.unet_timesteps, stream.unet_embeds, **stream.unet_cond)),
            "decode": graph_ms(lambda: modules.decode(lat)),
            "post_unit_to_uint8": graph_ms(lambda: fr.from_unit(images)),
        }
    return {k: round(v, 3) for k, v in out.items()}


def kernel_profile(fn, reps: int = 20, top: int = 15) -> list[list]:
    """The GPU kernels of one frame, by total time: [name, us per frame, launches per frame]."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        sync()
    rows = []
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if us > 0:
            rows.append([e.key[:90], round(us / reps, 1), round(e.count / reps, 1)])
    rows.sort(key=lambda r: -r[1])
    total = sum(r[1] for r in rows)
    return [["TOTAL", round(total, 1), round(sum(r[2] for r in rows), 1)]] + rows[:top]
