"""Dreamcam control panel for OBS Studio (Tools > Scripts > +).

Needs Python 3.9+ in OBS (obsws-python's minimum); keep it free of newer syntax.

Change Dreamcam's prompt, strength, guidance, seed, similarity filter and pause from inside OBS.
The panel talks to the Dreamcam app through OBS's own WebSocket server (obs-websocket v5): it
broadcasts `settings` custom events and shows the `status` events the app sends back.

Runs inside OBS's Python: imports only the standard library, `obspython` and `obsws_python`.
It shares no code with the dreamcam package. Its controls (names, labels, ranges, groups, checks)
come from dreamcam_schema.json, which must sit beside this file (generated from dreamcam's
plugin/schema.py; `dreamcam obs-script --copy-to FOLDER` copies both); the message format below
is a copy of the contract in dreamcam's plugin/messages.py and a test holds both to the same format.

Network I/O happens on one worker thread of this script, never on OBS's UI or video thread.
"""

import configparser
import json
import logging
import math
import os
import random
import sys
import threading
import time
from typing import Any, Callable, Dict, Mapping, Optional

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
# The panel's own connection fields (host, port, password) mirror the app's obs_* settings.
CONNECTION = {f["name"]: f for f in SCHEMA["fields"] if f["name"] in ("obs_host", "obs_port", "obs_password")}
if len(CONNECTION) < 3:  # no schema: enough to show the connection fields and the error
    CONNECTION = {"obs_host": {"default": "127.0.0.1", "label": "OBS WebSocket host"},
                  "obs_port": {"default": 4455, "min": 1, "max": 65535, "label": "OBS WebSocket port"},
                  "obs_password": {"default": "", "label": "OBS WebSocket password"}}


BUILTIN_PRESETS: Dict[str, Dict[str, Any]] = {
    "Watercolor": {"prompt": "a vivid watercolor painting, soft light, highly detailed", "strength": 0.5},
    "Anime": {"prompt": "anime style portrait, cel shading, clean lines, vibrant colors", "strength": 0.6},
    "Oil painting": {"prompt": "an oil painting in the style of the old masters, dramatic light", "strength": 0.55},
}

DEBOUNCE_S = 0.4  # send this long after the last change...
MAX_WAIT_S = 1.5  # ...but at least this often while the user keeps dragging or typing
STATUS_STALE_S = 4.0  # no status for this long: the app is not running (or not connected)
STARTUP_GRACE_S = 3.0  # connection problems in the first seconds after loading are not reported


def encode(kind: str, **fields: Any) -> Dict[str, Any]:
    """Event data of one dreamcam message (the request body wraps it as {"eventData": ...})."""
    return {NAMESPACE: {"v": PROTOCOL_VERSION, "kind": kind, **fields}}


def settings_message(changes: Mapping[str, Any]) -> Dict[str, Any]:
    return encode("settings", **dict(changes))


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


def diff_settings(current: Mapping[str, Any], last_sent: Mapping[str, Any]) -> Dict[str, Any]:
    """Fields of `current` that differ from what was last sent (all of them if nothing was)."""
    return {k: v for k, v in current.items() if k not in last_sent or last_sent[k] != v}


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
            else:
                out[name] = str(value)
        except (TypeError, ValueError, OverflowError):
            pass
    return out


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


def valid_values(values: Mapping[str, Any]) -> Dict[str, Any]:
    """The panel fields among `values` that the app would accept (a hand-edited preset's bad
    values are dropped, the panel keeps its own)."""
    return {k: v for k, v in normalize(values).items() if not field_problem(FIELDS[k], v)}


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


def format_status(connection: str, status: Optional[Mapping[str, Any]], age_s: Optional[float],
                  warning: str = "") -> str:
    """One line for the panel: OBS connection, app running, fps, skip ratio, latency, errors."""
    if connection != "connected":
        line = connection
    elif status is None or age_s is None or age_s > STATUS_STALE_S:
        line = "connected to OBS; waiting for the Dreamcam app (start it with: dreamcam run --obs)"
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


def install_hint(error: str = OBSWS_IMPORT_ERROR) -> str:
    """What to tell the user when obsws_python cannot be imported inside OBS."""
    return (
        "The Python package obsws-python is missing from the Python that OBS uses "
        f"({error}). Install it into that Python and reload this script:\n"
        "- Windows: the folder set in Tools > Scripts > Python Settings holds python.exe; run\n"
        '  "<that folder>\\python.exe" -m pip install obsws-python\n'
        "- macOS: the Python.framework set in Tools > Scripts > Python Settings; run\n"
        "  <that python3> -m pip install obsws-python\n"
        "- Linux: OBS uses the system Python 3; run: python3 -m pip install --user obsws-python\n"
        "  (or pip install --target <script folder>/dreamcam_vendor obsws-python)\n"
        "obsws-python needs Python 3.9+; OBS 28/29 on Windows accept up to 3.10, OBS 30+ up to 3.12 "
        "(64-bit)."
    )


