"""`make_source`: a source spec -> a source. Specs: `pattern` | `screen` | `screen:N` (monitor N) |
`screen:x,y,w,h` | `camera` | `camera:N` | `camera:NAME_OR_PATH` | `file:PATH` (video file, loops)."""

from __future__ import annotations

from .base import Source, SourceError


def make_source(spec: str, *, width: int = 512, height: int = 512, fps: float = 30.0) -> Source:
    """Build a source from its spec; `width`/`height` size the test pattern and ask the camera.
    Implementations load on demand: their libraries (mss, OpenCV) are optional."""
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "pattern":
        from .pattern import PatternSource

        return PatternSource(width, height, fps)
    if kind == "screen":
        from .screen import ScreenSource, parse_screen_arg

        monitor, region = parse_screen_arg(arg)
        return ScreenSource(monitor=monitor, region=region, fps=fps)
    if kind == "camera":
        from .camera import CameraSource

        device: int | str = int(arg) if arg.strip().isdigit() else (arg or 0)
        return CameraSource(device, width=width, height=height, fps=fps)
    if kind == "file":
        from .video import VideoFileSource

        if not arg:
            raise SourceError("source: file needs a path, e.g. file:clip.mp4")
        return VideoFileSource(arg, fps=None)
    raise SourceError(
        f"source: unknown kind {kind!r}; use pattern, screen[:N|:x,y,w,h], camera[:N], or file:PATH"
    )
