"""Dreamcam control panel for OBS Studio (Tools > Scripts > +).

Needs Python 3.9+ in OBS (obsws-python's minimum); keep it to Python 3.6 syntax.

Change Dreamcam's prompt, strength, guidance, seed, similarity filter and pause from inside OBS,
with OBS hotkeys for pause, presets and a new seed. The panel talks to the Dreamcam app through
OBS's own WebSocket server (obs-websocket v5). The app is the source of truth: it broadcasts a
`state` (the settings in force, whoever changed them: this panel, `dreamcam set`, the tray,
another panel) and the panel shows it; the panel sends only what the user changes (sliders at
once, prompts when Apply or Enter is pressed) and uses the app's presets.

Runs inside OBS's Python: imports only the standard library, `obspython` and `obsws_python`.
It shares no code with the dreamcam package. Its controls (names, labels, ranges, groups, checks)
come from dreamcam_schema.json, which must sit beside this file (generated from dreamcam's
plugin/schema.py; `dreamcam obs-script --copy-to FOLDER` copies both); the message format below
is a copy of the contract in dreamcam's plugin/messages.py and a test holds both to the same format.

Network I/O happens on one worker thread of this script, never on OBS's UI or video thread.
"""

import configparser
import html
import json
import logging
import math
import os
import random
import socket
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional

try:  # outside OBS (unit tests, linters) the pure logic below still imports
    import obspython as obs
except ImportError:  # pragma: no cover - only inside OBS is this module present
    obs = None

# `python -m pip install --target <this folder>/dreamcam_vendor obsws-python` also works.
_VENDOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dreamcam_vendor")
if os.path.isdir(_VENDOR) and _VENDOR not in sys.path:
    sys.path.insert(0, _VENDOR)

try:
    import obsws_python

    OBSWS_IMPORT_ERROR = ""
    # It logs the password (INFO) and a traceback per refused connection; the panel says it better.
    for _name in ("obsws_python", "websocket"):
        logging.getLogger(_name).setLevel(logging.CRITICAL)
except Exception as _exc:  # ImportError, or a broken install
    obsws_python = None
    OBSWS_IMPORT_ERROR = f"{type(_exc).__name__}: {_exc}"

# ---------------------------------------------------------------------------------------------
# The settings schema (dreamcam_schema.json beside this script, generated from dreamcam's
# plugin/schema.py) and the message format (copy of the contract; see docs/obs.md)
# ---------------------------------------------------------------------------------------------
NAMESPACE = "dreamcam"
PROTOCOL_VERSION = 1
KINDS_SENT = ("settings", "preset_save", "preset_delete", "get_state", "hello")  # panel -> app
KINDS_READ = ("state", "status", "bye")  # app -> panels
SCHEMA_VERSION = 1
SCHEMA_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dreamcam_schema.json")


