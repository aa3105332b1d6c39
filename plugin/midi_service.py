"""MIDI input (mido with python-rtmidi): the app's service that opens the mapped controller's port
and feeds its messages to the MidiController, the port list, and learn mode's listening. A
missing backend, MIDI system or device is one clear line (MidiUnavailable); the service then
retries every few seconds while the stream runs on."""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from typing import Any, Callable, Iterator

from .control import SettingsStore
from .midi_map import MidiController, MidiMapping

log = logging.getLogger(__name__)

RETRY_S = 2.0
ALSA_SEQUENCER = "/dev/snd/seq"


class MidiUnavailable(RuntimeError):
    """No MIDI here (no python-rtmidi, no MIDI system, no such device); the text says what to do."""


class DeviceMissing(MidiUnavailable):
    """The MIDI system works but the controller is not (yet) plugged in."""


def backend(api: str | None = None):
    """The mido rtmidi backend (`api`: mido's name, e.g. UNIX_JACK; None: the system's default)."""
    try:
        import mido

        chosen = mido.Backend("mido.backends.rtmidi", api=api, load=True)
    except ImportError as exc:
        raise MidiUnavailable(f"MIDI: python-rtmidi/mido is not installed ({exc}); pip install \"dreamcam[osc]\"") from None
    return chosen


def input_names(api: str | None = None) -> list[str]:
    chosen = backend(api)
    if sys.platform.startswith("linux") and api in (None, "LINUX_ALSA") and not os.path.exists(ALSA_SEQUENCER):
        raise MidiUnavailable(_no_system(api, f"{ALSA_SEQUENCER} is missing"))  # before ALSA prints its own lines
    try:
        return list(chosen.get_input_names())
    except MidiUnavailable:
        raise
    except Exception as exc:  # rtmidi's SystemError and friends: no MIDI system on this machine
        raise MidiUnavailable(_no_system(api, exc)) from None


def _no_system(api: str | None, exc: Exception) -> str:
    return (f"MIDI: no MIDI system to use ({api or 'the default API'}: {exc}); on Linux the ALSA sequencer "
            f"({ALSA_SEQUENCER}, kernel module snd-seq) is needed, or a running JACK server and api = \"jack\" "
            "in the [midi] table (--api jack)")


def find_port(names: list[str], device: str) -> str:
    """The first port whose name contains `device` (any port when `device` is empty)."""
    for name in names:
        if device.lower() in name.lower():
            return name
    listed = ", ".join(names) or "none"
    wanted = f"matching {device!r}" if device else "at all"
    raise DeviceMissing(f"MIDI: no input port {wanted} (ports: {listed}); plug the controller in, or fix "
                          "`device` in the [midi] table (dreamcam midi list)")


def open_input(device: str, api: str | None, callback: Callable[[Any], None] | None = None):
    """(port, name) of the input matching `device`; MidiUnavailable when there is none."""
    name = find_port(input_names(api), device)
    try:
        return backend(api).open_input(name, callback=callback), name
    except Exception as exc:
        raise MidiUnavailable(f"MIDI: cannot open {name!r} ({exc})") from None


class MidiInput:
    """A service (`start`/`stop`) for DreamcamApp.add_service: the mapped controller's port, its
    messages handled on rtmidi's callback thread. `start` never fails for want of MIDI: a missing
    device is looked for every `retry_s` seconds; a missing MIDI system is reported once."""

    def __init__(self, store: SettingsStore, mapping: MidiMapping, retry_s: float = RETRY_S) -> None:
        self.controller = MidiController(store, mapping)
        self.mapping = mapping
        self.retry_s = retry_s
        self.port_name = ""
        self.problem = ""  # the last reason the port is not open ('' once it is)
        self._port = None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def connected(self) -> bool:
        return self._port is not None

    def start(self) -> None:
        self._stopped.clear()
        self._try_open()
        if self._port is None and not self._stopped.is_set():
            self._thread = threading.Thread(target=self._retry_loop, name="dreamcam-midi", daemon=True)
            self._thread.start()

    def _try_open(self) -> None:
        try:
            self._port, self.port_name = open_input(self.mapping.device, self.mapping.mido_api,
                                                    callback=self._on_message)
        except DeviceMissing as exc:
            if str(exc) != self.problem:  # one line per new reason, not one every retry
                log.warning("%s; the stream runs on, looking for it every %.0f s", exc, self.retry_s)
            self.problem = str(exc)
            return
        except MidiUnavailable as exc:  # no MIDI system: retrying would not help
            log.warning("%s; the stream runs on without MIDI", exc)
            self.problem = str(exc)
            self._stopped.set()
            return
        self.problem = ""
        log.warning("MIDI: listening to %s", self.port_name)

    def _retry_loop(self) -> None:
        while self._port is None and not self._stopped.wait(self.retry_s):
            self._try_open()

    def _on_message(self, message: Any) -> None:
        try:
            self.controller.handle(message)
        except Exception:  # never let one message end rtmidi's callback thread
            log.exception("MIDI message %s failed", message)

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(self.retry_s + 1)
            self._thread = None
        port, self._port = self._port, None
        if port is not None:
            port.close()


def listen(device: str, api: str | None, timeout: float | None) -> tuple[str, Iterator[Any]]:
    """(port name, messages) for learn mode; the messages stop after `timeout` seconds of quiet
    in total (None: never)."""
    inbox: queue.Queue = queue.Queue()
    port, name = open_input(device, api, callback=inbox.put)

    def messages() -> Iterator[Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while deadline is None or time.monotonic() < deadline:
                try:
                    yield inbox.get(timeout=0.1)
                except queue.Empty:
                    continue
        finally:
            port.close()

    return name, messages()
