"""A video file sink (PyAV) that survives a crash: what was written stays readable after a
`kill -9` or a power cut, and a full disk stops the recording cleanly with the frames kept.

How: MP4/MOV files are fragmented (`empty_moov`, a fragment per keyframe), MKV/WebM files get a
cluster per keyframe; a keyframe is forced every KEYFRAME_S seconds and every packet goes to the
OS at once (`flush_packets`), so at most the last second is lost. x264 runs without lookahead
(`tune=zerolatency`): no frames wait inside the encoder. At each keyframe the sink notes the file
size, which is the end of the last complete fragment; when a write fails the file is cut back
to it, so what remains is whole. Frames are stamped with the time they were written (the
recording plays at real speed, whatever the inference rate), or at a fixed `fps` (`realtime=False`).
"""

from __future__ import annotations

import fractions
import logging
import os
import time
from pathlib import Path

import numpy as np

from .base import FrameLimit, SinkError, SinkFailed, describe_os_error

log = logging.getLogger(__name__)

KEYFRAME_S = 1.0  # at most this much of the recording is lost by a crash
TIME_BASE = fractions.Fraction(1, 1000)  # real-time stamps in milliseconds
FRAGMENTED = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}
MUXER_OPTIONS = {".mp4": FRAGMENTED, ".mov": FRAGMENTED, ".m4v": FRAGMENTED,
                 ".mkv": {"cluster_time_limit": "100"}, ".webm": {"cluster_time_limit": "100"}}


def count_packets(path: str | os.PathLike) -> int:
    """Video frames in a file, counted from its packets (fast: nothing is decoded); 0 when unreadable."""
    import av

    try:
        with av.open(str(path)) as container:
            return sum(1 for packet in container.demux(video=0) if packet.size)
    except Exception:  # noqa: BLE001 - an unreadable file holds no frames
        return 0


class VideoFileSink(FrameLimit):
    name = "file"
    fps = None  # unpaced: every new output frame is written once
    repeat_last = False

    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: float, *,
                 max_frames: int | None = None, codec: str | None = None, overwrite: bool = False,
                 realtime: bool = True) -> None:
        self.path = Path(path)
        self.width, self.height, self.rate = width, height, fps
        self.max_frames = max_frames
        self.codec = codec
        self.overwrite, self.realtime = overwrite, realtime
        self.frames_written = 0  # frames in the file (after a failure: those that survived)
        self._container = None
        self._stream = None
        self._inode: tuple[int, int] | None = None
        self._t0 = 0.0
        self._last_pts = -1
        self._last_key = -float("inf")
        self._safe_size = 0  # bytes of the file that hold only complete fragments

    # ---- open ------------------------------------------------------------------------------
    def open(self) -> None:
        import av

        if self.path.parent and not self.path.parent.exists():
            raise SinkError(f"video file: folder {self.path.parent} does not exist")
        if self.path.is_dir():
            raise SinkError(f"video file {self.path} is a folder; give a file name such as {self.path / 'out.mp4'}")
        if self.path.exists() and not self.overwrite:
            raise SinkError(f"video file {self.path} already exists; pass --overwrite to replace it, "
                            "or choose another name")
        existed = self.path.exists()
        codec = self.codec or ("libx264" if "libx264" in av.codecs_available else "mpeg4")
        options = {**MUXER_OPTIONS.get(self.path.suffix.lower(), {}), "flush_packets": "1"}
        try:
            self._container = av.open(str(self.path), mode="w", options=options)
            self._stream = self._container.add_stream(codec, rate=fractions.Fraction(self.rate).limit_denominator(1001))
        except Exception as exc:
            self._close_quietly() if existed else self._discard()
            raise SinkError(f"video file {self.path}: cannot write ({describe_os_error(exc)}); use a name "
                            "ending in .mp4 or .mkv in a folder you can write to") from exc
        self._stream.width, self._stream.height = self.width, self.height
        self._stream.pix_fmt = "yuv420p"
        if self.realtime:
            self._stream.codec_context.time_base = TIME_BASE
        if codec == "libx264":
            self._stream.options = {"preset": "veryfast", "crf": "20", "tune": "zerolatency"}
        self._inode = None  # the file appears with the first packet
        self.frames_written, self._last_pts, self._last_key, self._safe_size = 0, -1, -float("inf"), 0

    # ---- write -----------------------------------------------------------------------------
    def write(self, image: np.ndarray) -> None:
        import av

        if self._container is None or self.done:
            return
        h, w = image.shape[:2]
        if (w, h) != (self.width, self.height):
            raise ValueError(f"frame is {w}x{h}, the video is {self.width}x{self.height}")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        now = time.monotonic()
        if self.frames_written == 0:
            self._t0 = now
        frame.pts = self._next_pts(now)
        if self.realtime:
            frame.time_base = TIME_BASE
        if now - self._last_key >= KEYFRAME_S:
            frame.pict_type = av.video.frame.PictureType.I  # a new fragment starts here
            self._last_key = now
        try:
            for packet in self._stream.encode(frame):
                self._mux(packet)
        except SinkFailed:
            raise
        except Exception as exc:
            raise self._fail(exc) from exc

    def _next_pts(self, now: float) -> int:
        pts = round((now - self._t0) * 1000) if self.realtime else self.frames_written
        pts = max(pts, self._last_pts + 1)
        self._last_pts = pts
        return pts

    def _mux(self, packet) -> None:
        self._container.mux(packet)
        if packet.is_keyframe:  # the muxer has just written the previous fragment
            self._safe_size = self._check_file()
        self.frames_written += 1

    def _check_file(self) -> int:
        """The file's size; a recording whose file was deleted or replaced would be lost without
        a word, so that stops it."""
        try:
            stat = self.path.stat()
        except OSError:
            stat = None
        if self._inode is None and stat is not None:
            self._inode = (stat.st_dev, stat.st_ino)
        if stat is None or (stat.st_dev, stat.st_ino) != self._inode:
            self._close_quietly()
            raise SinkFailed(f"video file {self.path} was deleted or replaced while recording; "
                             "recording stopped")
        return stat.st_size

    def _fail(self, exc: BaseException) -> SinkFailed:
        """Stop recording after a write error: cut the file back to its complete fragments."""
        self._close_quietly()
        try:
            if self.path.stat().st_size > self._safe_size:
                os.truncate(self.path, self._safe_size)
        except OSError:
            log.debug("could not cut %s back to %d bytes", self.path, self._safe_size, exc_info=True)
        self.frames_written = count_packets(self.path) if self._safe_size else 0
        return SinkFailed(f"video file {self.path}: {describe_os_error(exc)}; recording stopped, "
                          f"{self.frames_written} frames are in the file")

    # ---- close -----------------------------------------------------------------------------
    def close(self) -> None:
        """Flush the encoder and finish the file; a file that got no frame is removed. Raises
        SinkFailed (the file cut back to its complete fragments) when the last write fails."""
        container = self._container
        if container is None:
            return
        if self.frames_written == 0:
            self._discard()
            return
        try:
            for packet in self._stream.encode(None):
                self._mux(packet)
            self._container = None
            container.close()
        except SinkFailed:
            raise
        except Exception as exc:
            raise self._fail(exc) from exc

    def _close_quietly(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            try:
                container.close()
            except Exception:  # noqa: BLE001 - already failing: the first error is the one reported
                log.debug("closing %s after an error failed", self.path, exc_info=True)

    def _discard(self) -> None:
        """Close and remove a file that holds no frame (an unreadable stub must not stay behind)."""
        self._close_quietly()
        try:
            self.path.unlink()
        except OSError:
            pass
