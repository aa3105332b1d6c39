"""Every setting of the app, once, as data: name, type, range or choices, default, live or
start-only, label, help, panel group and widget. Validation (plugin/settings.py), the CLI options,
the TOML keys, presets, the control protocol and the OBS panel (through dreamcam_schema.json)
all derive from `SCHEMA`. The stream parameters' ranges are the core's own (core/limits.py).

Pure Python, no torch: `python -m dreamcam.plugin.schema --write` regenerates the JSON file the
OBS script reads (`--check` fails when it is out of date).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Tuple

from dreamcam.core.limits import (BLEND_METHODS, CFG_TYPES, MAX_PROMPT_CHARS, PREPROCESSOR_NAMES, RANGES,
                                  RESIZE_POLICIES, STEPS, Range, shown)
from dreamcam.core.weighted import PROMPT_BLEND, SEED_BLEND

SCHEMA_VERSION = 1
TYPES = ("text", "int", "float", "bool", "choice", "int_list")
WIDGETS = ("text", "multiline", "slider", "number", "toggle", "choice", "list")
GROUPS = ("Prompt", "Diffusion", "Similarity filter", "Blending", "Stability", "Output", "ControlNet", "IP-Adapter",
          "LoRA", "Input", "Model", "OBS", "Control")
ENGINES = ("auto", "eager", "compiled", "tensorrt")
DTYPES = ("float16", "bfloat16", "float32")
NONE_WORDS = ("", "none")  # a nullable text field given one of these is None (CLI, TOML: "none")
JSON_PATH = Path(__file__).resolve().parent.parent / "obs_scripts" / "dreamcam_schema.json"


class SettingsError(ValueError):
    """A value was rejected; `field` names it and the message says what is allowed."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class Field:
    """One setting. `range` bounds a number (or each item of an int_list; `items` bounds its
    length); `cli` is the option name without dashes ("" = the name with dashes, None = not an
    option); `panel`: shown on control panels (OBS); `in_preset`: saved in presets (live only)."""

    name: str
    type: str
    default: Any
    live: bool
    label: str
    help: str
    group: str
    widget: str
    range: Optional[Range] = None
    step: Optional[float] = None
    choices: Tuple[str, ...] = ()
    nullable: bool = False
    secret: bool = False
    max_chars: int = MAX_PROMPT_CHARS
    items: Optional[Range] = None
    hint: str = ""  # appended to a rejection: the way to what the user wanted
    cli: Optional[str] = ""
    cli_short: Optional[str] = None
    panel: bool = True
    in_preset: bool = True
    text_problem: Optional[Callable[[str], Optional[str]]] = None  # a text field's own check (from the core)
    syntax: str = ""  # "source": names a hub id, folder or file; "controlnet": PREPROCESSOR:SOURCE

    @property
    def option(self) -> Optional[str]:
        """The command-line option, e.g. --guidance, or None."""
        if self.cli is None:
            return None
        return "--" + (self.cli or self.name.replace("_", "-"))

    @property
    def python_type(self) -> type:
        return {"text": str, "int": int, "float": float, "bool": bool, "choice": str, "int_list": tuple}[self.type]

    def allowed(self) -> str:
        """What the field accepts, in words (CLI help, error messages)."""
        if self.type == "choice":
            text = "one of " + ", ".join(self.choices)
        elif self.type in ("int", "float"):
            text = self.range.describe()
        elif self.type == "int_list":
            text = f"{self.items.low} to {self.items.high} increasing whole numbers from {self.range.low} to {self.range.high}"
        elif self.type == "bool":
            text = "true or false"
        else:
            text = f"text of at most {self.max_chars} characters"
        return text + (" or none" if self.nullable else "")


def _stream(name: str, type: str, default: Any, label: str, help: str, group: str, widget: str,
            **extra: Any) -> Field:
    return Field(name, type, default, True, label, help, group, widget, **extra)


def _app(name: str, type: str, default: Any, label: str, help: str, group: str, widget: str,
         **extra: Any) -> Field:
    return Field(name, type, default, False, label, help, group, widget, panel=False, in_preset=False, **extra)


def split_controlnet(text: str) -> Tuple[str, str]:
    """"canny:lllyasviel/sd-controlnet-canny" -> ("canny", "lllyasviel/sd-controlnet-canny") (split at the
    first colon, so Windows paths such as canny:C:\\nets\\x keep theirs)."""
    preprocessor, _, source = text.partition(":")
    return preprocessor.strip(), source.strip()


