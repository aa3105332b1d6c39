"""Validated settings: what the user controls live (`StreamSettings`) and at start (`AppSettings`).

One `StreamSettings` value is always in force. Every change, from OBS, the tray, the CLI or a
config file, goes through `apply_changes`, which validates all fields first and then returns a
new value: nothing is ever applied half-way, and on error the previous settings stay in force.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

MAX_PROMPT_CHARS = 4000
CFG_TYPES = ("none", "full", "self", "initialize")
ENGINES = ("auto", "eager", "compiled", "tensorrt")
RESIZE_POLICIES = ("crop", "letterbox", "stretch")


class SettingsError(ValueError):
    """A value was rejected; `field` names it and the message says what is allowed."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


def _number(name: str, value: Any, low: float, high: float, *, integer: bool = False) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "a whole number" if integer else "a number"
        raise SettingsError(name, f"must be {kind} from {low} to {high}, got {value!r}")
    if integer and float(value) != int(value):
        raise SettingsError(name, f"must be a whole number from {low} to {high}, got {value!r}")
    if not (low <= value <= high):
        raise SettingsError(name, f"must be from {low} to {high}, got {value!r}")
    return int(value) if integer else float(value)


def _text(name: str, value: Any, max_chars: int = MAX_PROMPT_CHARS) -> str:
    if not isinstance(value, str):
        raise SettingsError(name, f"must be text, got {type(value).__name__}")
    if len(value) > max_chars:
        raise SettingsError(name, f"must be at most {max_chars} characters, got {len(value)}")
    return value


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise SettingsError(name, f"must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SettingsError(name, f"must be true or false, got {value!r}")
    return value


def _t_index_list(name: str, value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise SettingsError(name, f"must be a list of 1 to 8 step indices from 0 to 49, got {value!r}")
    items = tuple(_number(name, v, 0, 49, integer=True) for v in value)
    if not 1 <= len(items) <= 8:
        raise SettingsError(name, f"must hold 1 to 8 step indices, got {len(items)}")
    if list(items) != sorted(set(items)):
        raise SettingsError(name, f"must be strictly increasing, got {list(items)}")
    return items


@dataclass(frozen=True)
class StreamSettings:
    """Everything that may change while the stream runs; applied between two frames."""

    prompt: str = "a vivid watercolor painting, soft light, highly detailed"
    negative_prompt: str = "blurry, low quality, deformed"
    strength: float = 0.5  # 0 keeps the input, 1 ignores it; mapped to t_index values by the core
    steps: int = 1  # denoising steps in the stream batch (used with strength)
    t_index_list: tuple[int, ...] | None = None  # explicit step indices; overrides strength and steps
    guidance_scale: float = 1.2
    cfg_type: str = "self"
    delta: float = 1.0
    seed: int = 2
    similarity_filter: bool = True
    similarity_threshold: float = 0.98
    similarity_max_skip: int = 10
    paused: bool = False  # pass the input through unchanged
    transition_frames: int = 0  # >0: blend prompt embeddings over this many frames
    preset: str | None = None  # name of the preset these values came from, if any

    def __post_init__(self) -> None:
        for f in fields(self):
            _validate_stream_field(f.name, getattr(self, f.name))

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if data["t_index_list"] is not None:
            data["t_index_list"] = list(data["t_index_list"])
        return data


_STREAM_VALIDATORS = {
    "prompt": lambda n, v: _text(n, v),
    "negative_prompt": lambda n, v: _text(n, v),
    "strength": lambda n, v: _number(n, v, 0.0, 1.0),
    "steps": lambda n, v: _number(n, v, 1, 8, integer=True),
    "t_index_list": _t_index_list,
    "guidance_scale": lambda n, v: _number(n, v, 0.0, 20.0),
    "cfg_type": lambda n, v: _choice(n, v, CFG_TYPES),
    "delta": lambda n, v: _number(n, v, 0.0, 5.0),
    "seed": lambda n, v: _number(n, v, 0, 2**31 - 1, integer=True),
    "similarity_filter": _flag,
    "similarity_threshold": lambda n, v: _number(n, v, 0.0, 1.0),
    "similarity_max_skip": lambda n, v: _number(n, v, 0, 1000, integer=True),
    "paused": _flag,
    "transition_frames": lambda n, v: _number(n, v, 0, 600, integer=True),
    "preset": lambda n, v: None if v is None else _text(n, v, 100),
}


def _validate_stream_field(name: str, value: Any) -> Any:
    return _STREAM_VALIDATORS[name](name, value)


STREAM_FIELDS = frozenset(_STREAM_VALIDATORS)


def apply_changes(current: StreamSettings, changes: Mapping[str, Any]) -> tuple[StreamSettings, list[str]]:
    """Validate `changes` and return (new settings, names of unknown fields that were ignored).

    Raises SettingsError naming the first bad field; `current` is never modified.
    """
    unknown = sorted(k for k in changes if k not in STREAM_FIELDS)
    known = {k: _validate_stream_field(k, v) for k, v in changes.items() if k in STREAM_FIELDS}
    if "t_index_list" in known and known["t_index_list"] is not None:
        known["t_index_list"] = tuple(known["t_index_list"])
    return dataclasses.replace(current, **known), unknown


@dataclass(frozen=True)
class AppSettings:
    """Chosen at start; changing one of these restarts the pipeline."""

    source: str = "pattern"  # pattern | screen[:N|:x,y,w,h] | camera[:N] | file:PATH
    sink: str = "vcam"  # vcam[:backend] | file:PATH | images:DIR | preview | null
    model: str = "stabilityai/sd-turbo"  # hub id, local diffusers folder or .safetensors file
    tiny_vae: str | None = "madebyollin/taesd"  # None: the model's own VAE
    lcm_lora: str | None = None  # e.g. latent-consistency/lcm-lora-sdv1-5 for SD 1.5 fine-tunes
    engine: str = "auto"
    device: str = "auto"  # auto | cuda | cuda:N | cpu
    dtype: str = "float16"
    width: int = 512
    height: int = 512
    resize: str = "crop"
    fps: float = 30.0  # output (virtual camera) frame rate
    frame_buffer_size: int = 1  # the live app sends one frame per call; kept for configs that name it
    frames_in_flight: int = 1  # 2-4: frames computed at once on the GPU (1-step streams), more fps, more delay
    obs_host: str = "127.0.0.1"
    obs_port: int = 4455
    obs_password: str = field(default="", repr=False)  # never logged
    obs_enabled: bool = False
    control_port: int = 7861  # local control server (JSON lines on 127.0.0.1); 0 = off
    web_port: int = 7862  # control page (http://127.0.0.1:PORT/); 0 = off

    def __post_init__(self) -> None:
        if isinstance(self.tiny_vae, str) and self.tiny_vae.strip().lower() in ("", "none"):
            object.__setattr__(self, "tiny_vae", None)  # "none" (CLI, TOML): the model's own VAE
        for name in ("source", "sink", "model", "device", "obs_host", "obs_password"):
            _text(name, getattr(self, name))
        for name in ("tiny_vae", "lcm_lora"):
            if getattr(self, name) is not None:
                _text(name, getattr(self, name))
        _flag("obs_enabled", self.obs_enabled)
        _choice("engine", self.engine, ENGINES)
        _choice("dtype", self.dtype, ("float16", "bfloat16", "float32"))
        _choice("resize", self.resize, RESIZE_POLICIES)
        for name in ("width", "height"):
            value = _number(name, getattr(self, name), 64, 2048, integer=True)
            if value % 8:
                raise SettingsError(name, f"must be a multiple of 8, got {value}")
        _number("fps", self.fps, 1, 240)
        if self.frame_buffer_size != 1:
            raise SettingsError("frame_buffer_size", "the live app processes one frame per call; for more frames "
                                "per second set frames_in_flight to 2-4 (frame batching is for the Python API)")
        _number("frames_in_flight", self.frames_in_flight, 1, 4, integer=True)
        _number("obs_port", self.obs_port, 1, 65535, integer=True)
        _number("control_port", self.control_port, 0, 65535, integer=True)
        _number("web_port", self.web_port, 0, 65535, integer=True)