class Panel:
    """The panel's state, shared by OBS callbacks and the network thread (all under one lock).

    OBS threads call `update` with the panel values; the network thread calls `outgoing` to get
    the message to send, and `on_event` with every custom event it receives."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 debounce: Optional[Debouncer] = None) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._debounce = debounce or Debouncer()
        self._values: Dict[str, Any] = {}
        self._sent: Dict[str, Any] = {}
        self._extra: Dict[str, Any] = {}  # one-shot fields (preset name)
        self._sync = True  # send everything on the next chance (first connect, app said hello)
        self._status: Optional[Dict[str, Any]] = None
        self._status_at: Optional[float] = None
        self.connection = "not connected"

    def update(self, values: Mapping[str, Any], **extra: Any) -> None:
        with self._lock:
            self._values = normalize(values)
            self._extra.update(extra)
            if diff_settings(self._values, self._sent) or self._extra:
                self._debounce.touch(self._clock())

    def request_sync(self) -> None:
        with self._lock:
            self._sync = True

    def outgoing(self) -> Optional[Dict[str, Any]]:
        """Event data to send now, or None. Marks it as sent (the caller sends it or resyncs)."""
        with self._lock:
            if not self._values:
                return None
            if self._sync:
                changes = dict(self._values)
            elif self._debounce.due(self._clock()):
                changes = diff_settings(self._values, self._sent)
            else:
                return None
            changes.update(self._extra)
            self._extra = {}
            self._sync = False
            self._debounce.reset()
            if not changes:
                return None
            self._sent = dict(self._values)
            return settings_message(changes)

    def on_event(self, event_data: Any) -> None:
        payload = decode(event_data)
        if payload is None:
            return
        kind = payload.get("kind")
        with self._lock:
            if kind == "status":
                self._status = payload
                self._status_at = self._clock()
            elif kind == "hello" and payload.get("role") == "app":
                self._sync = True  # a (re)started app gets the whole panel
            elif kind == "bye" and payload.get("role") == "app":
                self._status = None

    def status_line(self) -> str:
        with self._lock:
            age = None if self._status_at is None else self._clock() - self._status_at
            return format_status(self.connection, self._status, age, check_values(self._values))


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
        try:
            req.broadcast_custom_event({"eventData": encode("hello", role="obs-panel")})
        except Exception:
            self._close(req, ev)
            raise
        self._set_connection("connected")
        self.panel.request_sync()
        return req, ev

    def _serve(self, req: Any, ev: Any) -> None:
        while not self._stop.is_set() and not self._reconnect_now:
            if not ev.worker.is_alive():
                return
            try:
                message = self.panel.outgoing()
                if message is not None:
                    req.broadcast_custom_event({"eventData": message})
            except Exception:
                self.panel.request_sync()  # resend everything once reconnected
                return
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
# Presets (kept in the script's settings, so they travel with the scene collection on any OS)
# ---------------------------------------------------------------------------------------------
def load_presets(raw: str) -> Dict[str, Dict[str, Any]]:
    presets = {k: dict(v) for k, v in BUILTIN_PRESETS.items()}
    try:
        saved = json.loads(raw) if raw else {}
    except ValueError:
        saved = {}
    if isinstance(saved, dict):
        for name, values in saved.items():
            if isinstance(name, str) and isinstance(values, dict):
                presets[name] = valid_values(values)
    return presets


def save_preset(raw: str, name: str, values: Mapping[str, Any]) -> str:
    """The presets JSON with `name` set to the preset-worthy part of `values`."""
    try:
        saved = json.loads(raw) if raw else {}
    except ValueError:
        saved = {}
    if not isinstance(saved, dict):
        saved = {}
    keep = {k: v for k, v in normalize(values).items() if FIELDS[k].get("in_preset")}
    saved[name] = keep
    return json.dumps(saved, sort_keys=True)


def delete_preset(raw: str, name: str) -> str:
    try:
        saved = json.loads(raw) if raw else {}
    except ValueError:
        saved = {}
    if isinstance(saved, dict):
        saved.pop(name, None)
    return json.dumps(saved if isinstance(saved, dict) else {}, sort_keys=True)


# ---------------------------------------------------------------------------------------------
# OBS glue (everything below runs only inside OBS, or with a stand-in obspython in tests)
# ---------------------------------------------------------------------------------------------
class _Script:
    def __init__(self) -> None:
        self.settings: Any = None
        self.panel = Panel()
        self.link: Optional[Link] = None
        self.shown_line = ""
        self.config_dir: Optional[str] = None
        self.ticks = 0


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


def script_description() -> str:
    text = ("<b>Dreamcam</b>: live control of the Dreamcam app (real-time diffusion virtual camera). "
            "Start the app with <code>dreamcam run --obs</code>, enable Tools &gt; WebSocket Server "
            "Settings, and enter the same port and password below.")
    if obsws_python is None:
        text += "<br><b>Not working yet:</b> " + install_hint().replace("\n", "<br>")
    if SCHEMA_ERROR:
        text += "<br><b>No settings to show:</b> " + SCHEMA_ERROR
    return text


def script_defaults(settings: Any) -> None:
    obs.obs_data_set_default_bool(settings, "use_local_websocket", True)
    obs.obs_data_set_default_string(settings, "host", CONNECTION["obs_host"]["default"])
    obs.obs_data_set_default_int(settings, "port", CONNECTION["obs_port"]["default"])
    obs.obs_data_set_default_string(settings, "presets_json", "")
    for name, spec in FIELDS.items():
        _data_fn("set_default", spec["type"])(settings, name, spec["default"])


def _group(props: Any, title: str) -> Any:
    """A titled box of the panel for one schema group (flat where OBS has no groups)."""
    if not hasattr(obs, "obs_properties_add_group"):
        return props
    box = obs.obs_properties_create()
    name = "group_" + "".join(c if c.isalnum() else "_" for c in title.lower())
    obs.obs_properties_add_group(props, name, title, obs.OBS_GROUP_NORMAL, box)
    return box


def _add_field(props: Any, name: str, spec: Mapping[str, Any]) -> None:
    """One control for a schema field, chosen by its widget hint."""
    kind, widget, label = spec["type"], spec["widget"], spec["label"]
    if kind == "text":
        text_type = obs.OBS_TEXT_MULTILINE if widget == "multiline" else (
            obs.OBS_TEXT_PASSWORD if spec.get("secret") else obs.OBS_TEXT_DEFAULT)
        obs.obs_properties_add_text(props, name, label, text_type)
    elif kind == "choice":
        lst = obs.obs_properties_add_list(props, name, label, obs.OBS_COMBO_TYPE_LIST, obs.OBS_COMBO_FORMAT_STRING)
        for choice in spec["choices"]:
            obs.obs_property_list_add_string(lst, choice, choice)
    elif kind == "bool":
        obs.obs_properties_add_bool(props, name, label)
    elif kind in ("int", "float"):
        verb = ("int" if kind == "int" else "float") + ("_slider" if widget == "slider" else "")
        getattr(obs, "obs_properties_add_" + verb)(props, name, label, spec["min"], spec["max"], spec["step"])
        if name == "seed":
            obs.obs_properties_add_button(props, "randomize_seed", "Randomize seed", _on_randomize_seed)


def script_properties() -> Any:
    props = obs.obs_properties_create()
    if obsws_python is None:
        obs.obs_properties_add_text(props, "install_hint", install_hint(), obs.OBS_TEXT_INFO)
    obs.obs_properties_add_text(props, "status", "Status", obs.OBS_TEXT_INFO)
    obs.obs_properties_add_button(props, "refresh_status", "Refresh status", _on_refresh)
    obs.obs_properties_add_bool(props, "use_local_websocket",
                                "Use this OBS's WebSocket server settings (ignore the three fields below)")
    host, port, password = CONNECTION["obs_host"], CONNECTION["obs_port"], CONNECTION["obs_password"]
    obs.obs_properties_add_text(props, "host", host["label"], obs.OBS_TEXT_DEFAULT)
    obs.obs_properties_add_int(props, "port", port["label"], port["min"], port["max"], 1)
    obs.obs_properties_add_text(props, "password", password["label"], obs.OBS_TEXT_PASSWORD)
    for group in GROUPS:
        box = _group(props, group)
        for name, spec in FIELDS.items():
            if spec["group"] == group:
                _add_field(box, name, spec)
    lst = obs.obs_properties_add_list(props, "preset_pick", "Preset", obs.OBS_COMBO_TYPE_LIST,
                                      obs.OBS_COMBO_FORMAT_STRING)
    raw = obs.obs_data_get_string(_S.settings, "presets_json") if _S.settings is not None else ""
    for name in sorted(load_presets(raw)):
        obs.obs_property_list_add_string(lst, name, name)
    obs.obs_properties_add_button(props, "preset_load", "Load preset", _on_preset_load)
    obs.obs_properties_add_text(props, "preset_name", "Save current as", obs.OBS_TEXT_DEFAULT)
    obs.obs_properties_add_button(props, "preset_save", "Save preset", _on_preset_save)
    obs.obs_properties_add_button(props, "preset_delete", "Delete picked preset", _on_preset_delete)
    return props


def script_load(settings: Any) -> None:
    _S.settings = settings
    _S.config_dir = obs_config_dir()
    if obsws_python is None:
        _log("[dreamcam] " + install_hint())
    _S.link = Link(_S.panel, log=_log)
    _S.link.start()
    obs.timer_add(_refresh_status, 500)
    try:  # build the panel once now, so a problem shows in the log at load, not when it is opened
        obs.obs_properties_destroy(script_properties())
    except Exception as exc:
        _log(f"[dreamcam] building the panel failed: {type(exc).__name__}: {exc}")


def script_update(settings: Any) -> None:
    _S.settings = settings
    _configure_link(settings)
    _S.panel.update(read_panel(settings))


def _configure_link(settings: Any) -> None:
    if _S.link is not None:
        _S.link.configure(*connection_settings(
            obs.obs_data_get_bool(settings, "use_local_websocket"),
            obs.obs_data_get_string(settings, "host"), obs.obs_data_get_int(settings, "port"),
            obs.obs_data_get_string(settings, "password"), _S.config_dir))


def script_unload() -> None:
    obs.timer_remove(_refresh_status)
    if _S.link is not None:
        _S.link.stop()
        _S.link = None


def _refresh_status() -> None:
    """OBS timer: copy the latest status line into the panel (and the optional status file)."""
    if _S.settings is None:
        return
    _S.ticks += 1
    if _S.ticks % 10 == 0:  # follow changes made in Tools > WebSocket Server Settings
        _configure_link(_S.settings)
    line = _S.panel.status_line()
    if line == _S.shown_line:
        return
    _S.shown_line = line
    obs.obs_data_set_string(_S.settings, "status", line)
    path = obs.obs_data_get_string(_S.settings, "status_file")  # for monitoring tools and tests
    if path:
        try:
            tmp = path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(line + "\n")
            os.replace(tmp, path)
        except OSError:
            pass


def _on_refresh(props: Any, prop: Any) -> bool:
    _refresh_status()
    return True


def _on_randomize_seed(props: Any, prop: Any) -> bool:
    if _S.settings is None:
        return False
    seed = FIELDS["seed"]
    obs.obs_data_set_int(_S.settings, "seed", random.randint(seed["min"], seed["max"]))
    script_update(_S.settings)
    return True


def _on_preset_load(props: Any, prop: Any) -> bool:
    if _S.settings is None:
        return False
    name = obs.obs_data_get_string(_S.settings, "preset_pick")
    preset = load_presets(obs.obs_data_get_string(_S.settings, "presets_json")).get(name)
    if not preset:
        return False
    write_panel(_S.settings, preset)
    _S.panel.update(read_panel(_S.settings), preset=name)
    return True


def _on_preset_save(props: Any, prop: Any) -> bool:
    if _S.settings is None:
        return False
    name = obs.obs_data_get_string(_S.settings, "preset_name").strip()
    if not name:
        return False
    raw = save_preset(obs.obs_data_get_string(_S.settings, "presets_json"), name, read_panel(_S.settings))
    obs.obs_data_set_string(_S.settings, "presets_json", raw)
    obs.obs_data_set_string(_S.settings, "preset_pick", name)
    _refill_presets(props)
    return True


def _on_preset_delete(props: Any, prop: Any) -> bool:
    if _S.settings is None:
        return False
    name = obs.obs_data_get_string(_S.settings, "preset_pick")
    raw = delete_preset(obs.obs_data_get_string(_S.settings, "presets_json"), name)
    obs.obs_data_set_string(_S.settings, "presets_json", raw)
    _refill_presets(props)
    return True


def _refill_presets(props: Any) -> None:
    lst = obs.obs_properties_get(props, "preset_pick")
    if lst is None:
        return
    obs.obs_property_list_clear(lst)
    for name in sorted(load_presets(obs.obs_data_get_string(_S.settings, "presets_json"))):
        obs.obs_property_list_add_string(lst, name, name)
