"""Screen capture via mss: a whole monitor by index or a region, at a target fps."""

from __future__ import annotations

import threading

import numpy as np

from ..frames import Frame, now
from .base import Pacer, SourceError


def parse_screen_arg(arg: str) -> tuple[int, tuple[int, int, int, int] | None]:
    """'' -> monitor 1; 'N' -> monitor N; 'x,y,w,h' -> that region."""
    arg = arg.strip()
    if not arg:
        return 1, None
    parts = [p.strip() for p in arg.split(",")]
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise SourceError(f"screen: expected a monitor number or x,y,w,h, got {arg!r}") from None
    if len(numbers) == 1:
        return numbers[0], None
    if len(numbers) == 4 and numbers[2] > 0 and numbers[3] > 0:
        return 1, (numbers[0], numbers[1], numbers[2], numbers[3])
    raise SourceError(f"screen: expected a monitor number or x,y,w,h with positive w and h, got {arg!r}")


def _new_mss():
    import mss

    factory = getattr(mss, "MSS", None) or mss.mss
    return factory()


class ScreenSource:
    def __init__(self, monitor: int = 1, region: tuple[int, int, int, int] | None = None,
                 fps: float = 30.0) -> None:
        self.monitor, self.region, self.fps = monitor, region, fps
        self.name = f"screen:{monitor}" if region is None else "screen:" + ",".join(map(str, region))
        self._pacer = Pacer(fps)
        self._local = threading.local()  # one mss instance per thread (Windows GDI handles are per thread)
        self._area: dict[str, int] | None = None
        self._index = 0

    def open(self) -> None:
        try:
            grabber = _new_mss()
        except ImportError as exc:
            raise SourceError("screen: the mss package is missing; run `pip install mss`") from exc
        except Exception as exc:
            raise SourceError(f"screen: no display to capture ({exc}); on Linux DISPLAY must point "
                              "at a running X server") from exc
        try:
            monitors = grabber.monitors
            if self.region is None:
                if not 0 <= self.monitor < len(monitors):
                    raise SourceError(f"screen: monitor {self.monitor} does not exist; there are "
                                      f"{len(monitors) - 1} (1..{len(monitors) - 1}, 0 = all)")
                area = dict(monitors[self.monitor])
            else:
                x, y, w, h = self.region
                area = {"left": x, "top": y, "width": w, "height": h}
            grabber.grab(area)  # fails now, with a clear message, rather than in the capture thread
        except SourceError:
            raise
        except Exception as exc:
            raise SourceError(f"{self.name}: cannot capture ({exc})") from exc
        finally:
            grabber.close()
        self._area = {k: area[k] for k in ("left", "top", "width", "height")}
        self._local = threading.local()
        self._pacer.reset()

    def read(self) -> Frame:
        if self._area is None:
            raise SourceError(f"{self.name}: not open")
        self._pacer.wait()
        grabber = getattr(self._local, "grabber", None)
        try:
            if grabber is None:
                grabber = self._local.grabber = _new_mss()
            shot = grabber.grab(self._area)
        except Exception as exc:
            self._local.grabber = None
            raise SourceError(f"{self.name}: capture failed ({exc})") from exc
        bgra = np.asarray(shot)
        frame = Frame(np.ascontiguousarray(bgra[:, :, 2::-1]), now(), self._index)
        self._index += 1
        return frame

    def interrupt(self) -> None:
        self._pacer.interrupt()

    def close(self) -> None:
        self.interrupt()
        grabber = getattr(self._local, "grabber", None)
        if grabber is not None:
            try:
                grabber.close()
            except Exception:
                pass
            self._local.grabber = None
