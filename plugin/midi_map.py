"""MIDI controller mapping: a `[midi]` TOML table (CCs and notes -> settings and actions), the
handler that turns mido messages into `SettingsStore.apply` updates, and learn mode's part
(which control was moved, and the entry it writes). No ports here: see midi_service.

    [midi]
    device = "nanoKONTROL2"   # part of the input port's name ("" or absent: the first port)
    api = "jack"              # optional: alsa | jack | coremidi | windows (default: the system's)
    channel = 1               # optional: 1-16, only this channel (default: any)
    cc.0 = "strength"         # a knob or fader: scaled to the field's range from the schema
    cc.64 = "paused"          # a true/false field: on at 64 and above
    cc.65 = "preset:next"     # an action: fired when the value reaches 64 (a button sending 127/0)
    note.36 = "preset:Ink"    # a pad or key: an action when pressed
    note.37 = "paused"        # a true/false field: toggled
    note.38 = "seed:random"
    note.39 = "preset:next"   # preset:previous too; FIELD=VALUE sets a value, e.g. "strength=0.8"
"""

from __future__ import annotations

import logging
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from .control import SettingsStore
from .control_actions import Action, parse_action, run_action
from .control_fields import field_named, from_unit, is_ranged
from .settings import SettingsError, StreamSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)

ORIGIN = "midi"
TABLE = "midi"
KINDS = ("cc", "note")
APIS = {"alsa": "LINUX_ALSA", "jack": "UNIX_JACK", "coremidi": "MACOSX_CORE", "windows": "WINDOWS_MM"}
KEYS = ("device", "api", "channel", *KINDS)
CC_MAX = 127
ON_AT = 64  # a CC value from here up is "on" (switches, buttons that send 127 / 0)


@dataclass(frozen=True)
class CcTarget:
    """What one CC moves: a ranged field (scaled), a true/false field (on from 64), or an action
    (fired when the value reaches 64)."""

    field: str = ""
    action: Action | None = None

    def describe(self) -> str:
        return self.field or self.action.describe()


@dataclass(frozen=True)
class MidiMapping:
    device: str = ""
    api: str = ""
    channel: int | None = None  # 1-16 as controllers print it; None: any
    cc: Mapping[int, CcTarget] = field(default_factory=dict)
    note: Mapping[int, Action] = field(default_factory=dict)

    @property
    def mido_api(self) -> str | None:
        return APIS[self.api] if self.api else None


# ---- parsing ---------------------------------------------------------------------------------
def parse_cc_target(text: Any, where: str) -> CcTarget:
    if isinstance(text, str) and "=" not in text and ":" not in text:
        try:
            f = field_named(text.strip())
        except SettingsError:
            f = None
        if f is not None and (is_ranged(f) or f.type == "bool"):
            return CcTarget(field=f.name)
        if f is not None:
            raise SettingsError(where, f"{f.name!r} has no range a controller can move ({f.allowed()}); "
                                       "map it to a note with FIELD=VALUE")
    return CcTarget(action=parse_action(text, where))


def parse_mapping(table: Mapping[str, Any], source: str = TABLE) -> MidiMapping:
    """A MidiMapping from a `[midi]` table; SettingsError naming the key and the fix."""
    if not isinstance(table, Mapping):
        raise SettingsError(source, "must be a table ([midi] with key = value lines)")
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise SettingsError(f"{source}.{unknown[0]}", f"unknown key (known: {', '.join(KEYS)})")
    device, api, channel = table.get("device", ""), table.get("api", ""), table.get("channel")
    if not isinstance(device, str):
        raise SettingsError(f"{source}.device", f"must be text (a part of the port name), got {device!r}")
    if api not in ("", *APIS):
        raise SettingsError(f"{source}.api", f"must be one of {', '.join(APIS)}, got {api!r}")
    if channel is not None and (isinstance(channel, bool) or not isinstance(channel, int) or not 1 <= channel <= 16):
        raise SettingsError(f"{source}.channel", f"must be a whole number from 1 to 16, got {channel!r}")
    controls: dict[str, dict[int, Any]] = {}
    for kind in KINDS:
        entries = table.get(kind, {})
        if not isinstance(entries, Mapping):
            raise SettingsError(f"{source}.{kind}", f"must be a table, e.g. {kind}.7 = \"strength\"")
        parse = parse_cc_target if kind == "cc" else parse_action
        controls[kind] = {_number(source, kind, key): parse(value, f"{source}.{kind}.{key}")
                          for key, value in entries.items()}
    return MidiMapping(device, api, channel, controls["cc"], controls["note"])


def _number(source: str, kind: str, key: Any) -> int:
    text = str(key)
    if not text.isdigit() or not 0 <= int(text) <= CC_MAX:
        raise SettingsError(f"{source}.{kind}.{text}", f"the {kind} number must be from 0 to {CC_MAX}")
    return int(text)