def controlnet_problem(text: str) -> Optional[str]:
    preprocessor, source = split_controlnet(text)
    if preprocessor not in PREPROCESSOR_NAMES or not source:
        return (f"must be PREPROCESSOR:SOURCE with a preprocessor of {', '.join(PREPROCESSOR_NAMES)}, e.g. "
                f"canny:lllyasviel/sd-controlnet-canny (or none), got {shown(text)}")
    return None


CONTROLNET_SLOTS, LORA_SLOTS = 3, 4
SOURCE_CHARS = 1000  # a hub id, folder or file path (with a preprocessor name for ControlNets)
SCALE_RANGE = Range(0.0, 2.0)  # ControlNet and IP-Adapter scales (0 = no effect)
WEIGHT_RANGE = Range(-2.0, 2.0)  # LoRA weights
CANNY_RANGE = Range(0.0, 1000.0)  # Canny thresholds, in grey-level gradient units (core/preprocess.py)
DEFAULT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"


def _source(name: str, label: str, help: str, group: str, **extra: Any) -> Field:
    """A live model source (loaded in the background, swapped in between two frames): text, none = off.
    Presets keep numbers and prompts, not files: sources stay out of them (docs/conditioning.md)."""
    return _stream(name, "text", extra.pop("default", None), label, help, group, "text",
                   nullable=extra.pop("nullable", True), max_chars=SOURCE_CHARS, in_preset=False,
                   syntax=extra.pop("syntax", "source"), **extra)


def _conditioning_fields() -> Tuple[Field, ...]:
    """ControlNet, IP-Adapter and LoRA slots, like the channels of a mixing desk."""
    fields = []
    for i in range(1, CONTROLNET_SLOTS + 1):
        fields += [
            _source(f"controlnet_{i}", f"ControlNet {i}",
                    "PREPROCESSOR:SOURCE, e.g. canny:lllyasviel/sd-controlnet-canny (preprocessors: "
                    + ", ".join(PREPROCESSOR_NAMES) + "; the source a hub id, folder or .safetensors file); "
                    "none = off.", "ControlNet", syntax="controlnet", text_problem=controlnet_problem),
            _stream(f"controlnet_{i}_scale", "float", 1.0, f"ControlNet {i} scale",
                    f"Conditioning scale of ControlNet {i} (0: it does no work).", "ControlNet", "slider",
                    range=SCALE_RANGE, step=0.05)]
    fields += [
        _stream("canny_low", "float", 100.0, "Canny low threshold",
                "Edges continue above this gradient (canny preprocessor).", "ControlNet", "slider",
                range=CANNY_RANGE, step=1),
        _stream("canny_high", "float", 200.0, "Canny high threshold",
                "Edges start above this gradient (canny preprocessor; at least the low threshold).", "ControlNet",
                "slider", range=CANNY_RANGE, step=1),
        _source("depth_model", "Depth model", "Hub id or folder of a transformers depth model (depth preprocessor).",
                "ControlNet", default=DEFAULT_DEPTH_MODEL, nullable=False),
        _source("ip_adapter", "IP-Adapter", "IP-Adapter weights: hub id, folder or file; none = off.", "IP-Adapter"),
        _source("ip_adapter_image", "IP-Adapter image", "The style or reference image (a file path).", "IP-Adapter"),
        _stream("ip_adapter_scale", "float", 1.0, "IP-Adapter scale", "How strongly the image steers the output.",
                "IP-Adapter", "slider", range=SCALE_RANGE, step=0.05)]
    for i in range(1, LORA_SLOTS + 1):
        fields += [
            _source(f"lora_{i}", f"LoRA {i}", "LoRA: hub id, folder or .safetensors file; none = off.", "LoRA"),
            _stream(f"lora_{i}_weight", "float", 1.0, f"LoRA {i} weight",
                    f"Strength of LoRA {i} (0: no effect, negative: the opposite).", "LoRA", "slider",
                    range=WEIGHT_RANGE, step=0.05)]
    fields.append(_stream("lora_fuse", "bool", False, "Fuse LoRAs",
                          "Fold the LoRAs into the model's weights: no cost per frame (a live LoRA costs about 1.8 ms "
                          "a frame at 512 on an H200), but each weight change then takes about 40 ms; switching it "
                          "on or off captures the step again (the compiled engine recompiles its UNet the first "
                          "time, which holds the output for a while).", "LoRA", "toggle"))
    return tuple(fields)


