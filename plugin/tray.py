"""`dreamcam tray` / `dreamcam-tray`: the app with a system-tray icon (pystray) in one process.

Menu: start/stop, pause (pass the input through), presets, similarity filter on/off, open the
config folder, quit; the tooltip shows fps and status. The app it runs serves the control port
(`AppSettings.control_port`, with the control token of `secret.py`) as `dreamcam run` does. Every settings action goes through
`SettingsStore.apply(..., origin="tray")`, the same path as OBS. Menu logic lives in
`TrayController` (no pystray needed); `build_icon` wraps it in a pystray Icon, which tests drive
with PYSTRAY_BACKEND=dummy.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Optional

from .control import SettingsStore, Status
from .settings import SettingsError, StreamSettings

log = logging.getLogger(__name__)

ORIGIN = "tray"
STOP_TIMEOUT_S = 60.0
AppFactory = Callable[[StreamSettings], Any]  # -> a DreamcamApp-like object, not started


class TrayController:
    """State and actions behind the tray menu.

    `make_app(initial)` builds a fresh app (DreamcamApp cannot be restarted); while no app runs,
    actions change a standby SettingsStore whose values the next app starts with."""

    def __init__(self, make_app: AppFactory, initial: StreamSettings | None = None, *,
                 presets: Any = None, open_folder: Callable[[Path], None] | None = None,
                 config_dir: Callable[[], Path] | None = None) -> None:
        from . import config as cfg

        self._make_app = make_app
        self._presets = presets or cfg  # list_presets(), load_preset(name)
        self._config_dir = config_dir or cfg.config_dir
        self._open_folder = open_folder or open_in_file_manager
        self._standby = SettingsStore(initial)
        self._lock = threading.RLock()
        self._starting: threading.Thread | None = None
        self.app: Any = None
        self.last_error = ""
        self.on_change: Callable[[], None] = lambda: None  # refresh the icon

    # ---- state -----------------------------------------------------------------------------
    @property
    def store(self) -> SettingsStore:
        app = self.app
        return app.store if app is not None else self._standby

    @property
    def running(self) -> bool:
        app = self.app
        return app is not None and app.is_running

    @property
    def starting(self) -> bool:
        thread = self._starting
        return thread is not None and thread.is_alive()

    def status(self) -> Status | None:
        return self.app.board.latest() if self.running else None

    def tooltip(self) -> str:
        """At most 127 characters (Windows' limit for tray tooltips)."""
        s = self.store.current
        if self.starting:
            text = "Dreamcam: starting..."
        elif not self.running:
            text = "Dreamcam: stopped" + (f" ({self.last_error})" if self.last_error else "")
        else:
            st = self.status()
            text = f"Dreamcam: {st.fps_out:.1f} fps"
            if st.skip_ratio:
                text += f", skip {100 * st.skip_ratio:.0f}%"
            if st.error:
                text += f", {st.error}"
        if s.paused:
            text += " [paused]"
        if s.preset:
            text += f" - {s.preset}"
        return text[:127]

    # ---- actions ---------------------------------------------------------------------------
    def start(self, wait: bool = False) -> None:
        """Build and start the app on a background thread (model loading takes a while)."""
        with self._lock:
            if self.running or self.starting:
                return
            self._starting = threading.Thread(target=self._start, name="dreamcam-tray-start", daemon=True)
            self._starting.start()
            thread = self._starting
        self.on_change()
        if wait:
            thread.join()

    def _start(self) -> None:
        try:
            app = self._make_app(self._standby.current)
            app.start()
        except Exception as exc:
            log.error("could not start: %s", exc)
            self.last_error = str(exc)[:80]
        else:
            with self._lock:
                self.app = app
                self.last_error = ""
            log.info("tray: the stream is running")
        self.on_change()

    def stop(self) -> None:
        with self._lock:
            starting = self._starting
        if starting is not None:
            starting.join()
        with self._lock:
            app, self.app = self.app, None
            if app is None:
                return
            self._standby = SettingsStore(app.store.current)
        # a frame in flight (the first one warms the model up) may take long on a busy CPU;
        # exiting with a torch thread still inside a frame aborts the interpreter
        if not app.stop(timeout=STOP_TIMEOUT_S):
            log.warning("tray: the stream did not stop within %.0f s", STOP_TIMEOUT_S)
        self.on_change()

    def toggle_running(self) -> None:
        self.stop() if self.running else self.start()

    def apply(self, changes: dict[str, Any]) -> bool:
        try:
            self.store.apply(changes, origin=ORIGIN)
        except SettingsError as exc:
            log.warning("tray: %s", exc)
            self.last_error = str(exc)[:80]
            return False
        self.on_change()
        return True

    def toggle_pause(self) -> None:
        self.apply({"paused": not self.store.current.paused})

    def toggle_filter(self) -> None:
        self.apply({"similarity_filter": not self.store.current.similarity_filter})

    def preset_names(self) -> list[str]:
        try:
            return list(self._presets.list_presets())
        except OSError:
            return []

    def apply_preset(self, name: str) -> bool:
        try:
            values = self._presets.load_preset(name)
        except SettingsError as exc:
            log.warning("tray: %s", exc)
            self.last_error = str(exc)[:80]
            return False
        return self.apply(dict(values, preset=name))

    def open_config_folder(self) -> Path:
        folder = Path(self._config_dir())
        folder.mkdir(parents=True, exist_ok=True)
        self._open_folder(folder)
        return folder

    def quit(self) -> None:
        self.stop()


def open_in_file_manager(folder: Path) -> None:
    if sys.platform == "win32":
        os.startfile(str(folder))  # type: ignore[attr-defined]
    else:
        subprocess.Popen(["open" if sys.platform == "darwin" else "xdg-open", str(folder)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# ---- the icon --------------------------------------------------------------------------------
COLORS = {"running": (46, 160, 90), "paused": (230, 150, 30), "stopped": (120, 120, 130)}


def draw_icon(state: str, size: int = 64):
    """A lens-like badge drawn with PIL; its ring colour shows the state."""
    from PIL import Image, ImageDraw

    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    pad = size // 16
    draw.rounded_rectangle((pad, pad, size - pad, size - pad), radius=size // 5, fill=(30, 24, 60, 255))
    ring = COLORS.get(state, COLORS["stopped"])
    r = size // 2 - size // 6
    c = size // 2
    draw.ellipse((c - r, c - r, c + r, c + r), fill=(*ring, 255))
    inner = r * 3 // 5
    draw.ellipse((c - inner, c - inner, c + inner, c + inner), fill=(150, 90, 230, 255))
    dot = max(2, size // 14)
    draw.ellipse((c - inner // 2 - dot, c - inner // 2 - dot, c - inner // 2 + dot, c - inner // 2 + dot),
                 fill=(255, 255, 255, 230))
    return image


def icon_state(controller: TrayController) -> str:
    if not controller.running:
        return "stopped"
    return "paused" if controller.store.current.paused else "running"


def build_menu(controller: TrayController, on_quit: Callable[[], None]):
    import pystray

    item = pystray.MenuItem

    def preset_items():
        names = controller.preset_names()
        if not names:
            return (item("(no presets saved; see `dreamcam preset save`)", None, enabled=False),)
        return tuple(
            item(name, (lambda n: lambda icon, _item: controller.apply_preset(n))(name),
                 checked=(lambda n: lambda _item: controller.store.current.preset == n)(name), radio=True)
            for name in names)

    return pystray.Menu(
        item(lambda _i: "Stop" if controller.running else ("Starting..." if controller.starting else "Start"),
             lambda icon, _i: controller.toggle_running(), default=True),
        item("Pause (pass the input through)", lambda icon, _i: controller.toggle_pause(),
             checked=lambda _i: controller.store.current.paused),
        item("Presets", pystray.Menu(preset_items)),
        item("Similarity filter", lambda icon, _i: controller.toggle_filter(),
             checked=lambda _i: controller.store.current.similarity_filter),
        item("Open config folder", lambda icon, _i: controller.open_config_folder()),
        pystray.Menu.SEPARATOR,
        item("Quit", lambda icon, _i: on_quit()),
    )


def build_icon(controller: TrayController):
    """The pystray Icon wired to the controller; refreshes image, tooltip and menu on changes."""
    import pystray

    holder: dict[str, Any] = {}

    def on_quit() -> None:
        controller.quit()
        holder["icon"].stop()

    icon = pystray.Icon("dreamcam", draw_icon(icon_state(controller)), controller.tooltip(),
                        build_menu(controller, on_quit))
    holder["icon"] = icon

    def refresh() -> None:
        icon.icon = draw_icon(icon_state(controller))
        icon.title = controller.tooltip()
        try:
            icon.update_menu()
        except NotImplementedError:  # the dummy backend has no menu to update
            pass

    controller.on_change = refresh
    return icon


def _tooltip_loop(icon: Any, controller: TrayController, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        try:
            icon.title = controller.tooltip()
        except Exception:  # a backend hiccup must not end the loop
            log.debug("tooltip update failed", exc_info=True)


# ---- entry points ----------------------------------------------------------------------------
def app_factory(config: Optional[Path] = None, obs: bool = False) -> tuple[AppFactory, StreamSettings]:
    """Factory building the real app from a TOML config (default: dreamcam.toml in the config
    folder, when present) and the initial stream settings."""
    from . import config as cfg

    path = config or (cfg.config_dir() / "dreamcam.toml")
    file_app, file_stream = cfg.load_file(path) if (config or path.exists()) else ({}, {})
    app_settings = cfg.build_app_settings(file_app)
    initial = cfg.build_stream_settings(file_stream)

    def make_app(current: StreamSettings):
        from .app import DreamcamApp
        from .pipeline import build_processor

        processor = build_processor(app_settings, current)
        app = DreamcamApp(app_settings, current, processor=processor)
        if app_settings.control_port:  # `dreamcam set`, Stream Deck and scripts, with the control token
            from .control_server import ControlServer

            control = ControlServer(app.store, app.board, app_settings.control_port)
            control.listen()  # a port taken by another Dreamcam fails here, shown in the tooltip
            app.add_service(control)
        if obs or app_settings.obs_enabled:
            from .obs_bridge import ObsBridge

            app.add_service(ObsBridge(app.store, app.board, app_settings.obs_host, app_settings.obs_port,
                                      app_settings.obs_password or None))
        return app

    return make_app, initial


def run_tray(config: Optional[Path] = None, obs: bool = False, autostart: bool = True) -> None:
    try:
        import pystray  # noqa: F401
    except Exception as exc:  # no display, or no GUI toolkit for pystray
        raise SystemExit(f"dreamcam tray: no system tray available ({type(exc).__name__}: {exc}). "
                         "On Linux run it inside a desktop session; `dreamcam run` works without one.")
    make_app, initial = app_factory(config, obs)
    controller = TrayController(make_app, initial)
    icon = build_icon(controller)
    stop = threading.Event()

    def setup(icon_: Any) -> None:
        icon_.visible = True
        if autostart:
            controller.start()
        threading.Thread(target=_tooltip_loop, args=(icon_, controller, stop), daemon=True).start()

    def on_signal(_signum: int, _frame: Any) -> None:  # Ctrl+C, logout, service stop
        icon.stop()

    for name in ("SIGINT", "SIGTERM"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), on_signal)
    try:
        icon.run(setup)  # must run on the main thread (macOS)
    finally:
        stop.set()
        controller.stop()
        log.info("tray: stopped")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `dreamcam-tray` gui-script (no console on Windows)."""
    parser = argparse.ArgumentParser(prog="dreamcam-tray", description="Dreamcam with a tray icon.")
    parser.add_argument("--config", "-c", type=Path, help="TOML file with [app] and [stream] tables")
    parser.add_argument("--obs", action="store_true", help="also connect to OBS for live control")
    parser.add_argument("--no-autostart", action="store_true", help="wait for Start in the menu")
    args = parser.parse_args(argv)
    log_file = setup_logging()
    try:
        run_tray(args.config, args.obs, autostart=not args.no_autostart)
    except SystemExit as exc:  # without a console (Windows gui-script) the log file is all there is
        if exc.code not in (None, 0):
            log.error("%s", exc.code)
            log.info("log file: %s", log_file)
        raise


def setup_logging() -> Path | None:
    """Log to stderr when there is one, and to dreamcam-tray.log in the config folder (a gui-script
    on Windows has no console)."""
    from . import config as cfg

    handlers: list[logging.Handler] = []
    if sys.stderr is not None:
        handlers.append(logging.StreamHandler())
    path: Path | None = None
    try:
        folder = Path(cfg.config_dir())
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "dreamcam-tray.log"
        handlers.append(logging.FileHandler(path, encoding="utf-8"))
    except OSError:
        path = None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=handlers or None)
    return path


if __name__ == "__main__":
    main()