def read_table(path: str | Path) -> dict[str, Any] | None:
    """The `[midi]` table of a TOML file (None when it has none); SettingsError for a missing or
    broken file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError("midi_map", f"file {path} does not exist (dreamcam midi learn FIELD writes it)") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError("midi_map", f"{path} is not valid TOML ({exc})") from None
    return data.get(TABLE)


def load_mapping(path: str | Path) -> MidiMapping:
    table = read_table(path)
    if table is None:
        raise SettingsError("midi_map", f"{path} has no [midi] table (dreamcam midi learn FIELD writes one)")
    return parse_mapping(table, f"{Path(path).name}: midi")


# ---- the handler -----------------------------------------------------------------------------
class MidiController:
    """Turns mido messages into settings updates (the port callback calls `handle`; so do tests).
    A refused update is one log line; nothing changes and the next message is handled as usual."""

    def __init__(self, store: SettingsStore, mapping: MidiMapping) -> None:
        self.store, self.mapping = store, mapping
        self._cc_values: dict[int, int] = {}
        self._lock = threading.Lock()  # callbacks of one port come from one thread; tests may add others
        self.last_error = ""

    def handle(self, message: Any) -> StreamSettings | None:
        """The settings after the update this message made, or None (not mapped, or refused)."""
        if message.type not in ("control_change", "note_on"):
            return None  # clock, sysex, note off, ...
        if self.mapping.channel is not None and message.channel + 1 != self.mapping.channel:
            return None
        with self._lock:
            try:
                return self._handle(message)
            except SettingsError as exc:
                self.last_error = f"MIDI {describe(message)}: {exc}"
                log.warning("%s", self.last_error)
                return None

    def _handle(self, message: Any) -> StreamSettings | None:
        if message.type == "control_change" and message.control in self.mapping.cc:
            target = self.mapping.cc[message.control]
            previous = self._cc_values.get(message.control, 0)
            self._cc_values[message.control] = message.value
            if target.action is not None:
                rising = message.value >= ON_AT > previous
                return run_action(self.store, target.action, ORIGIN) if rising else None
            f = field_named(target.field)
            value = message.value >= ON_AT if f.type == "bool" else from_unit(f, message.value / CC_MAX)
            return self.store.apply({f.name: value}, ORIGIN)
        if message.type == "note_on" and message.velocity > 0 and message.note in self.mapping.note:
            return run_action(self.store, self.mapping.note[message.note], ORIGIN)
        return None


def describe(message: Any) -> str:
    control = learned_control(message)
    return f"{control[0]} {control[1]}" if control else str(message.type)


# ---- learn mode ------------------------------------------------------------------------------
def learned_control(message: Any) -> tuple[str, int] | None:
    """("cc", number) or ("note", number) for a control that was moved or pressed, else None."""
    if message.type == "control_change":
        return "cc", message.control
    if message.type == "note_on" and message.velocity > 0:
        return "note", message.note
    return None


def check_learn_target(target: str) -> None:
    """Refuse, before listening, a target that neither a CC nor a note can have."""
    problems = []
    for parse in (parse_cc_target, parse_action):
        try:
            parse(target, "midi learn")
            return
        except SettingsError as exc:
            problems.append(exc.message)
    raise SettingsError("midi learn", problems[0])


def learn(messages: Iterable[Any], target: str) -> tuple[str, int]:
    """The first control moved among `messages` that can take `target` (a note cannot scale a
    field: it is skipped with a log line, and learning goes on)."""
    for message in messages:
        control = learned_control(message)
        if control is None:
            continue
        try:
            (parse_cc_target if control[0] == "cc" else parse_action)(target, "target")
        except SettingsError as exc:
            log.warning("%s %d cannot take %r (%s); move a knob or fader instead", *control, target, exc.message)
            continue
        return control
    raise SettingsError("midi learn", "no control was moved")


def write_entry(path: str | Path, kind: str, number: int, target: str, device: str | None = None) -> Path:
    """Add `kind.number = target` to the [midi] table of `path` (created if needed), keeping the
    rest of the file as it was (comments included)."""
    import tomlkit

    path = Path(path)
    document = tomlkit.parse(path.read_text(encoding="utf-8")) if path.exists() else tomlkit.document()
    if TABLE not in document:
        document[TABLE] = tomlkit.table()
    midi = document[TABLE]
    if device and not midi.get("device"):
        midi["device"] = device
    if kind not in midi:
        midi[kind] = tomlkit.table()
    midi[kind][str(number)] = target
    parse_mapping(document.unwrap()[TABLE], f"{path.name}: midi")  # never write a file that cannot load
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomlkit.dumps(document), encoding="utf-8")
    return path
