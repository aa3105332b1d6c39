"""`make_sink`: a sink spec -> a sink. Specs: `vcam` | `vcam:BACKEND` (pyvirtualcam backend name) |
`file:PATH` (video file) | `images:DIR` (numbered PNGs) | `preview` (a window) | `null`."""

from __future__ import annotations

from .base import Sink, SinkError


def make_sink(spec: str, *, width: int, height: int, fps: float, max_frames: int | None = None,
              overwrite: bool = False) -> Sink:
    """Build a sink from its spec. Implementations load on demand: their libraries are optional.
    File and image sinks refuse to replace what is there unless `overwrite`."""
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "null":
        from .null import NullSink

        return NullSink(max_frames=max_frames)
    if kind == "vcam":
        from .vcam import VirtualCameraSink

        return VirtualCameraSink(width, height, fps, backend=arg or None)
    if kind == "file":
        from .video import VideoFileSink

        if not arg:
            raise SinkError("sink: file needs a path, e.g. file:out.mp4")
        return VideoFileSink(arg, width, height, fps, max_frames=max_frames, overwrite=overwrite)
    if kind == "images":
        from .images import ImageSequenceSink

        if not arg:
            raise SinkError("sink: images needs a folder, e.g. images:frames/")
        return ImageSequenceSink(arg, max_frames=max_frames, overwrite=overwrite)
    if kind == "preview":
        from .preview import PreviewSink

        return PreviewSink()
    raise SinkError(f"sink: unknown kind {kind!r}; use vcam[:backend], file:PATH, images:DIR, preview or null")
