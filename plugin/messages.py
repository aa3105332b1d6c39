"""The control protocol (app side): `dreamcam` messages carried in obs-websocket custom events
and on the local control socket.

An event's data is `{"dreamcam": {"v": 1, "kind": ..., ...fields}}`. Kinds:

- `settings` (to the app): a partial StreamSettings (any of the schema's live fields,
  `SETTINGS_FIELDS`; any other field is refused), applied as one update. `preset` alone (or
  with fields that win over it) applies that saved preset of the app's preset store.
- `state` (from the app): the settings in force (`settings`, all fields), their `version`, the
  `origin` of the last change and the names of the app's `presets`. Sent when the app connects,
  when a panel says hello or asks with `get_state`, and after every applied change, whichever
  surface made it. The app is the source of truth: panels show this and send only what the user
  changes.
- `status` (from the app, about once a second): its numbers (fps, latency, errors, ...).
- `get_state`, `preset_save` (`name`; the settings in force, plus optional `values`, are saved
  under it), `preset_delete` (`name`) (to the app).
- `hello` and `bye` (`role`: `app` or `obs-panel`).

Any message may carry `from`, a short label of the sender (e.g. `obs-panel-1a2b`); the app logs
it with each change and echoes it as the state's `origin`. Messages that are not ours return
None; ours that are malformed raise MessageError. The OBS script holds its own copy of this
format (it may import nothing from dreamcam; its fields come from dreamcam_schema.json); tests
hold both sides to it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

from .control import SettingsStore, Status
from .schema import live_names, unknown_setting
from .settings import SettingsError, StreamSettings

log = logging.getLogger(__name__)

NAMESPACE = "dreamcam"
PROTOCOL_VERSION = 1
KINDS = ("settings", "state", "status", "get_state", "preset_save", "preset_delete", "hello", "bye")
FROM_APP = ("state", "status")  # the app's own broadcasts, which it ignores when they come back
ASKS_FOR_STATE = ("get_state", "preset_save", "preset_delete", "hello")
MAX_MESSAGE_BYTES = 64 * 1024
MAX_SENDER_CHARS = 40
ENVELOPE_KEYS = ("v", "kind")  # the rest of a message's keys are its fields
SETTINGS_FIELDS = live_names()  # what a `settings` message may carry


class MessageError(ValueError):
    """A dreamcam message that cannot be used; the text says why."""


@dataclass(frozen=True)
class Message:
    kind: str
    fields: dict[str, Any] = field(default_factory=dict)


def decode(event_data: Any) -> Message | None:
    """Read one event's data. None: not a dreamcam message (other tools' events pass by)."""
    if not isinstance(event_data, Mapping) or NAMESPACE not in event_data:
        return None
    payload = event_data[NAMESPACE]
    if not isinstance(payload, Mapping):
        raise MessageError(f"'{NAMESPACE}' must be an object, got {type(payload).__name__}")
    try:
        size = len(json.dumps(payload, default=str))
    except (ValueError, RecursionError):  # nested too deeply, or an integer of thousands of digits
        raise MessageError("message is nested too deeply or holds a number too long to read") from None
    if size > MAX_MESSAGE_BYTES:
        raise MessageError(f"message is {size} bytes, more than the {MAX_MESSAGE_BYTES} allowed")
    version = payload.get("v")
    if version != PROTOCOL_VERSION:
        raise MessageError(f"protocol version {version!r} is not supported (this app speaks v{PROTOCOL_VERSION})")
    kind = payload.get("kind")
    if not isinstance(kind, str):
        raise MessageError("'kind' is missing")
    body = {k: v for k, v in payload.items() if k not in ENVELOPE_KEYS}
    return Message(kind, body)


def encode(kind: str, **fields: Any) -> dict[str, Any]:
    """Event data for one message (wrap it as {"eventData": ...} for BroadcastCustomEvent)."""
    return {NAMESPACE: {"v": PROTOCOL_VERSION, "kind": kind, **fields}}


def settings_event(changes: Mapping[str, Any]) -> dict[str, Any]:
    return encode("settings", **dict(changes))


def status_event(status: Status) -> dict[str, Any]:
    return encode("status", **status.as_dict())


def state_event(store: SettingsStore, presets: Any = None) -> dict[str, Any]:
    """The settings in force, their version and origin, and the app's preset names."""
    settings, version, origin = store.state()
    return encode("state", settings=settings.as_dict(), version=version, origin=origin,
                  presets=preset_names(presets))


class PresetStore(Protocol):
    """The app's one preset store (plugin.config's functions)."""

    def list_presets(self) -> list[str]: ...

    def load_preset(self, name: str) -> dict[str, Any]: ...

    def save_preset(self, name: str, settings: StreamSettings) -> Any: ...

    def delete_preset(self, name: str) -> bool: ...


def default_presets() -> PresetStore:
    from . import config

    return config  # type: ignore[return-value]  # the module has the four functions