SCHEMA: Tuple[Field, ...] = (
    # ---- live: StreamSettings (changeable while the stream runs) ------------------------------
    _stream("prompt", "text", "a vivid watercolor painting, soft light, highly detailed", "Prompt",
            "What the output should look like.", "Prompt", "multiline", cli_short="-p"),
    _stream("negative_prompt", "text", "blurry, low quality, deformed", "Negative prompt",
            "What to avoid (used by the full and initialize guidance types, and above guidance 1).",
            "Prompt", "multiline"),
    _stream("transition_frames", "int", 0, "Prompt transition (frames)",
            "Blend a new prompt in over this many frames (0: at once).", "Prompt", "slider",
            range=RANGES["transition_frames"], step=1),
    _stream("strength", "float", 0.5, "Strength (0 keeps the input, 1 ignores it)",
            "How far the output may move away from the input: 0 keeps it, 1 ignores it.",
            "Diffusion", "slider", range=RANGES["strength"], step=0.01),
    _stream("steps", "int", 1, "Steps", "Denoising steps, used with the strength (more: finer, slower).",
            "Diffusion", "slider", range=RANGES["steps"], step=1),
    _stream("t_index_list", "int_list", None, "Step indices",
            "Explicit step indices of the 50-step schedule, e.g. 32,45 (overrides strength and steps).",
            "Diffusion", "list", range=RANGES["t_index"], items=STEPS, nullable=True, cli="t-index",
            panel=False),
    _stream("guidance_scale", "float", 1.2, "Guidance scale",
            "How strongly the prompt steers the image; it acts above 1.", "Diffusion", "slider",
            range=RANGES["guidance_scale"], step=0.1, cli="guidance"),
    _stream("cfg_type", "choice", "self", "Guidance type",
            "none, full (classic CFG, 2x the work), self (residual guidance, cheap) or initialize.",
            "Diffusion", "choice", choices=CFG_TYPES),
    _stream("delta", "float", 1.0, "Delta (residual guidance)",
            "Weight of the residual noise of self and initialize guidance.", "Diffusion", "slider",
            range=RANGES["delta"], step=0.05),
    _stream("seed", "int", 2, "Seed", "Noise seed: the same seed gives the same look.", "Diffusion",
            "number", range=RANGES["seed"], step=1),
    _stream("similarity_filter", "bool", True, "Skip near-identical frames (similarity filter)",
            "Skip frames that barely changed (saves GPU time on still scenes).", "Similarity filter",
            "toggle"),
    _stream("similarity_threshold", "float", 0.98, "Similarity threshold",
            "Similarity above which a frame may be skipped.", "Similarity filter", "slider",
            range=RANGES["similarity_threshold"], step=0.001),
    _stream("similarity_max_skip", "int", 10, "Max frames skipped in a row",
            "At most this many frames skipped in a row.", "Similarity filter", "slider",
            range=RANGES["similarity_max_skip"], step=1, cli="max-skip"),
    _stream("prompt_blend", "text", "", "Prompt blend",
            "Weighted prompts, e.g. 'a cat : 0.7 | a dog : 0.3'; replaces the prompt while set (empty: off).",
            "Blending", "multiline", text_problem=PROMPT_BLEND.problem),
    _stream("seed_blend", "text", "", "Seed blend",
            "Weighted seeds, e.g. '2:0.6, 7:0.4'; replaces the seed while set (empty: off).", "Blending", "text",
            text_problem=SEED_BLEND.problem),
    _stream("blend_method", "choice", "linear", "Blend method",
            "How prompt blends, seed blends and prompt transitions mix: linear or slerp (spherical).",
            "Blending", "choice", choices=BLEND_METHODS),
    _stream("latent_feedback", "float", 0.0, "Latent feedback",
            "Share of the previous output mixed into each new frame's latent: steadier, less flicker, "
            "more trailing (0: off).", "Stability", "slider", range=RANGES["latent_feedback"], step=0.01),
    _stream("image_feedback", "float", 0.0, "Image feedback",
            "Share of the previous output image mixed into each new input image (0: off).", "Stability",
            "slider", range=RANGES["image_feedback"], step=0.01),
    _stream("paused", "bool", False, "Pause (pass the input through unchanged)",
            "Pass the input through unchanged.", "Output", "toggle", in_preset=False),
    *(_stream(name, "int", 512, name.capitalize(),
              f"The diffusion {name} in pixels. The virtual camera (or file) keeps the size it opened with (apps "
              "cannot follow a camera size change), so frames are scaled to it (resize); restart to change the "
              "camera size (--size).", "Output", "number", range=RANGES[name], step=8, cli=None, in_preset=False)
      for name in ("width", "height")),
    _stream("preset", "text", None, "Preset", "Start from a saved preset (its values, then the others given).",
            "Prompt", "text", nullable=True, max_chars=100, panel=False, in_preset=False),
    *_conditioning_fields(),
    # ---- start-only: AppSettings (a change restarts the pipeline) -----------------------------
    _app("source", "text", "pattern", "Source", "pattern | screen[:N|:x,y,w,h] | camera[:N|:NAME] | file:PATH",
         "Input", "text", cli_short="-s"),
    _app("sink", "text", "vcam", "Output", "vcam[:BACKEND] | file:PATH | images:DIR | preview | null",
         "Output", "text", cli_short="-o"),
    _app("model", "text", "stabilityai/sd-turbo", "Model", "Hub id, local diffusers folder or .safetensors file.",
         "Model", "text"),
    _app("model_config", "text", None, "Model configs",
         "With a single .safetensors/.ckpt model: a local diffusers folder of the same architecture whose "
         "configs to use (nothing is downloaded).", "Model", "text", nullable=True),
    _app("tiny_vae", "text", "madebyollin/taesd", "Tiny autoencoder",
         "Tiny autoencoder (hub id or folder); 'none' for the model's own VAE.", "Model", "text", nullable=True),
    _app("lcm_lora", "text", None, "LCM-LoRA", "LCM-LoRA to fuse (for SD 1.5 fine-tunes).", "Model", "text",
         nullable=True),
    _app("control_source", "text", None, "Control source",
         "Second source for the external ControlNet preprocessor (same forms as source); none = off.",
         "ControlNet", "text", nullable=True),
    _app("engine", "choice", "auto", "Engine", "Inference engine (auto: the fastest that works here).", "Model",
         "choice", choices=ENGINES),
    _app("device", "text", "auto", "Device", "auto | cpu | cuda | cuda:N", "Model", "text"),
    _app("dtype", "choice", "float16", "Precision", "Compute precision on the GPU (the CPU uses float32).", "Model",
         "choice", choices=DTYPES),
    _app("resize", "choice", "crop", "Resize",
         "How frames are fitted to another size: the input to the diffusion size, the output to the camera's.",
         "Output", "choice", choices=RESIZE_POLICIES),
    _app("fps", "float", 30.0, "Frame rate", "Virtual camera frame rate.", "Output", "number",
         range=Range(1.0, 240.0), step=1),
    _app("frame_buffer_size", "int", 1, "Frames per call", "Frames per core call (the live app sends one).",
         "Model", "number", range=Range(1, 1, integer=True), step=1, cli=None,
         hint="the live app processes one frame per call; for more frames per second set frames_in_flight "
              "to 2-4 (frame batching is for the Python API)"),
    _app("frames_in_flight", "int", 1, "Frames in flight",
         "Frames computed at once on the GPU (1-step streams): more frames per second when the source is "
         "faster than the GPU, each frame a little later.", "Model", "number", range=Range(1, 4, integer=True),
         step=1),
    _app("obs_host", "text", "127.0.0.1", "OBS WebSocket host", "OBS WebSocket host.", "OBS", "text"),
    _app("obs_port", "int", 4455, "OBS WebSocket port", "OBS WebSocket port.", "OBS", "number",
         range=Range(1, 65535, integer=True), step=1),
    _app("obs_password", "text", "", "OBS WebSocket password",
         "OBS WebSocket password (better: the DREAMCAM_OBS_PASSWORD environment variable).", "OBS", "text",
         secret=True),
    _app("obs_enabled", "bool", False, "Connect to OBS", "Connect to OBS (obs-websocket) for live control.",
         "OBS", "toggle", cli="obs"),
    _app("control_port", "int", 7861, "Control port", "Local control port for `dreamcam set` (0 = off).",
         "Control", "number", range=Range(0, 65535, integer=True), step=1),
    _app("osc_port", "int", 0, "OSC port", "UDP port of the OSC server (0 = off); see docs/control.md.",
         "Control", "number", range=Range(0, 65535, integer=True), step=1),
    _app("osc_host", "text", "127.0.0.1", "OSC listen address",
         "Address the OSC server listens on: 127.0.0.1 is this machine only; name another (e.g. 0.0.0.0) "
         "to take messages from the network.", "Control", "text"),
    _app("osc_feedback", "text", "", "OSC feedback target",
         "HOST:PORT that gets the OSC replies, changes made elsewhere and a status stream once a second "
         "(empty: replies go to the sender).", "Control", "text"),
    _app("midi_map", "text", "", "MIDI mapping file",
         "TOML file with a [midi] table mapping controller CCs and notes to settings (empty: none; a [midi] "
         "table in the config file works too); `dreamcam midi learn` writes it.", "Control", "text"),
    _app("web_port", "int", 7862, "Control page port",
         "Port of the control page in the browser or as an OBS dock, http://127.0.0.1:PORT/ (0 = off).",
         "Control", "number", range=Range(0, 65535, integer=True), step=1),
)

