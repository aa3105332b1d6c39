"""What `dreamcam run` shows in the terminal: a one-line live status (rich), redrawn from the
StatusBoard, and log lines printed above it (OBS connection and applied changes even without -v)."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, Mapping

from rich.text import Text

from .control import Status
from .conditioning import idle_fields
from .schema import known_names

# Shown without --verbose: the OBS connection (connects, drops, comes back), every applied
# settings change (from any surface) and preset changes made through the protocol.
FEEDBACK_LOGGERS = ("dreamcam.settings", "dreamcam.plugin.obs_bridge", "dreamcam.plugin.messages")
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def status_line(status: Status) -> Text:
    line = Text(f"in {status.fps_in:5.1f} fps | infer {status.infer_fps:5.1f} fps {status.infer_ms:6.1f} ms | "
                f"out {status.fps_out:5.1f} fps | latency {status.latency_ms:5.0f} ms | "
                f"skip {status.skip_ratio:4.0%} | dropped {status.dropped}")
    if status.graph:
        line.append(f" | {status.graph}", style="yellow")
    if status.error:
        line.append(f" | {status.error}", style="red")
    return line


class CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time: while rich's Live status line runs, that is
    its proxy, which prints each line above the status line instead of through it."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(verbose: bool) -> None:
    """INFO for everything with --verbose; otherwise warnings, plus the feedback loggers at INFO."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format=LOG_FORMAT,
                        handlers=[CurrentStderrHandler()])
    if not verbose:
        for name in FEEDBACK_LOGGERS:
            logging.getLogger(name).setLevel(logging.INFO)


def state_lines(reply: Mapping[str, Any]) -> list[str]:
    """`dreamcam status`: the settings in force and the status of a running app, one per line,
    from a control-server reply."""
    status = reply.get("status") or {}
    settings = reply.get("settings") or {}
    state = "running" if status.get("running") else "not running"
    if settings.get("paused"):
        state += ", paused"
    lines = [f"app: {state}, model {status.get('model') or '?'} ({status.get('engine') or '?'})",
             f"status: in {_num(status.get('fps_in'))} fps, processed {_num(status.get('infer_fps'))} fps, "
             f"out {_num(status.get('fps_out'))} fps, latency {_num(status.get('latency_ms'), '.0f')} ms, "
             f"skip {_num(100 * float(status.get('skip_ratio') or 0), '.0f')}%, dropped {status.get('dropped', 0)}"]
    for key in ("obs", "error"):
        if status.get(key):
            lines.append(f"{key}: {status[key]}")
    lines.append(f"settings in force (version {reply.get('version', '?')}, last change from "
                 f"{reply.get('origin') or '?'}):")
    width = max((len(k) for k in settings), default=0)
    idle = idle_fields(settings)  # ControlNet / IP-Adapter / LoRA slots that are off: one line for all
    lines += [f"  {name.ljust(width)} = {json.dumps(value)}" for name, value in settings.items() if name not in idle]
    if idle:
        lines.append(f"  (off, not shown: {known_names(n for n in settings if n in idle)})")
    presets = reply.get("presets")
    if presets is not None:
        lines.append("presets: " + (", ".join(presets) if presets else "none saved (dreamcam preset save NAME ...)"))
    return lines


def _num(value: Any, fmt: str = ".1f") -> str:
    try:
        return format(float(value), fmt)
    except (TypeError, ValueError):
        return "?"
