"""A one-line live status in the terminal (rich), redrawn from the StatusBoard."""

from __future__ import annotations

from rich.text import Text

from .control import Status


def status_line(status: Status) -> Text:
    line = Text(f"in {status.fps_in:5.1f} fps | infer {status.infer_fps:5.1f} fps {status.infer_ms:6.1f} ms | "
                f"out {status.fps_out:5.1f} fps | latency {status.latency_ms:5.0f} ms | "
                f"skip {status.skip_ratio:4.0%} | dropped {status.dropped}")
    if status.graph:
        line.append(f" | {status.graph}", style="yellow")
    if status.error:
        line.append(f" | {status.error}", style="red")
    return line