_BY_NAME = {f.name: f for f in SCHEMA}


def known_names(names: Iterable[str]) -> str:
    """Names for an error line, numbered slots folded: "..., lora_N (N = 1-4), lora_N_weight (N = 1-4)"."""
    import re

    groups: dict[str, list[int]] = {}
    for name in sorted(names):
        match = re.search(r"_(\d+)(?=_|$)", name)
        pattern = name if match is None else name[:match.start(1)] + "N" + name[match.end(1):]
        groups.setdefault(pattern, []).append(int(match.group(1)) if match else 0)
    def numbers(n: list) -> str:
        return f"{min(n)}-{max(n)}" if n == list(range(min(n), max(n) + 1)) else ", ".join(map(str, n))

    return ", ".join(p if len(n) < 2 else f"{p} (N = {numbers(n)})" for p, n in groups.items())


def unknown_setting(name: Any, names: Iterable[str], what: str = "setting") -> str:
    """The message for a name that is none of `names`: the nearest one when it is a likely typo
    (one short line), else all of them."""
    import difflib

    names = list(names)
    near = difflib.get_close_matches(str(name)[:60], names, n=1, cutoff=0.75)
    if near:
        return f"unknown {what} (did you mean {near[0]}? all settings: docs/control.md)"
    return f"unknown {what} (known: {known_names(names)})"