def preset_names(presets: PresetStore | None = None) -> list[str]:
    try:
        return list((presets or default_presets()).list_presets())
    except OSError:
        return []


def sender_origin(message: Message, origin: str) -> str:
    """`origin` plus the message's `from` label, e.g. 'obs:obs-panel-1a2b'."""
    label = message.fields.get("from")
    if isinstance(label, str) and label.strip():
        clean = "".join(ch for ch in label.strip()[:MAX_SENDER_CHARS] if ch.isprintable())
        return f"{origin}:{clean}"
    return origin


def settings_changes(message: Message, presets: PresetStore | None = None) -> dict[str, Any]:
    """The fields of a `settings` message, a named preset's values under them."""
    changes = {k: v for k, v in message.fields.items() if k != "from"}
    unknown = sorted(str(k) for k in changes if k not in SETTINGS_FIELDS)
    if unknown:  # a misspelt field must not be answered "ok"
        raise SettingsError(unknown[0][:60], unknown_setting(unknown[0], SETTINGS_FIELDS))
    name = changes.get("preset")
    if name:
        if not isinstance(name, str):
            raise SettingsError("preset", f"must be a preset name, got {name!r}")
        changes = {**(presets or default_presets()).load_preset(name), **changes}
    return changes


def apply_settings_message(store: SettingsStore, message: Message, origin: str,
                           presets: PresetStore | None = None) -> StreamSettings:
    """Apply a `settings` message as one update; SettingsError leaves everything as it was."""
    if message.kind != "settings":
        raise MessageError(f"expected a settings message, got {message.kind!r}")
    return store.apply(settings_changes(message, presets), origin=sender_origin(message, origin))


def _preset_name(message: Message) -> str:
    name = message.fields.get("name")
    if not isinstance(name, str) or not name.strip():
        raise SettingsError("preset", f"{message.kind} needs a 'name', got {name!r}")
    return name.strip()


def save_preset_message(store: SettingsStore, message: Message, origin: str,
                        presets: PresetStore | None = None) -> None:
    """Save the settings in force (plus `values`, if given) under `name`; they then carry that name."""
    from .settings import apply_changes

    name = _preset_name(message)
    values = message.fields.get("values") or {}
    if not isinstance(values, Mapping):
        raise SettingsError("values", f"must be an object of settings, got {type(values).__name__}")
    settings, unknown = apply_changes(store.current, {k: v for k, v in values.items() if k != "preset"})
    if unknown:
        log.info("ignored unknown settings in preset %r from %s: %s", name, origin, ", ".join(unknown))
    (presets or default_presets()).save_preset(name, settings)
    log.info("saved preset %r (from %s)", name, sender_origin(message, origin))
    store.apply({**values, "preset": name}, origin=sender_origin(message, origin))


def delete_preset_message(message: Message, origin: str, presets: PresetStore | None = None) -> None:
    name = _preset_name(message)
    if not (presets or default_presets()).delete_preset(name):
        raise SettingsError("preset", f"no preset named {name!r}")
    log.info("deleted preset %r (from %s)", name, sender_origin(message, origin))


@dataclass(frozen=True)
class Handled:
    """What became of one incoming event: its kind (None: not ours) and the error, if any."""

    kind: str | None = None
    error: str | None = None

    @property
    def wants_state(self) -> bool:
        """The sender should get a `state` now (asked for, or the preset list changed)."""
        return self.kind in ASKS_FOR_STATE


def handle(store: SettingsStore, event_data: Any, origin: str,
           presets: PresetStore | None = None) -> Handled:
    """Handle one incoming event for the app. Unknown kinds are ignored with one log line; a bad
    message changes nothing and its error text is returned (to report in `status`)."""
    try:
        message = decode(event_data)
        if message is None:
            return Handled()
        if message.kind not in KINDS:
            log.info("ignored dreamcam message of unknown kind %r from %s", message.kind, origin)
            return Handled()
        if message.kind == "settings":
            apply_settings_message(store, message, origin, presets)
        elif message.kind == "preset_save":
            save_preset_message(store, message, origin, presets)
        elif message.kind == "preset_delete":
            delete_preset_message(message, origin, presets)
        elif message.kind == "hello" and message.fields.get("role") == "app":
            return Handled()  # another app instance (or our own echo) needs no state from us
        return Handled(message.kind)
    except (MessageError, SettingsError) as exc:
        log.warning("rejected dreamcam message from %s: %s", origin, exc)
        return Handled("rejected", f"rejected update: {exc}")
    except OSError as exc:  # the preset folder cannot be written
        log.warning("dreamcam message from %s failed: %s", origin, exc)
        return Handled("rejected", f"rejected update: preset: {exc}")


def handle_event(store: SettingsStore, event_data: Any, origin: str) -> str | None:
    """handle() for callers that only need the error text (None: fine or not ours)."""
    return handle(store, event_data, origin).error
