"""What live LoRAs cost per frame, against the same LoRAs fused (docs/conditioning.md, "Live weights
vs fusing"). N random LoRAs of a rank are saved once as diffusers LoRA files for the bench UNet's
real layer shapes, applied through `core.lora.LoraStack` (live: peft adapters, weights in lora_B),
timed 1-step 512 host uint8 -> host uint8 one frame at a time through the app's graph driver, then
fused (`LoraStack.fuse()`: W0 + sum w s B A in place) and timed again with a fresh capture (fusing
changes what each layer computes). For each: the time of a weight change (`set_weights`, until the
GPU is done), whether the next frames needed a recapture (graph captures before == after) and
whether the output changed (the graph reads the new weights).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .timing import frame_times, sync

# what a typical full LoRA adapts: attention projections, feed-forward, the transformers' in/out projections
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")


def parse_cases(text: str) -> list[tuple[int, int]]:
    """"N:RANK,..." -> [(N, rank), ...]."""
    cases = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        n, _, rank = part.partition(":")
        if not (n.isdigit() and rank.isdigit() and int(n) > 0 and int(rank) > 0):
            raise ValueError(f"--loras: each item is N:RANK (e.g. 2:16), got {part!r}")
        cases.append((int(n), int(rank)))
    return cases


def target_layers(unet: torch.nn.Module, targets: Sequence[str] = TARGETS) -> dict[str, tuple[int, int]]:
    """name -> (in, out features) of every Linear layer of a UNet without LoRAs whose name ends
    with a target (read once: with adapters attached those names are peft wrappers, not Linears)."""
    return {name: (m.in_features, m.out_features) for name, m in unet.named_modules()
            if isinstance(m, torch.nn.Linear) and any(name.endswith("." + t) for t in targets)}


def save_random_lora(layers: dict[str, tuple[int, int]], folder: Path, rank: int, seed: int) -> Path:
    """A random LoRA for each of `layers` (`target_layers`), saved in diffusers' LoRA file layout
    with PEFT keys (folder/pytorch_lora_weights.safetensors). A ~ N(0, 1/d_in), B ~ N(0, 0.02^2)."""
    from diffusers import StableDiffusionPipeline

    if not layers:
        raise ValueError("no target Linear layers: the UNet has none of the targets, or adapters are attached")
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, (d_in, d_out) in layers.items():
        state[f"{name}.lora_A.weight"] = torch.randn(rank, d_in, generator=gen) / d_in ** 0.5
        state[f"{name}.lora_B.weight"] = torch.randn(d_out, rank, generator=gen) * 0.02
    folder.mkdir(parents=True, exist_ok=True)
    # PEFT key format throughout (diffusers' converter rewrites only the attention keys: a mixed file)
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=state, safe_serialization=True)
    return folder


def _timed(fn) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return round((time.perf_counter() - start) * 1e3, 3)


def _measure(stream, config, host: list[np.ndarray], frames: int, stack, weights_b: dict) -> dict:
    """fps of a fresh capture, then a weight change: its time, captures, whether the output moved."""
    from dreamcam.engines.driver import StreamDriver

    driver = StreamDriver(stream, config=config)
    try:
        t0 = time.perf_counter()
        driver(host[0])
        capture_s = round(time.perf_counter() - t0, 2)
        stats = frame_times(lambda i: driver(host[i % len(host)]), frames)
        out: dict[str, Any] = {"fps": round(stats.fps, 1), "p50_ms": round(stats.p50_ms, 3), "capture_s": capture_s}
        if stack is None:
            return out
        before = driver(host[0]).astype(np.int16)
        captures = driver.graphed.captures
        out["set_weights_ms"] = _timed(lambda: stack.set_weights(weights_b))
        after = driver(host[0]).astype(np.int16)
        driver(host[1])
        out["recaptured"] = driver.graphed.captures != captures
        out["output_change"] = round(float(np.abs(after - before).mean()), 3)
        out["graph_error"] = driver.graph_status().error
        return out
    finally:
        driver.close()


def run_loras(components: Any, modules: Any, cases: Sequence[tuple[int, int]], *, folder: Path, frames: int,
              config: Any = None, size: int = 512, budget_left=lambda: float("inf"), log=print) -> dict:
    """Live vs fused LoRAs on `components.unet` (the same modules throughout: the compiled engine
    recompiles when the UNet's layers change). Leaves the UNet without LoRAs."""
    from dreamcam.core.config import StreamConfig
    from dreamcam.core.lora import LoraSpec, LoraStack
    from dreamcam.core.stream import StreamDiffusion

    from .scenarios import Scenario, frames_for

    scenario = Scenario("lora", width=size, height=size)
    stream = StreamDiffusion(components, StreamConfig(width=size, height=size, steps=1, strength=0.5, cfg_type="none",
                                                      prompt="a watercolor painting of a city"), modules=modules)
    host = frames_for(scenario)
    result: dict[str, Any] = {"targets": list(TARGETS), "size": size, "plain": _measure(stream, config, host, frames,
                                                                                         None, {})}
    log(f"  loras: plain {result['plain']}")
    stack = LoraStack(components)
    layers = target_layers(components.unet)
    rows = []
    for n, rank in cases:
        if budget_left() < 120:
            rows.append({"loras": n, "rank": rank, "skipped": "time budget"})
            continue
        row: dict[str, Any] = {"loras": n, "rank": rank}
        try:
            specs = [LoraSpec(str(save_random_lora(layers, folder / f"r{rank}-{i}", rank, seed=1000 * rank + i)),
                              0.8, name=f"l{i}") for i in range(n)]
            row["apply_ms"] = _timed(lambda: stack.apply(specs))
            row["layers"] = sum(1 for name, _ in components.unet.named_modules() if name.endswith(".lora_A.l0"))
            new_weights = {f"l{i}": 0.3 for i in range(n)}
            row["live"] = _measure(stream, config, host, frames, stack, new_weights)
            stack.set_weights({f"l{i}": 0.8 for i in range(n)})
            row["fuse_ms"] = _timed(stack.fuse)
            row["fused"] = _measure(stream, config, host, frames, stack, new_weights)
            row["unfuse_ms"] = _timed(stack.unfuse)
        except Exception as exc:  # noqa: BLE001 - record and go on
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        finally:
            stack.clear()
        rows.append(row)
        log(f"  loras: {row}")
    result["rows"] = rows
    return result


def report_lines(result: dict) -> list[str]:
    if "rows" not in result:
        return [f"LoRAs: {result.get('error') or result.get('skipped')}", ""]
    plain = result["plain"]
    lines = [f"## LoRAs: live weights vs fused (1-step img2img {result['size']}, host uint8 -> host uint8)", "",
             f"Random LoRAs on every {', '.join(result['targets'])} Linear layer of the bench UNet, through "
             f"`core.lora.LoraStack`, {result.get('engine', '?')} engine + CUDA graph; without LoRAs: "
             f"{plain['fps']:.1f} fps ({plain['p50_ms']:.2f} ms p50). "
             "set_weights = a weight change until the GPU is done; recapture = whether the next frame needed a new "
             "CUDA graph; output change = mean |out - out before| (grey levels) after it.", "",
             "| LoRAs x rank | layers each | live fps | live p50 ms | live set_weights ms | fused fps | fused p50 ms "
             "| fused set_weights ms | fuse ms | recapture on a weight change (live / fused) | output change (live / fused) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        head = f"| {r['loras']} x {r['rank']} |"
        if "error" in r or "skipped" in r:
            lines.append(head + f" {r.get('error') or r.get('skipped')} |" + " |" * 9)
            continue
        live, fused = r["live"], r["fused"]
        lines.append(f"{head} {r['layers']} | {live['fps']:.1f} | {live['p50_ms']:.2f} | {live['set_weights_ms']:.2f} | "
                     f"{fused['fps']:.1f} | {fused['p50_ms']:.2f} | {fused['set_weights_ms']:.2f} | {r['fuse_ms']:.1f} | "
                     f"{'yes' if live['recaptured'] else 'no'} / {'yes' if fused['recaptured'] else 'no'} | "
                     f"{live['output_change']:.2f} / {fused['output_change']:.2f} |")
    return lines + [""]
