"""The app end to end: `dreamcam run` on a random-weight SD-Turbo or SDXL-Turbo model, read from its own stats.

`save_model(folder, family=...)` writes the bench's random UNet, text encoder(s), tokenizer(s) and
scheduler (bench/configs; SDXL: both text encoders, cut in depth) with `save_pretrained` into a
diffusers folder, plus a random TAESD in `folder/taesd` (SDXL: TAESD-XL in `folder/taesdxl`). `run_app(folder, ...)` starts the real CLI in a child process
(`dreamcam run --source pattern --fps 240 --sink null --engine compiled --frames N -v`) and reads
the runner's once-a-second status log lines (fps in / inference / out, latency, dropped) after the
warm-up. `python -m bench.app_e2e [--sdxl]` runs the app cases of the benchmark and prints JSON
(SD-Turbo: 512 one at a time and 4 in flight; SDXL: 512 and 1024 one at a time).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

# the runner's status log line (plugin/runner.py: Runner._maybe_publish_status)
STATUS_LINE = re.compile(r"in (?P<fps_in>[\d.]+) fps \| infer (?P<infer_fps>[\d.]+) fps (?P<infer_ms>[\d.]+) ms \| "
                         r"out (?P<fps_out>[\d.]+) fps \| latency (?P<latency_ms>[\d.]+) ms \| dropped (?P<dropped>\d+)")
CASES = {  # name -> extra CLI options (the two app runs, and the first without its similarity filter)
    "one-at-a-time": [],
    "one-at-a-time-no-filter": ["--no-similarity-filter"],
    "in-flight-4-guidance-1": ["--frames-in-flight", "4", "--guidance", "1.0"],
}
SDXL_CASES = {  # name -> extra CLI options, the --size each runs at
    "sdxl-512-one-at-a-time": ["--size", "512"],
    "sdxl-1024-one-at-a-time": ["--size", "1024"],
}
TAESD_FOLDER = {"sd21": "taesd", "sdxl": "taesdxl"}


def cases_for(family: str) -> dict[str, list[str]]:
    return SDXL_CASES if family == "sdxl" else CASES
WARMUP_LINES = 3  # status lines skipped after the first processed frame (capture, first seconds)


def save_model(folder: Path, *, small: bool = False, family: str = "sd21") -> Path:
    """A diffusers folder the app's loader reads like a downloaded SD-Turbo / SDXL-Turbo (random weights)."""
    from .models import build

    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return folder
    device = "cuda" if torch.cuda.is_available() and not small else "cpu"
    models = build(device, torch.float16 if device == "cuda" else torch.float32, small=small, family=family)
    parts = {"unet": ["diffusers", "UNet2DConditionModel"], "scheduler": ["diffusers", type(models.scheduler).__name__],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"]}
    if family == "sdxl":
        parts.update(text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
                     tokenizer_2=["transformers", "CLIPTokenizer"])
    for name in parts:
        getattr(models, name).save_pretrained(folder / name)
    models.vae.save_pretrained(folder / TAESD_FOLDER[family])
    pipeline = "StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline"
    index = {"_class_name": pipeline, "_diffusers_version": "0.0", **parts, "vae": [None, None]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=1))
    return folder


def parse_status(text: str) -> list[dict[str, float]]:
    return [{k: float(v) for k, v in m.groupdict().items()} for m in STATUS_LINE.finditer(text)]


def summarize(lines: list[dict[str, float]]) -> dict[str, Any]:
    """Medians of the steady-state status lines (after the first processed frames)."""
    started = [i for i, line in enumerate(lines) if line["infer_fps"] > 0]
    steady = lines[started[0] + WARMUP_LINES:] if started else []
    if not steady:
        return {"error": f"no steady status lines (of {len(lines)})"}
    out: dict[str, Any] = {k: round(statistics.median(line[k] for line in steady), 1)
                           for k in ("fps_in", "infer_fps", "infer_ms", "fps_out", "latency_ms")}
    out["status_lines"] = len(steady)
    return out


def run_app(folder: Path, extra: list[str], *, frames: int, cache_dir: Path, timeout_s: float,
            size: int = 512, device: str = "cuda", engine: str = "compiled", family: str = "sd21") -> dict[str, Any]:
    """`extra` options come last: a `--size` there wins over `size`."""
    cmd = [sys.executable, "-m", "dreamcam.plugin.cli", "run", "--model", str(folder),
           "--tiny-vae", str(folder / TAESD_FOLDER[family]), "--source", "pattern", "--fps", "240", "--sink", "null",
           "--engine", engine, "--size", str(size), "--device", device, "--control-port", "0", "--web-port", "0",
           "--frames", str(frames), "-v", *extra]
    env = dict(os.environ, DREAMCAM_ENGINE_CACHE=str(cache_dir), HF_HUB_OFFLINE="1")
    start = time.monotonic()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired as exc:
        text = (exc.stderr or b"").decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        result = summarize(parse_status(text))
        result["error"] = f"timed out after {timeout_s:.0f} s"
        return result
    text = done.stdout + done.stderr
    result = summarize(parse_status(text))
    result["seconds"] = round(time.monotonic() - start, 1)
    result["command"] = "dreamcam " + " ".join(cmd[3:])
    graph = [line for line in text.splitlines() if "without a CUDA graph" in line]
    result["graph_warning"] = graph[-1][-300:] if graph else None
    if done.returncode:
        result["error"] = f"exit {done.returncode}: {text.strip()[-400:]}"
    return result


def _without_size(options: list[str]) -> list[str]:
    out, skip = [], False
    for option in options:
        if not skip and option != "--size":
            out.append(option)
        skip = option == "--size"
    return out


def run_cases(folder: Path, *, frames: int, cache_dir: Path, timeout_s: float, small: bool = False,
              family: str = "sd21") -> dict:
    size, device, engine = (128, "cpu", "eager") if small else (512, "cuda", "compiled")
    cases = cases_for(family)
    if small:  # the code path only: every case at the small size
        cases = {name: _without_size(extra) for name, extra in cases.items()}
    return {name: run_app(folder, extra, frames=frames, cache_dir=cache_dir, timeout_s=timeout_s, size=size,
                          device=device, engine=engine, family=family) for name, extra in cases.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, help="default /tmp/dreamcam-bench-sdturbo (SDXL: -sdxlturbo)")
    ap.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("DREAMCAM_ENGINE_CACHE", "/tmp/dreamcam-cache")))
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--timeout-s", type=float, default=300, help="per app run, first compile included")
    ap.add_argument("--small", action="store_true", help="tiny widths on the CPU: checks the code, not the speed")
    ap.add_argument("--sdxl", action="store_true", help="an SDXL-Turbo folder (SDXL UNet, TAESD-XL), 512 and 1024")
    args = ap.parse_args(argv)
    family = "sdxl" if args.sdxl else "sd21"
    default = Path("/tmp/dreamcam-bench-sdxlturbo" if args.sdxl else "/tmp/dreamcam-bench-sdturbo")
    folder = save_model(args.model_dir or default, small=args.small, family=family)
    print(json.dumps(run_cases(folder, frames=args.frames, cache_dir=args.cache_dir, timeout_s=args.timeout_s,
                               small=args.small, family=family), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
