"""The control protocol (app side): `dreamcam` messages carried in obs-websocket custom events
and on the local control socket.

An event's data is `{"dreamcam": {"v": 1, "kind": ..., ...fields}}`. Kinds: `settings` (a partial
StreamSettings: any of the schema's live fields, `SETTINGS_FIELDS`; any other field is refused),
`status` (the app's numbers, about once a second), `hello` and `bye`. Messages that
are not ours return None; ours that are malformed raise MessageError. The OBS script holds its own
copy of this format (it may import nothing from dreamcam; its fields come from dreamcam_schema.json);
tests hold both sides to it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

from .control import SettingsStore, Status
from .schema import live_names
from .settings import SettingsError, StreamSettings

log = logging.getLogger(__name__)

NAMESPACE = "dreamcam"
PROTOCOL_VERSION = 1
KINDS = ("settings", "status", "hello", "bye")
MAX_MESSAGE_BYTES = 64 * 1024
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


def apply_settings_message(store: SettingsStore, message: Message, origin: str) -> StreamSettings:
    """Apply a `settings` message as one update; SettingsError leaves everything as it was."""
    if message.kind != "settings":
        raise MessageError(f"expected a settings message, got {message.kind!r}")
    unknown = sorted(str(k) for k in message.fields if k not in SETTINGS_FIELDS)
    if unknown:  # a misspelt field must not be answered "ok"
        raise SettingsError(unknown[0][:60], f"unknown setting (known: {', '.join(sorted(SETTINGS_FIELDS))})")
    return store.apply(message.fields, origin=origin)


def handle_event(store: SettingsStore, event_data: Any, origin: str) -> str | None:
    """Handle one incoming event for the app. Returns an error text to report in `status`, or None.

    Unknown kinds are ignored with one log line; settings errors change nothing."""
    try:
        message = decode(event_data)
        if message is None or message.kind in ("status", "hello", "bye"):
            return None
        if message.kind not in KINDS:
            log.info("ignored dreamcam message of unknown kind %r from %s", message.kind, origin)
            return None
        apply_settings_message(store, message, origin)
        return None
    except (MessageError, SettingsError) as exc:
        log.warning("rejected dreamcam message from %s: %s", origin, exc)
        return f"rejected update: {exc}"