def field(name: str) -> Field:
    """The field named `name`; SettingsError naming the known ones when there is none."""
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise SettingsError(str(name)[:60], unknown_setting(name, _BY_NAME)) from None


def live_fields() -> Tuple[Field, ...]:
    return tuple(f for f in SCHEMA if f.live)


def app_fields() -> Tuple[Field, ...]:
    return tuple(f for f in SCHEMA if not f.live)


def live_names() -> frozenset:
    return frozenset(f.name for f in live_fields())


def app_names() -> frozenset:
    return frozenset(f.name for f in app_fields())


def preset_names() -> frozenset:
    """The live fields a preset holds (not `paused`, not the name of another preset)."""
    return frozenset(f.name for f in live_fields() if f.in_preset)


# ---- validation ------------------------------------------------------------------------------
def validate(name: str, value: Any) -> Any:
    """`value` as the field keeps it (2.0 -> 2 for whole numbers, a list -> a tuple, "none" -> None
    for nullable text); SettingsError naming the field, the allowed values and what was given."""
    f = field(name)
    if f.nullable and (value is None or (f.type == "text" and isinstance(value, str)
                                         and value.strip().lower() in NONE_WORDS)):
        return None
    problem, value = _check(f, value)
    if problem:
        raise SettingsError(f.name, problem + (f"; {f.hint}" if f.hint else ""))
    return value


def _check(f: Field, value: Any) -> Tuple[Optional[str], Any]:
    if f.type in ("int", "float"):
        problem = f.range.problem(value)
        return problem, None if problem else (int(value) if f.range.integer else float(value))
    if f.type == "bool":
        return (None if isinstance(value, bool) else f"must be true or false, got {shown(value)}"), value
    if f.type == "choice":
        ok = isinstance(value, str) and value in f.choices
        return (None if ok else f"must be one of {', '.join(f.choices)}, got {shown(value)}"), value
    if f.type == "text":
        if not isinstance(value, str):
            return f"must be text, got {type(value).__name__}", value
        if len(value) > f.max_chars:
            return f"must be at most {f.max_chars} characters, got {len(value)}", value
        return (f.text_problem(value) if f.text_problem else None), value
    return _check_int_list(f, value)


