"""Which pystray backend the tray uses, and one line that says what it can do and why not.

On Linux pystray tries AppIndicator, then GTK, then plain X11 (xorg). Left alone it stops at a
`ValueError` when PyGObject is installed but the AppIndicator typelib is not, the xorg backend
has no menu at all, and with no tray host it logs "Failed to dock icon" with a traceback on
every redraw. So the backend is picked here before pystray is imported, and the user gets one
line with the fix instead.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

BACKEND_ENV = "PYSTRAY_BACKEND"
# What gives a Linux tray a menu: PyGObject in the Python that runs dreamcam plus the typelibs.
LINUX_MENU_FIX = ("for a menu install PyGObject and the AppIndicator typelib: sudo apt install python3-gi "
                  "gir1.2-ayatanaappindicator3-0.1 (a venv must be made with --system-site-packages from "
                  "/usr/bin/python3, or pip install PyGObject into it)")


@dataclass(frozen=True)
class TrayBackend:
    name: str  # pystray backend name (appindicator, gtk, xorg, win32, darwin, dummy)
    has_menu: bool
    note: str = ""  # one line for the user when something is missing, else ""


def _gi_namespace(*candidates: tuple[str, str]) -> str:
    """The first (namespace, version) PyGObject can load; raises ImportError otherwise."""
    try:
        import gi
    except Exception as exc:  # not installed, or a broken build
        raise ImportError(f"PyGObject (gi) is not importable in {sys.executable}: {exc}") from exc
    errors = []
    for namespace, version in candidates:
        try:
            gi.require_version(namespace, version)
            return namespace
        except (ValueError, AttributeError) as exc:
            errors.append(str(exc))
    raise ImportError("; ".join(errors))


def choose_backend(platform: str = sys.platform) -> TrayBackend:
    """Pick the backend (and set PYSTRAY_BACKEND so pystray uses it). A backend named in the
    environment is used as given."""
    named = os.environ.get(BACKEND_ENV)
    if named == "xorg":
        return _xorg(f"{BACKEND_ENV}=xorg is set")
    if named:
        return TrayBackend(named, True)
    if platform == "win32":
        return TrayBackend("win32", True)
    if platform == "darwin":
        return TrayBackend("darwin", True)
    why = []
    for name, namespaces in (("appindicator", (("AyatanaAppIndicator3", "0.1"), ("AppIndicator3", "0.1"))),
                             ("gtk", (("Gtk", "3.0"),))):
        try:
            _gi_namespace(*namespaces)
        except ImportError as exc:
            why.append(str(exc))
            continue
        os.environ[BACKEND_ENV] = name
        return TrayBackend(name, True)
    os.environ[BACKEND_ENV] = "xorg"
    return _xorg(why[0] if why else "no GTK")


def _xorg(reason: str) -> TrayBackend:
    return TrayBackend("xorg", False, f"the tray icon has no menu here ({reason}); {LINUX_MENU_FIX}. "
                                      "The plain X11 icon also ignores clicks (pystray's xorg backend): "
                                      "`dreamcam set`, `dreamcam status` and the OBS panel work, Ctrl+C stops")


def x11_tray_host_missing() -> bool:
    """True when an X display is there but nothing owns the system-tray selection (the icon
    cannot dock); False when a tray host exists or this cannot be told."""
    try:
        from Xlib import X, display

        conn = display.Display()
        try:
            atom = conn.intern_atom(f"_NET_SYSTEM_TRAY_S{conn.get_default_screen()}")
            return conn.get_selection_owner(atom) == X.NONE
        finally:
            conn.close()
    except Exception:
        return False


class _DockErrorsOnce(logging.Filter):
    """pystray's xorg backend logs 'Failed to dock icon' with a traceback on every update."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Failed to dock icon" not in record.getMessage()


def quiet_dock_errors() -> None:
    for name in ("pystray", "pystray._base", "pystray._xorg"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DockErrorsOnce) for f in logger.filters):
            logger.addFilter(_DockErrorsOnce())


def describe(backend: TrayBackend) -> list[str]:
    """What to tell the user at start (possibly nothing)."""
    lines = [backend.note] if backend.note else []
    if backend.name in ("xorg", "gtk") and x11_tray_host_missing():
        lines.append("no system tray on this display (nothing owns _NET_SYSTEM_TRAY), so the icon is not "
                     "shown; it appears when a tray starts. The stream runs and `dreamcam set` works; "
                     "stop with Ctrl+C")
    return lines
