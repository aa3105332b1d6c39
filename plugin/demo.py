"""`dreamcam demo`: the whole app offline: test pattern -> the full core on a small random-weight
model (built once into a cache folder) on the CPU -> a video file; prints frames per second."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .processor import Processor, Ready, Work
from .settings import AppSettings, StreamSettings

CACHE_ENV = "DREAMCAM_CACHE_DIR"


@dataclass
class DemoResult:
    frames: int
    seconds: float
    fps: float
    infer_ms: float
    out: Path


def cache_dir() -> Path:
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_cache_dir("dreamcam", appauthor=False))


def tiny_model(folder: Path | None = None, say: Callable[[str], None] = print) -> Path:
    """A small random-weight SD-Turbo-shaped model, built once and reused."""
    folder = folder or cache_dir() / "tiny-sd21"
    if not (folder / "model_index.json").is_file():
        from dreamcam.core.tiny import make_tiny_model

        say(f"building a small random-weight model in {folder} (once)")
        make_tiny_model(folder)
    return folder


class SideBySide(Processor):
    """Shows the input next to the output (a random-weight model's output alone says little)."""

    def __init__(self, processor: Processor) -> None:
        self.processor = processor
        self.engine_name = processor.engine_name
        self.fits_frames = processor.fits_frames

    def submit(self, image: np.ndarray) -> Work:
        return Ready(np.concatenate([image, self.processor(image)], axis=1))

    def update(self, **changes: Any) -> None:
        self.processor.update(**changes)

    @property
    def frames_skipped(self) -> int:
        return self.processor.frames_skipped

    @property
    def graph_warning(self) -> str:
        return self.processor.graph_warning

    def close(self) -> None:
        self.processor.close()


def demo_settings(model: Path, out: Path, device: str) -> AppSettings:
    taesd = model / "taesd"
    return AppSettings(source="pattern", sink=f"file:{out}", model=str(model),
                       tiny_vae=str(taesd) if taesd.is_dir() else None, engine="eager", device=device,
                       dtype="float32" if device == "cpu" else "float16", fps=30.0, control_port=0)


def run_demo(out: Path, frames: int = 60, size: int = 256, device: str = "cpu", prompt: str | None = None,
             say: Callable[[str], None] = print, model_dir: Path | None = None,
             side_by_side: bool = True) -> DemoResult:
    from .app import DreamcamApp
    from .pipeline import build_processor
    from .sinks.video import VideoFileSink

    model = tiny_model(model_dir, say)
    app_settings = demo_settings(model, out, device)
    stream = StreamSettings(width=size, height=size, **({"prompt": prompt} if prompt else {}))
    processor = build_processor(app_settings, stream, progress=say, local_files_only=True)
    width = size * 2 if side_by_side else size
    # the demo replaces its own file and plays at a fixed rate (it renders slower than real time)
    sink = VideoFileSink(out, width, size, app_settings.fps, max_frames=frames, overwrite=True, realtime=False)
    app = DreamcamApp(app_settings, stream, processor=SideBySide(processor) if side_by_side else processor,
                      sink=sink, max_frames=frames, output_size=(width, size))
    say(f"running {frames} frames of {size}x{size} through the pipeline on {device}")
    start = time.monotonic()
    app.start()
    try:
        app.wait(timeout=max(60.0, frames * 5.0))
    finally:
        app.stop()
    seconds = time.monotonic() - start
    written = getattr(app.sink, "frames_written", 0)
    infer_ms = app.runner.status().infer_ms if app.runner else 0.0
    return DemoResult(written, seconds, written / seconds if seconds else 0.0, infer_ms, out)