def _check_int_list(f: Field, value: Any) -> Tuple[Optional[str], Any]:
    if not isinstance(value, (list, tuple)):
        return f"must be a list of {f.allowed()}, got {shown(value)}", value
    if not f.items.low <= len(value) <= f.items.high:
        return f"must hold {f.items.low} to {f.items.high} values, got {len(value)}", value
    for item in value:
        problem = f.range.problem(item)
        if problem:
            return f"each value {problem}", value
    items = tuple(int(v) for v in value)
    if list(items) != sorted(set(items)):
        return f"must be strictly increasing, got {list(items)}", value
    return None, items


def from_text(name: str, text: str) -> Any:
    """A value typed as text (`dreamcam set FIELD=VALUE`, `preset save`) read by the field's
    type, then validated: prompt=123 is the text "123", seed=NaN is refused."""
    f = field(name)
    stripped = text.strip()
    if f.nullable and stripped.lower() in NONE_WORDS + ("null",):
        return None
    if f.type in ("text", "choice"):
        return validate(name, text)
    if f.type == "bool":
        words = {"true": True, "1": True, "yes": True, "on": True,
                 "false": False, "0": False, "no": False, "off": False}
        if stripped.lower() not in words:
            raise SettingsError(name, f"must be true or false, got {shown(text)}")
        return words[stripped.lower()]
    if f.type == "int_list":
        parts = [p for p in stripped.strip("[]").replace(" ", "").split(",") if p]
        return validate(name, [_number_from_text(f, p, text) for p in parts])
    return validate(name, _number_from_text(f, stripped, text))


def _number_from_text(f: Field, part: str, text: str) -> Any:
    try:
        return int(part)
    except ValueError:
        if part.lstrip("+-").isdigit():  # more digits than Python reads (4300): surely out of range
            raise SettingsError(f.name, f"must be from {f.range.low} to {f.range.high}, got a number of "
                                        f"{len(part.lstrip('+-'))} digits") from None
    try:
        return float(part)  # "nan" and "inf" parse; validate() refuses them
    except ValueError:
        raise SettingsError(f.name, f"must be {f.allowed()}, got {shown(text)}") from None


# ---- the JSON copy for the OBS script (and any other surface that cannot import Python) --------
def field_json(f: Field) -> dict:
    data = {"name": f.name, "type": f.type, "default": list(f.default) if isinstance(f.default, tuple) else f.default,
            "live": f.live, "label": f.label, "help": f.help, "group": f.group, "widget": f.widget,
            "nullable": f.nullable, "secret": f.secret, "panel": f.panel, "in_preset": f.in_preset,
            "option": f.option, "allowed": f.allowed()}
    if f.range is not None:
        data.update(min=f.range.low, max=f.range.high, integer=f.range.integer, multiple_of=f.range.multiple_of,
                    step=f.step)
    if f.items is not None:
        data.update(min_items=f.items.low, max_items=f.items.high)
    if f.choices:
        data["choices"] = list(f.choices)
    if f.type == "text":
        data["max_chars"] = f.max_chars
    if f.hint:
        data["hint"] = f.hint
    if f.syntax:
        data["syntax"] = f.syntax
    if f.secret:
        data["default"] = ""
    return data


def to_json() -> dict:
    """The whole schema as JSON-ready data (what dreamcam_schema.json holds)."""
    return {"version": SCHEMA_VERSION, "groups": list(GROUPS), "fields": [field_json(f) for f in SCHEMA]}


def json_text() -> str:
    return json.dumps(to_json(), indent=1, allow_nan=False) + "\n"


def write_json(path: Optional[Path] = None) -> Path:
    path = path or JSON_PATH
    path.write_text(json_text(), encoding="utf-8")
    return path


def main(argv: Iterable[str] = ()) -> int:
    args = list(argv)
    if args == ["--write"]:
        print(f"wrote {write_json()}")
        return 0
    if args == ["--check"]:
        current = JSON_PATH.read_text(encoding="utf-8") if JSON_PATH.is_file() else ""
        if current != json_text():
            print(f"{JSON_PATH} is out of date: run python -m dreamcam.plugin.schema --write", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(json_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
