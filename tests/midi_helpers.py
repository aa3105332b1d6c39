"""A JACK server of the test's own (dummy driver, no sound card) for real virtual MIDI ports where
the kernel's ALSA sequencer is missing (see tests/test_plugin_midi.py)."""

from __future__ import annotations

import shutil
import subprocess
import uuid

import mido
import pytest

from dreamcam.plugin.midi_service import MidiUnavailable, input_names
from plugin_helpers import wait_for

JACK = "UNIX_JACK"


@pytest.fixture
def jack(monkeypatch):
    """A JACK server of its own (dummy driver), the default server for this test's MIDI clients."""
    if shutil.which("jackd") is None:
        pytest.fail("jackd is not installed (scripts/dev-setup.sh installs jackd2)")
    name = f"dreamcam-test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("JACK_DEFAULT_SERVER", name)
    monkeypatch.setenv("JACK_NO_START_SERVER", "1")  # a client must never start a stray server
    proc = subprocess.Popen(["jackd", "-n", name, "--no-realtime", "-d", "dummy", "-r", "48000", "-p", "256"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: proc.poll() is not None or _jack_answers(), 15), "jackd did not start"
        assert proc.poll() is None, "jackd exited at once"
        yield name
    finally:
        proc.terminate()
        proc.wait(10)


def _jack_answers() -> bool:
    try:
        input_names(JACK)
        return True
    except MidiUnavailable:
        return False


def virtual_controller(name: str):
    return mido.Backend("mido.backends.rtmidi", api=JACK, load=True).open_output(name, virtual=True)