def load_schema(path: str = SCHEMA_FILE) -> tuple:
    """(schema dict, error text): the fields of dreamcam_schema.json, or no fields and why not."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict) or data.get("version") != SCHEMA_VERSION:
            raise ValueError("schema version %r, this script reads %d" % (
                data.get("version") if isinstance(data, dict) else None, SCHEMA_VERSION))
        return data, ""
    except (OSError, ValueError) as exc:
        return {"groups": [], "fields": []}, ("cannot read %s (%s); copy it from the same Dreamcam version "
                                              "as this script (dreamcam obs-script --copy-to FOLDER)" % (path, exc))


SCHEMA, SCHEMA_ERROR = load_schema()
# The panel's controls: the app's live settings marked for panels, in the schema's order
# (names are the app's field names; each spec is the field's JSON object).
FIELDS: Dict[str, Dict[str, Any]] = {
    f["name"]: f for f in SCHEMA["fields"] if f.get("live") and f.get("panel")}
GROUPS = [g for g in SCHEMA["groups"] if any(f["group"] == g for f in FIELDS.values())]
# Text fields (prompts) go out only when applied (Apply button or Enter), never while typing.
APPLIED_FIELDS = tuple(name for name, spec in FIELDS.items() if spec["type"] == "text")
# Each section with text fields ends with an Apply button (each applies every typed text): apply_button.
# The panel's own connection fields (host, port, password) mirror the app's obs_* settings.
CONNECTION = {f["name"]: f for f in SCHEMA["fields"] if f["name"] in ("obs_host", "obs_port", "obs_password")}
if len(CONNECTION) < 3:  # no schema: enough to show the connection fields and the error
    CONNECTION = {"obs_host": {"default": "127.0.0.1", "label": "OBS WebSocket host"},
                  "obs_port": {"default": 4455, "min": 1, "max": 65535, "label": "OBS WebSocket port"},
                  "obs_password": {"default": "", "label": "OBS WebSocket password"}}


def schema_default(name: str, fallback: Any) -> Any:
    """The default of any schema field (also the app-only ones), e.g. the control port."""
    for spec in SCHEMA["fields"]:
        if spec.get("name") == name:
            return spec.get("default", fallback)
    return fallback


CONTROL_PORT = schema_default("control_port", 7861)  # the app's local control port (see app_listens)

DEBOUNCE_S = 0.4  # send this long after the last change...
MAX_WAIT_S = 1.5  # ...but at least this often while the user keeps dragging or typing
STATUS_STALE_S = 4.0  # no status for this long: the app is not running (or not connected)
STARTUP_GRACE_S = 3.0  # connection problems in the first seconds after loading are not reported
IN_FLIGHT_S = 3.0  # a change sent this long ago without the app's state showing it: show the app's
APP_PROBE_S = 3.0  # how often the panel looks for an app on the control port while none talks
SHORT_STATUS_CHARS = 64  # the status line at the top stays this short (the panel must not widen)


def encode(kind: str, **fields: Any) -> Dict[str, Any]:
    """Event data of one dreamcam message (the request body wraps it as {"eventData": ...})."""
    return {NAMESPACE: {"v": PROTOCOL_VERSION, "kind": kind, **fields}}


def settings_message(changes: Mapping[str, Any], sender: str = "") -> Dict[str, Any]:
    fields = dict(changes)
    if sender:
        fields["from"] = sender
    return encode("settings", **fields)


def decode(event_data: Any) -> Optional[Dict[str, Any]]:
    """The dreamcam payload of an event, or None when the event is not a v1 dreamcam message."""
    if not isinstance(event_data, Mapping):
        return None
    payload = event_data.get(NAMESPACE)
    if not isinstance(payload, Mapping) or payload.get("v") != PROTOCOL_VERSION:
        return None
    if not isinstance(payload.get("kind"), str):
        return None
    return dict(payload)


def normalize(values: Mapping[str, Any]) -> Dict[str, Any]:
    """Panel values as the app expects them: known fields only, right types (OBS gives floats);
    a value that cannot be one (NaN for a whole number, text for a number) is left out."""
    out: Dict[str, Any] = {}
    for name, value in values.items():
        spec = FIELDS.get(name)
        if spec is None:
            continue
        kind = spec["type"]
        try:
            if kind == "int":
                out[name] = int(value)
            elif kind == "float":
                number = float(value)
                if math.isfinite(number):
                    out[name] = round(number, 6)
            elif kind == "bool":
                out[name] = bool(value)
            else:  # a nullable text the app holds as null (a LoRA slot that is off) shows as empty
                out[name] = "" if value is None else clean_text(str(value))
        except (TypeError, ValueError, OverflowError):
            pass
    return out


def clean_text(text: str) -> str:
    """A prompt as the app gets it: Enter commits it and Tab is no character of it (OBS's text
    boxes put both into the text)."""
    return text.replace("\t", " ").replace("\r", "").replace("\n", " ").strip()


def field_problem(spec: Mapping[str, Any], value: Any) -> str:
    """"" when the app would accept `value` for the field, else why not (the schema's rules)."""
    kind = spec["type"]
    if kind in ("int", "float"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and isinstance(value, float):  # ints are compared exactly, whatever their size
            ok = math.isfinite(value) and (kind == "float" or value.is_integer())
        ok = ok and spec["min"] <= value <= spec["max"]
        if ok and spec.get("multiple_of"):
            ok = int(value) % spec["multiple_of"] == 0
        return "" if ok else "must be %s, got %r" % (spec["allowed"], value)
    if kind == "bool":
        return "" if isinstance(value, bool) else "must be true or false, got %r" % (value,)
    if kind == "choice":
        return "" if value in spec["choices"] else "must be one of %s" % ", ".join(spec["choices"])
    if kind == "text":
        if not isinstance(value, str):
            return "must be text"
        if len(value) > spec["max_chars"]:
            return "is %d characters; at most %d are allowed" % (len(value), spec["max_chars"])
    return ""


def check_values(values: Mapping[str, Any]) -> str:
    """A short warning for values the app would reject, or "" (the app re-checks everything)."""
    if SCHEMA_ERROR:
        return SCHEMA_ERROR
    for name, value in values.items():
        if name in FIELDS:
            problem = field_problem(FIELDS[name], value)
            if problem:
                return "%s %s" % (name, problem)
    return ""


class Debouncer:
    """Says when a burst of changes has settled: `delay` after the last change, or at the latest
    `max_wait` after the first unsent change (so a long drag still sends now and then)."""

    def __init__(self, delay: float = DEBOUNCE_S, max_wait: float = MAX_WAIT_S) -> None:
        self.delay = delay
        self.max_wait = max_wait
        self._first: Optional[float] = None
        self._last: Optional[float] = None

    @property
    def pending(self) -> bool:
        return self._first is not None

    def touch(self, now: float) -> None:
        if self._first is None:
            self._first = now
        self._last = now

    def due(self, now: float) -> bool:
        if self._first is None or self._last is None:
            return False
        return now - self._last >= self.delay or now - self._first >= self.max_wait

    def reset(self) -> None:
        self._first = self._last = None


def _pct(value: Any) -> str:
    try:
        return f"{100 * float(value):.0f}%"
    except (TypeError, ValueError):
        return "?"


def _num(value: Any, fmt: str) -> str:
    try:
        return format(float(value), fmt)
    except (TypeError, ValueError):
        return "?"


def short_model_name(model: str) -> str:
    """A local folder or file shows as its last part; hub ids (org/name) stay as they are."""
    if model.startswith(("/", "~")) or "\\" in model or ":" in model[1:3]:
        return model.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or model
    return model


NO_APP = "connected to OBS; waiting for the Dreamcam app (start it with: dreamcam run --obs)"
APP_NOT_ON_OBS = ("connected to OBS, but the Dreamcam app running on this computer is not: check the "
                  "OBS WebSocket password it uses (its terminal says why; --obs-password or "
                  "DREAMCAM_OBS_PASSWORD) and that it was started with --obs")


def format_status(connection: str, status: Optional[Mapping[str, Any]], age_s: Optional[float],
                  warning: str = "", app_elsewhere: bool = False) -> str:
    """The full status line (details area, status file): OBS connection, app running, fps, skip
    ratio, latency, errors. `app_elsewhere`: an app answers on this computer's control port."""
    if connection != "connected":
        line = connection
    elif status is None or age_s is None or age_s > STATUS_STALE_S:
        line = APP_NOT_ON_OBS if app_elsewhere else NO_APP
    else:
        state = "running" if status.get("running") else "stopped"
        if status.get("paused"):
            state = "paused"
        line = (f"connected; app {state} | {_num(status.get('fps_out'), '.1f')} fps out, "
                f"{_num(status.get('infer_fps'), '.1f')} fps processed | skip {_pct(status.get('skip_ratio'))} "
                f"| latency {_num(status.get('latency_ms'), '.0f')} ms")
        if status.get("model"):
            line += f" | {short_model_name(str(status.get('model')))}"
            if status.get("engine"):
                line += f" ({status.get('engine')})"
        if status.get("error"):
            line += f" | error: {status.get('error')}"
    if warning:
        line += f" | {warning}"
    return line


def short_status(connection: str, status: Optional[Mapping[str, Any]], age_s: Optional[float],
                 warning: str = "", app_elsewhere: bool = False) -> str:
    """The one short line at the top of the panel (the whole story is in Details)."""
    if connection == "connecting to OBS WebSocket...":
        line = "connecting to OBS..."
    elif connection != "connected":
        line = "not connected to OBS: see Details"
    elif status is None or age_s is None or age_s > STATUS_STALE_S:
        line = "app runs but is not on OBS: see Details" if app_elsewhere else "waiting for the app"
    else:
        state = "paused" if status.get("paused") else ("running" if status.get("running") else "stopped")
        line = "%s | %s fps | %s ms | skip %s" % (state, _num(status.get("fps_out"), ".1f"),
                                                  _num(status.get("latency_ms"), ".0f"),
                                                  _pct(status.get("skip_ratio")))
        if status.get("error") or warning:
            line += " | error: see Details"
    if warning and connection != "connected":
        line += " (!)"
    return line[:SHORT_STATUS_CHARS]


def install_hint(error: str = OBSWS_IMPORT_ERROR) -> str:
    """What to tell the user when obsws_python cannot be imported inside OBS (plain text; the
    description pane is HTML: see html_text)."""
    here = os.path.dirname(os.path.abspath(__file__))
    return (
        "The Python package obsws-python is missing from the Python that OBS uses "
        f"({error}). Install it and reload this script (the round arrow in Tools > Scripts):\n"
        "- Every system, also Debian 12, Ubuntu 23.04+ and Flatpak OBS (PEP 668 refuses --user "
        "installs there): put it in a dreamcam_vendor folder next to this script:\n"
        f'  python3 -m pip install --target "{os.path.join(here, "dreamcam_vendor")}" obsws-python\n'
        "- Windows: the folder set in Tools > Scripts > Python Settings holds python.exe; run\n"
        '  "<that folder>\\python.exe" -m pip install obsws-python\n'
        "- macOS: the Python.framework set in Tools > Scripts > Python Settings; run\n"
        "  <that framework>/bin/python3 -m pip install obsws-python\n"
        "obsws-python needs Python 3.9+; OBS 28/29 on Windows accept up to 3.10, OBS 30+ up to 3.12 "
        "(64-bit)."
    )


def html_text(text: str) -> str:
    """Plain text for OBS's description pane, which is HTML: <placeholders> would vanish."""
    return html.escape(text).replace("\n", "<br>")


class Panel:
    """The panel's state, shared by OBS callbacks and the network thread (all under one lock).

    The app is the source of truth. OBS callbacks call `update` with the controls' values: a
    changed slider, toggle or list is sent (debounced), a changed prompt is a draft until `apply`.
    The network thread calls `outgoing` for the next message and `on_event` with every custom
    event; the app's `state` becomes values for the controls (`take_shown`, written into OBS by
    the timer), except for what the user is changing right now."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 debounce: Optional[Debouncer] = None, sender: str = "") -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._debounce = debounce or Debouncer()
        self.sender = sender or "obs-panel-%04x" % random.randrange(16 ** 4)
        self._local: Dict[str, Any] = {}  # what the controls hold (the OBS settings), normalized
        self._app: Optional[Dict[str, Any]] = None  # the app's settings in force (its last state)
        self.app_version = -1
        self.app_origin = ""
        self.presets: List[str] = []  # the app's presets (its one preset store)
        self.app_preset: Optional[str] = None  # the preset the settings in force came from
        self._pending: Dict[str, bool] = {}  # live fields the user changed, not sent yet
        self._applied: Dict[str, bool] = {}  # text fields the user applied, to send now
        self._in_flight: Dict[str, tuple] = {}  # field -> (value sent, when) until the app shows it
        self._commands: List[Dict[str, Any]] = []  # one-shot messages (presets, seed, pause)
        self._shown: Dict[str, Any] = {}  # app values for the controls, not yet written into OBS
        self._status: Optional[Dict[str, Any]] = None
        self._status_at: Optional[float] = None
        self.connection = "not connected"
        self.app_elsewhere = False  # an app answers on this computer's control port
        self.state_changes = 0  # states received (tests, the timer's redraw decisions)

    # ---- from OBS (the controls) ---------------------------------------------------------------
    def update(self, values: Mapping[str, Any]) -> None:
        """The controls' values (every OBS change calls this). The first read of a field is what
        OBS stored, not a user change; later differences are the user's."""
        now = self._clock()
        with self._lock:
            for name, value in normalize(values).items():
                if name not in self._local:
                    self._local[name] = value
                    continue
                if self._local[name] == value:
                    continue
                self._local[name] = value
                if name in APPLIED_FIELDS:
                    continue  # a draft until Apply
                self._pending[name] = True
                self._debounce.touch(now)

    def apply(self) -> List[str]:
        """Send the prompts the user edited (Apply or Enter); returns their names."""
        with self._lock:
            names = [n for n in APPLIED_FIELDS if n in self._local
                     and (self._app is None or self._local[n] != self._app.get(n))]
            for name in names:
                self._applied[name] = True
            return names

    def drafts(self) -> List[str]:
        """Prompts typed but not applied yet."""
        with self._lock:
            return [n for n in APPLIED_FIELDS if self._app is not None and n in self._local
                    and self._local[n] != self._app.get(n)]

    def command(self, kind: str, **fields: Any) -> None:
        """Queue a one-shot message (settings of a hotkey, preset save/delete, get_state)."""
        fields["from"] = self.sender
        with self._lock:
            self._commands.append(encode(kind, **fields))

    def requeue(self, message: Dict[str, Any]) -> None:
        """A message the network could not send goes out first after the reconnect."""
        with self._lock:
            self._commands.insert(0, message)

    def app_value(self, name: str, fallback: Any = None) -> Any:
        with self._lock:
            return fallback if self._app is None else self._app.get(name, fallback)

    @property
    def app_settings(self) -> Optional[Dict[str, Any]]:
        with self._lock:
            return None if self._app is None else dict(self._app)

    def preset_after(self, step: int) -> Optional[str]:
        """The app's preset `step` places after the one in force (wrapping), or None."""
        with self._lock:
            if not self.presets:
                return None
            current = self.app_preset
            if current in self.presets:
                return self.presets[(self.presets.index(current) + step) % len(self.presets)]
            return self.presets[0 if step > 0 else -1]

    # ---- to the network thread -----------------------------------------------------------------
    def outgoing(self) -> Optional[Dict[str, Any]]:
        """Event data to send now, or None; marks it as sent."""
        now = self._clock()
        with self._lock:
            if self._commands:
                return self._commands.pop(0)
            changes: Dict[str, Any] = {}
            for name in list(self._applied):
                if name in self._local:
                    changes[name] = self._local[name]
            self._applied.clear()
            if self._pending and self._debounce.due(now):
                for name in self._pending:
                    changes[name] = self._local[name]
                self._pending.clear()
                self._debounce.reset()
            if not changes:
                return None
            for name, value in changes.items():
                self._in_flight[name] = (value, now)
            return settings_message(changes, self.sender)

    def on_event(self, event_data: Any) -> None:
        payload = decode(event_data)
        if payload is None:
            return
        kind = payload.get("kind")
        with self._lock:
            if kind == "status":
                self._status = payload
                self._status_at = self._clock()
                self.app_elsewhere = False
            elif kind == "state":
                self._on_state(payload)
            elif kind == "bye" and payload.get("role") == "app":
                self._status = None

    def _on_state(self, payload: Mapping[str, Any]) -> None:
        settings = payload.get("settings")
        if not isinstance(settings, Mapping):
            return
        new = normalize(settings)
        old = self._app
        mine = str(payload.get("origin", "")).endswith(self.sender)
        for name, value in new.items():
            if name in self._pending:
                continue  # the user is changing it right now: their value goes out next
            if name in self._in_flight:
                if not mine and self._in_flight[name][0] != value:
                    continue  # our change is on its way; this state predates it
                del self._in_flight[name]
            # what the control will hold: an app value not yet written into OBS counts as written
            current = self._shown.get(name, self._local.get(name, value))
            if name in APPLIED_FIELDS and old is not None and current != old.get(name):
                continue  # a draft the user typed stays; the prompt in force shows in Details
            if current != value or name in self._shown:
                self._shown[name] = value
        self._app = new
        preset = settings.get("preset")
        self.app_preset = preset if isinstance(preset, str) else None
        self.app_version = payload.get("version", -1)
        self.app_origin = str(payload.get("origin", ""))
        presets = payload.get("presets")
        self.presets = [str(p) for p in presets] if isinstance(presets, list) else []
        self.state_changes += 1

    # ---- to the OBS timer ----------------------------------------------------------------------
    def take_shown(self) -> Dict[str, Any]:
        """App values to write into the controls now (the caller writes them, then they count
        as the controls' values). Changes the app never confirmed fall back to the app's."""
        now = self._clock()
        with self._lock:
            for name, (value, at) in list(self._in_flight.items()):
                if now - at > IN_FLIGHT_S:
                    del self._in_flight[name]
                    if self._app is not None and name not in self._pending and self._app.get(name) != value:
                        self._shown[name] = self._app[name]
            shown, self._shown = self._shown, {}
            self._local.update(shown)
            return shown

    def status_line(self) -> str:
        """The full line (details, status file)."""
        with self._lock:
            age = None if self._status_at is None else self._clock() - self._status_at
            return format_status(self.connection, self._status, age, check_values(self._local),
                                 self.app_elsewhere)

    def short_line(self) -> str:
        with self._lock:
            age = None if self._status_at is None else self._clock() - self._status_at
            return short_status(self.connection, self._status, age, check_values(self._local),
                                self.app_elsewhere)

    def wants_app_probe(self) -> bool:
        """Connected to OBS and no app talks: look on the control port (network thread)."""
        with self._lock:
            stale = self._status_at is None or self._clock() - self._status_at > STATUS_STALE_S
            return self.connection == "connected" and stale

    def details(self) -> str:
        """The long text of the Details area: the full status and what is in force."""
        line = self.status_line()
        with self._lock:
            app = dict(self._app) if self._app is not None else None
            origin, preset = self.app_origin, self.app_preset
        lines = [line]
        if app is not None:
            lines.append("In force: prompt %r%s; last change from %s" % (
                app.get("prompt", ""), " (preset %s)" % preset if preset else "", origin or "?"))
        drafts = self.drafts()
        if drafts:
            lines.append("Not applied yet: %s (press Apply or Enter)" % ", ".join(drafts))
        if obsws_python is None:
            lines.append(install_hint())
        return "\n".join(lines)


def app_listens(port: int = CONTROL_PORT, host: str = "127.0.0.1", timeout: float = 0.3) -> bool:
    """Does a Dreamcam app listen on this computer's control port? (Connect and hang up: tells
    'the app runs but cannot reach OBS' from 'the app is not running'.)"""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# Network thread
# ---------------------------------------------------------------------------------------------
class Link:
    """Owns the obs-websocket clients on one thread; reconnects with back-off."""

    def __init__(self, panel: Panel, client_module: Any = None, log: Callable[[str], None] = print) -> None:
        self.panel = panel
        self._ws = client_module if client_module is not None else obsws_python
        self._log = log
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._conn: Optional[tuple] = None
        self._thread: Optional[threading.Thread] = None
        self._last_logged = ""
        self._reconnect_now = False
        self._started_at = time.monotonic()

    def configure(self, host: str, port: int, password: str) -> None:
        with self._lock:
            if self._conn == (host, port, password):
                return
            self._conn = (host, port, password)
        self._reconnect_now = True
        self._wake.set()

    def start(self) -> None:
        self._stop.clear()
        self._reconnect_now = False
        self._started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="dreamcam-obs-link", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _set_connection(self, text: str, grace: bool = True) -> None:
        if grace and text != "connected" and time.monotonic() - self._started_at < STARTUP_GRACE_S:
            # OBS loads scripts before its WebSocket server listens: not worth a log line yet
            self.panel.connection = "connecting to OBS WebSocket..."
            return
        self.panel.connection = text
        if text != self._last_logged:  # one line per change, never one per retry
            self._last_logged = text
            self._log(f"[dreamcam] {text}")

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            with self._lock:
                conn = self._conn
            if conn is None:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            self._reconnect_now = False
            try:
                clients = self._connect(conn)
            except Exception as exc:  # never let the thread die: report and retry
                self._set_connection(f"connection error: {type(exc).__name__}: {exc}")
                clients = None
            if clients is None:
                self._wake.wait(backoff)
                self._wake.clear()
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 0.5
            self._serve(*clients)
            self._close(*clients)
            if self._stop.is_set():
                break
            if self._reconnect_now:
                self._set_connection("connection settings changed; reconnecting")
            else:
                self._set_connection(f"lost the connection to OBS at {conn[0]}:{conn[1]}; reconnecting")

    def _connect(self, conn: tuple) -> Optional[tuple]:
        host, port, password = conn
        if self._ws is None:
            self._set_connection("obsws-python is not installed (see the note above)", grace=False)
            return None
        req = ev = None
        try:
            req = self._ws.ReqClient(host=host, port=port, password=password, timeout=3)
            ev = self._ws.EventClient(host=host, port=port, password=password, subs=self._ws.Subs.GENERAL)
        except Exception as exc:
            self._close(req, ev)
            self._set_connection(describe_connect_error(exc, host, port))
            return None

        def on_custom_event(data: Any) -> None:  # obsws-python dispatches on this exact name
            try:
                self.panel.on_event({k: getattr(data, k) for k in data.attrs()})
            except Exception:
                pass  # an odd event must not kill the event thread

        ev.callback.register(on_custom_event)
        try:  # the app answers a panel's hello with its state: the panel shows what is in force
            req.broadcast_custom_event({"eventData": encode("hello", role="obs-panel", **{"from": self.panel.sender})})
        except Exception:
            self._close(req, ev)
            raise
        self._set_connection("connected")
        return req, ev

    def _serve(self, req: Any, ev: Any) -> None:
        next_probe = 0.0
        while not self._stop.is_set() and not self._reconnect_now:
            if not ev.worker.is_alive():
                return
            message = self.panel.outgoing()
            if message is not None:
                try:
                    req.broadcast_custom_event({"eventData": message})
                except Exception:
                    self.panel.requeue(message)  # sent once reconnected
                    return
                continue
            now = time.monotonic()
            if now >= next_probe and self.panel.wants_app_probe():
                self.panel.app_elsewhere = app_listens()
                next_probe = now + APP_PROBE_S
            self._wake.wait(0.05)
            self._wake.clear()

    @staticmethod
    def _close(req: Any, ev: Any) -> None:
        for client in (ev, req):
            if client is None:
                continue
            try:
                client.disconnect()
            except Exception:
                pass


def describe_connect_error(exc: BaseException, host: str, port: int) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if "identify" in text or "password" in text:
        return (f"OBS WebSocket at {host}:{port} rejected the password; copy it from "
                "Tools > WebSocket Server Settings > Show Connect Info")
    if isinstance(exc, (ConnectionRefusedError, OSError)) or "refused" in text.lower():
        return (f"no OBS WebSocket server at {host}:{port}; enable it in Tools > WebSocket Server "
                "Settings and check the port")
    return f"cannot connect to OBS WebSocket at {host}:{port}: {text}"


# ---------------------------------------------------------------------------------------------
# This OBS's own WebSocket settings (so the panel needs no port or password typed in)
# ---------------------------------------------------------------------------------------------
def local_websocket_settings(obs_config_dir: str) -> Optional[tuple]:
    """(port, password) of the WebSocket server of the OBS whose config folder is given, or None.

    obs-websocket 5.5+ (OBS 30.2+) keeps them in plugin_config/obs-websocket/config.json, older
    versions in the [OBSWebSocket] section of global.ini."""
    path = os.path.join(obs_config_dir, "plugin_config", "obs-websocket", "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, dict) and data.get("server_port"):
            password = data.get("server_password", "") if data.get("auth_required", True) else ""
            return int(data["server_port"]), str(password or "")
    except (OSError, ValueError, TypeError):
        pass
    ini = configparser.RawConfigParser(strict=False)
    try:
        with open(os.path.join(obs_config_dir, "global.ini"), encoding="utf-8-sig") as f:
            ini.read_file(f)
        section = ini["OBSWebSocket"]
        port = int(section.get("ServerPort", "4455"))
        auth = section.get("AuthRequired", "true").lower() == "true"
        return port, (section.get("ServerPassword", "") if auth else "")
    except (OSError, KeyError, ValueError, configparser.Error):
        return None


def obs_config_dir() -> str:
    """The config folder of the running OBS (honours XDG_CONFIG_HOME; APPDATA on Windows)."""
    if obs is not None and hasattr(obs, "os_get_config_path_ptr"):
        path = obs.os_get_config_path_ptr("obs-studio")
        if path:
            return path
    if sys.platform == "win32":
        return os.path.join(os.environ.get("APPDATA", ""), "obs-studio")
    if sys.platform == "darwin":
        return os.path.expanduser("~/Library/Application Support/obs-studio")
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return os.path.join(base, "obs-studio")


def connection_settings(use_local: bool, host: str, port: int, password: str,
                        config_dir: Optional[str] = None) -> tuple:
    """(host, port, password) the panel connects with."""
    if use_local:
        local = local_websocket_settings(config_dir or obs_config_dir())
        if local is not None:
            return ("127.0.0.1",) + tuple(local)
    return host or "127.0.0.1", int(port), password


# ---------------------------------------------------------------------------------------------
# OBS glue (everything below runs only inside OBS, or with a stand-in obspython in tests)
# ---------------------------------------------------------------------------------------------
TICK_MS = 250
OPEN_GROUPS = ("Prompt", "Diffusion", "Output")  # expanded until the user folds them
PANEL_GROUPS = ("Presets", "Connection", "Details")  # the panel's own, after the schema's
HOTKEY_PREFIX = "dreamcam."
PRESET_HOTKEY = HOTKEY_PREFIX + "preset."


class _Script:
    def __init__(self) -> None:
        self.settings: Any = None
        self.panel = Panel()
        self.link: Optional[Link] = None
        self.shown = ("", "", "")  # short line, details, full line last written
        self.config_dir: Optional[str] = None
        self.ticks = 0
        self.hotkeys: Dict[str, Any] = {}  # hotkey name -> OBS hotkey id
        self.group_children: Dict[str, List[str]] = {}  # group property -> its properties


_S = _Script()


def _log(message: str) -> None:
    if obs is not None and hasattr(obs, "script_log"):
        obs.script_log(obs.LOG_INFO, message)
    else:
        print(message)


_OBS_DATA_TYPES = {"int": "int", "float": "double", "bool": "bool"}


def _data_fn(verb: str, kind: str) -> Any:
    """obspython's typed accessor for a panel field kind, e.g. ("set_default", "float") ->
    obs_data_set_default_double."""
    return getattr(obs, "obs_data_%s_%s" % (verb, _OBS_DATA_TYPES.get(kind, "string")))


def read_panel(settings: Any) -> Dict[str, Any]:
    return {name: _data_fn("get", spec["type"])(settings, name) for name, spec in FIELDS.items()}


def write_panel(settings: Any, values: Mapping[str, Any]) -> None:
    for name, value in normalize(values).items():
        _data_fn("set", FIELDS[name]["type"])(settings, name, value)


def group_setting(title: str) -> str:
    """The settings key of a group's box: true while it is expanded."""
    return "group_" + "".join(c if c.isalnum() else "_" for c in title.lower())


def script_description() -> str:
    text = ("<b>Dreamcam</b>: live control of the Dreamcam app (real-time diffusion virtual camera). "
            "Start the app with <code>dreamcam run --obs</code> and enable Tools &gt; WebSocket Server "
            "Settings. The panel shows the settings in force in the app; sliders act at once, prompts "
            "when you press <b>Apply</b> (or Enter). Untick a section's title to fold it. Hotkeys: "
            "Settings &gt; Hotkeys, \"Dreamcam\".")
    if obsws_python is None:
        text += "<br><b>Not working yet:</b> " + html_text(install_hint())
    if SCHEMA_ERROR:
        text += "<br><b>No settings to show:</b> " + html_text(SCHEMA_ERROR)
    return text


def script_defaults(settings: Any) -> None:
    obs.obs_data_set_default_bool(settings, "use_local_websocket", True)
    obs.obs_data_set_default_string(settings, "host", CONNECTION["obs_host"]["default"])
    obs.obs_data_set_default_int(settings, "port", CONNECTION["obs_port"]["default"])
    for name, spec in FIELDS.items():
        default = spec["default"]
        _data_fn("set_default", spec["type"])(settings, name, "" if default is None else default)
    for title in list(GROUPS) + list(PANEL_GROUPS):
        obs.obs_data_set_default_bool(settings, group_setting(title), title in OPEN_GROUPS)


def _group(props: Any, title: str) -> Any:
    """A box of the panel whose title is a tick box: untick it to fold the box (OBS has no
    collapsible groups; the contents are hidden instead). Flat where OBS has no groups."""
    if not hasattr(obs, "obs_properties_add_group"):
        return props
    box = obs.obs_properties_create()
    name = group_setting(title)
    group = obs.obs_properties_add_group(props, name, title, obs.OBS_GROUP_CHECKABLE, box)
    obs.obs_property_set_modified_callback(group, _on_group_toggled)
    _S.group_children[name] = []
    return box


def _add_field(box: Any, name: str, spec: Mapping[str, Any]) -> List[Any]:
    """The control(s) for one schema field, chosen by its widget hint."""
    kind, widget, label = spec["type"], spec["widget"], spec["label"]
    added = []
    if kind == "text":
        text_type = obs.OBS_TEXT_MULTILINE if widget == "multiline" else (
            obs.OBS_TEXT_PASSWORD if spec.get("secret") else obs.OBS_TEXT_DEFAULT)
        prop = obs.obs_properties_add_text(box, name, label, text_type)
        obs.obs_property_set_modified_callback(prop, _on_text_modified)
        added.append(prop)
    elif kind == "choice":
        prop = obs.obs_properties_add_list(box, name, label, obs.OBS_COMBO_TYPE_LIST, obs.OBS_COMBO_FORMAT_STRING)
        for choice in spec["choices"]:
            obs.obs_property_list_add_string(prop, choice, choice)
        obs.obs_property_set_modified_callback(prop, _on_discrete_modified)
        added.append(prop)
    elif kind == "bool":
        prop = obs.obs_properties_add_bool(box, name, label)
        obs.obs_property_set_modified_callback(prop, _on_discrete_modified)
        added.append(prop)
    elif kind in ("int", "float"):
        verb = ("int" if kind == "int" else "float") + ("_slider" if widget == "slider" else "")
        added.append(getattr(obs, "obs_properties_add_" + verb)(box, name, label, spec["min"], spec["max"],
                                                                 spec["step"]))
        if name == "seed":
            added.append(obs.obs_properties_add_button(box, "randomize_seed", "New seed", _on_randomize_seed))
    return added


def apply_button(group: str) -> tuple:
    """(name, label) of the Apply button that ends a group holding text fields (prompts, sources)."""
    if group == "Prompt":
        return "apply_prompts", "Apply prompts"
    return "apply_" + group_setting(group)[len("group_"):], "Apply typed %s changes" % group


def _boxes(props: Any) -> Dict[str, Any]:
    return {title: _group(props, title) for title in list(GROUPS) + list(PANEL_GROUPS)}


def script_properties() -> Any:
    props = obs.obs_properties_create()
    _S.group_children = {}
    obs.obs_properties_add_text(props, "status", "Dreamcam", obs.OBS_TEXT_INFO)
    obs.obs_properties_add_button(props, "refresh_status", "Refresh", _on_refresh)
    boxes = _boxes(props)
    children: Dict[str, List[Any]] = {title: [] for title in boxes}
    for group in GROUPS:
        for name, spec in FIELDS.items():
            if spec["group"] == group:
                children[group] += _add_field(boxes[group], name, spec)
        if any(FIELDS[name]["group"] == group for name in APPLIED_FIELDS):  # typed text goes out on Apply
            button, label = apply_button(group)
            children[group].append(obs.obs_properties_add_button(boxes[group], button, label, _on_apply_prompts))
    presets = boxes["Presets"]
    pick = obs.obs_properties_add_list(presets, "preset_pick", "App preset", obs.OBS_COMBO_TYPE_LIST,
                                       obs.OBS_COMBO_FORMAT_STRING)
    for name in _S.panel.presets:
        obs.obs_property_list_add_string(pick, name, name)
    children["Presets"] += [
        pick,
        obs.obs_properties_add_button(presets, "preset_load", "Apply preset", _on_preset_load),
        obs.obs_properties_add_text(presets, "preset_name", "Save as", obs.OBS_TEXT_DEFAULT),
        obs.obs_properties_add_button(presets, "preset_save", "Save settings in force", _on_preset_save),
        obs.obs_properties_add_button(presets, "preset_delete", "Delete picked preset", _on_preset_delete)]
    conn = boxes["Connection"]
    use_local = obs.obs_properties_add_bool(conn, "use_local_websocket", "Use this OBS's WebSocket settings")
    obs.obs_property_set_modified_callback(use_local, _on_discrete_modified)
    host, port, password = CONNECTION["obs_host"], CONNECTION["obs_port"], CONNECTION["obs_password"]
    children["Connection"] += [
        use_local,
        obs.obs_properties_add_text(conn, "host", host["label"], obs.OBS_TEXT_DEFAULT),
        obs.obs_properties_add_int(conn, "port", port["label"], port["min"], port["max"], 1),
        obs.obs_properties_add_text(conn, "password", password["label"], obs.OBS_TEXT_PASSWORD)]
    details = obs.obs_properties_add_text(boxes["Details"], "details", "", obs.OBS_TEXT_INFO)
    if hasattr(obs, "obs_property_text_set_info_word_wrap"):  # OBS 28+: long text wraps, never widens
        obs.obs_property_text_set_info_word_wrap(details, True)
    children["Details"].append(details)
    if obsws_python is None:
        hint = obs.obs_properties_add_text(props, "install_hint", install_hint(), obs.OBS_TEXT_INFO)
        if hasattr(obs, "obs_property_text_set_info_word_wrap"):
            obs.obs_property_text_set_info_word_wrap(hint, True)
    for title, props_of in children.items():
        key = group_setting(title)
        _S.group_children[key] = [obs.obs_property_name(p) for p in props_of]
        _fold(props, key, _S.settings is None or obs.obs_data_get_bool(_S.settings, key))
    return props


def _fold(props: Any, group: str, expanded: bool) -> None:
    for name in _S.group_children.get(group, []):
        prop = obs.obs_properties_get(props, name)
        if prop is not None:
            obs.obs_property_set_visible(prop, expanded)


def script_load(settings: Any) -> None:
    _S.settings = settings
    _S.config_dir = obs_config_dir()
    if obsws_python is None:
        _log("[dreamcam] " + install_hint())
    _S.link = Link(_S.panel, log=_log)
    _S.link.start()
    _load_hotkeys(settings)
    _show_status(force=True)  # never the text of an earlier session
    obs.timer_add(_tick, TICK_MS)
    try:  # build the panel once now, so a problem shows in the log at load, not when it is opened
        obs.obs_properties_destroy(script_properties())
    except Exception as exc:
        _log(f"[dreamcam] building the panel failed: {type(exc).__name__}: {exc}")


def script_update(settings: Any) -> None:
    _S.settings = settings
    _configure_link(settings)
    _S.panel.update(read_panel(settings))


def script_save(settings: Any) -> None:
    """OBS saves the scene collection: keep the hotkeys' keys (and the preset names they are for)."""
    for name, hotkey in _S.hotkeys.items():
        array = obs.obs_hotkey_save(hotkey)
        obs.obs_data_set_array(settings, "hotkey:" + name, array)
        obs.obs_data_array_release(array)
    names = [n[len(PRESET_HOTKEY):] for n in _S.hotkeys if n.startswith(PRESET_HOTKEY)]
    obs.obs_data_set_string(settings, "hotkey_presets", json.dumps(names))


def _configure_link(settings: Any) -> None:
    if _S.link is not None:
        _S.link.configure(*connection_settings(
            obs.obs_data_get_bool(settings, "use_local_websocket"),
            obs.obs_data_get_string(settings, "host"), obs.obs_data_get_int(settings, "port"),
            obs.obs_data_get_string(settings, "password"), _S.config_dir))


def script_unload() -> None:
    obs.timer_remove(_tick)
    for hotkey in _S.hotkeys.values():
        obs.obs_hotkey_unregister(hotkey)
    _S.hotkeys = {}
    if _S.link is not None:
        _S.link.stop()
        _S.link = None


# ---- hotkeys (Settings > Hotkeys) ------------------------------------------------------------
def toggle_pause() -> None:
    paused = _S.panel.app_value("paused")
    if paused is None and _S.settings is not None:
        paused = obs.obs_data_get_bool(_S.settings, "paused")
    _S.panel.command("settings", paused=not bool(paused))


def step_preset(step: int) -> None:
    name = _S.panel.preset_after(step)
    if name is not None:
        _S.panel.command("settings", preset=name)


def new_seed() -> None:
    spec = FIELDS.get("seed", {"min": 0, "max": 2 ** 31 - 1})
    _S.panel.command("settings", seed=random.randint(spec["min"], spec["max"]))


HOTKEYS = (  # name, what Settings > Hotkeys shows, action
    (HOTKEY_PREFIX + "pause", "Dreamcam: pause / resume", toggle_pause),
    (HOTKEY_PREFIX + "next_preset", "Dreamcam: next preset", lambda: step_preset(1)),
    (HOTKEY_PREFIX + "previous_preset", "Dreamcam: previous preset", lambda: step_preset(-1)),
    (HOTKEY_PREFIX + "new_seed", "Dreamcam: new random seed", new_seed),
)


def _register_hotkey(name: str, description: str, action: Callable[[], None]) -> None:
    def on_key(pressed: bool) -> None:  # called on press and on release
        if pressed:
            action()

    hotkey = obs.obs_hotkey_register_frontend(name, description, on_key)
    if _S.settings is not None:  # the keys the user bound, saved by script_save
        array = obs.obs_data_get_array(_S.settings, "hotkey:" + name)
        if array is not None:
            obs.obs_hotkey_load(hotkey, array)
            obs.obs_data_array_release(array)
    _S.hotkeys[name] = hotkey


def _load_hotkeys(settings: Any) -> None:
    for name, description, action in HOTKEYS:
        _register_hotkey(name, description, action)
    try:
        known = json.loads(obs.obs_data_get_string(settings, "hotkey_presets") or "[]")
    except ValueError:
        known = []
    _sync_preset_hotkeys([str(n) for n in known if isinstance(n, str)])


def _sync_preset_hotkeys(names: List[str]) -> None:
    """One hotkey per app preset; a preset's hotkey stays until the app no longer has it."""
    wanted = {PRESET_HOTKEY + n: n for n in names}
    for name in [n for n in _S.hotkeys if n.startswith(PRESET_HOTKEY) and n not in wanted]:
        obs.obs_hotkey_unregister(_S.hotkeys.pop(name))
    for name, preset in wanted.items():
        if name not in _S.hotkeys:
            _register_hotkey(name, "Dreamcam preset: " + preset,
                             (lambda p: lambda: _S.panel.command("settings", preset=p))(preset))


# ---- the timer: app values into the controls, status, hotkeys of new presets ----------------
def _tick() -> None:
    if _S.settings is None:
        return
    _S.ticks += 1
    if _S.ticks % 20 == 0:  # follow changes made in Tools > WebSocket Server Settings
        _configure_link(_S.settings)
    shown = _S.panel.take_shown()
    if shown:
        write_panel(_S.settings, shown)
    if _S.panel.state_changes and sorted(n[len(PRESET_HOTKEY):] for n in _S.hotkeys
                                         if n.startswith(PRESET_HOTKEY)) != sorted(_S.panel.presets):
        _sync_preset_hotkeys(list(_S.panel.presets))
    _show_status(force=bool(shown))


def _show_status(force: bool = False) -> None:
    """Status and details into the panel's settings (shown at the panel's next redraw), and the
    optional status file (for monitoring tools and tests)."""
    if _S.settings is None:
        return
    shown = (_S.panel.short_line(), _S.panel.details(), _S.panel.status_line())
    if shown == _S.shown and not force:
        return
    _S.shown = shown
    obs.obs_data_set_string(_S.settings, "status", shown[0])
    obs.obs_data_set_string(_S.settings, "details", shown[1])
    path = obs.obs_data_get_string(_S.settings, "status_file")
    if path:
        values = {"values": read_panel(_S.settings), "in_force": _S.panel.app_settings,
                  "drafts": _S.panel.drafts(), "presets": list(_S.panel.presets),
                  "hotkeys": sorted(_S.hotkeys), "short": shown[0]}
        _write_file(path, shown[2] + "\n")
        _write_file(path + ".json", json.dumps(values, sort_keys=True))


def _write_file(path: str, text: str) -> None:
    try:
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError:
        pass


# ---- callbacks (OBS's UI thread); returning True redraws the panel from its settings --------
def _redraw() -> bool:
    """Bring the controls and the status up to date before OBS redraws the panel."""
    shown = _S.panel.take_shown()
    if shown and _S.settings is not None:
        write_panel(_S.settings, shown)
    _show_status(force=True)
    return True


def _on_refresh(props: Any, prop: Any) -> bool:
    return _redraw()


def _on_discrete_modified(props: Any, prop: Any, settings: Any) -> bool:
    """A tick box or a list: the click is over, so a redraw disturbs nothing and shows the news."""
    script_update(settings)
    return _redraw()


def _on_text_modified(props: Any, prop: Any, settings: Any) -> bool:
    """Typing changes nothing in the app. Enter (a newline in the box) applies the prompts; Tab
    and newlines are no part of a prompt: they are taken out (a redraw shows that)."""
    name = obs.obs_property_name(prop)
    raw = obs.obs_data_get_string(settings, name)
    if "\n" not in raw and "\t" not in raw and "\r" not in raw:
        return False
    obs.obs_data_set_string(settings, name, clean_text(raw))
    script_update(settings)
    if "\n" in raw or "\r" in raw:
        _S.panel.apply()
    return _redraw()


def _on_group_toggled(props: Any, prop: Any, settings: Any) -> bool:
    name = obs.obs_property_name(prop)
    _fold(props, name, obs.obs_data_get_bool(settings, name))
    return True


def _on_apply_prompts(props: Any, prop: Any) -> bool:
    if _S.settings is not None:
        script_update(_S.settings)
    _S.panel.apply()
    return _redraw()


def _on_randomize_seed(props: Any, prop: Any) -> bool:
    new_seed()
    return _redraw()


def _panel_text(key: str) -> str:
    """A text field of the panel ('' before OBS gave the script its settings)."""
    return obs.obs_data_get_string(_S.settings, key).strip() if _S.settings is not None else ""


def _on_preset_load(props: Any, prop: Any) -> bool:
    name = _panel_text("preset_pick")
    if not name:
        return False
    _S.panel.command("settings", preset=name)
    return _redraw()


def _on_preset_save(props: Any, prop: Any) -> bool:
    name = _panel_text("preset_name")
    if not name:
        return False
    _S.panel.command("preset_save", name=name)
    obs.obs_data_set_string(_S.settings, "preset_pick", name)
    return _redraw()


def _on_preset_delete(props: Any, prop: Any) -> bool:
    name = _panel_text("preset_pick")
    if not name:
        return False
    _S.panel.command("preset_delete", name=name)
    return _redraw()
