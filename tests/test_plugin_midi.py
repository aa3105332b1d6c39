"""MIDI controllers: the mapping, the handler, learn mode and the app's MIDI input.

The kernel's ALSA sequencer (/dev/snd/seq) is missing on this kind of machine (a container), so
`mido.open_output(name, virtual=True)` fails with ALSA. The tests use a real virtual port through
a JACK server instead (jackd with its dummy driver, started by the `jack` fixture, installed by
scripts/dev-setup.sh): messages travel rtmidi -> JACK -> rtmidi into the app's port callback,
exactly as from a USB controller. The mapping's finer rules are also fed mido messages directly,
into the same `MidiController.handle` that the port callback calls.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import uuid

import mido
import pytest

from dreamcam.plugin import config as cfg
from dreamcam.plugin.app import DreamcamApp
from dreamcam.plugin.control import SettingsStore
from dreamcam.plugin.midi_map import (MidiController, check_learn_target, learn, load_mapping, parse_mapping,
                                      write_entry)
from dreamcam.plugin.midi_service import MidiInput, MidiUnavailable, input_names
from dreamcam.plugin.processor import PassThrough
from dreamcam.plugin.settings import AppSettings, SettingsError, StreamSettings
from dreamcam.plugin.sinks import NullSink
from midi_helpers import JACK, jack, virtual_controller  # noqa: F401 (jack: a fixture)
from plugin_helpers import wait_for
from test_cli import dreamcam

CC, NOTE = "control_change", "note_on"


@pytest.fixture
def presets(tmp_path, monkeypatch):
    monkeypatch.setenv(cfg.CONFIG_ENV, str(tmp_path / "cfg"))
    cfg.save_preset("Ink", StreamSettings(prompt="black ink", strength=0.7))
    cfg.save_preset("Oil", StreamSettings(prompt="oil paint", strength=0.4))


MAPPING = {
    "device": "dreamcam-test-ctl", "api": "jack",
    "cc": {"7": "strength", "8": "guidance_scale", "9": "steps", "64": "paused", "65": "preset:next"},
    "note": {"36": "preset:Ink", "37": "paused", "38": "seed:random", "39": "preset:next", "40": "strength=0.8"},
}


def make_app() -> DreamcamApp:
    return DreamcamApp(AppSettings(control_port=0), StreamSettings(prompt="start", width=64, height=64),
                       sink=NullSink(), processor=PassThrough())


# ---- through a real virtual port -------------------------------------------------------------
def test_a_controller_on_a_virtual_port_drives_the_running_app(jack, presets):
    controller = virtual_controller("dreamcam-test-ctl")
    app = make_app()
    midi = MidiInput(app.store, parse_mapping(MAPPING))
    app.add_service(midi)
    app.start()
    try:
        assert midi.connected and "dreamcam-test-ctl" in midi.port_name
        store = app.store
        controller.send(mido.Message(CC, control=7, value=127))
        assert wait_for(lambda: store.current.strength == 1.0, 5)
        controller.send(mido.Message(CC, control=8, value=32))  # 32/127 of guidance 0..20
        assert wait_for(lambda: store.current.guidance_scale == pytest.approx(32 / 127 * 20), 5)
        controller.send(mido.Message(CC, control=9, value=127))
        assert wait_for(lambda: store.current.steps == 8, 5)
        controller.send(mido.Message(NOTE, note=36, velocity=100))
        assert wait_for(lambda: store.current.preset == "Ink", 5) and store.current.prompt == "black ink"
        controller.send(mido.Message(NOTE, note=39, velocity=100))
        assert wait_for(lambda: store.current.preset == "Oil", 5)
        controller.send(mido.Message(NOTE, note=37, velocity=100))
        assert wait_for(lambda: store.current.paused, 5)
        seed = store.current.seed
        controller.send(mido.Message(NOTE, note=38, velocity=100))
        assert wait_for(lambda: store.current.seed != seed, 5)
        assert app.runner is not None and not app.runner.finished.is_set()
    finally:
        app.stop()
        controller.close()
    assert not midi.connected


def test_a_missing_device_is_one_line_and_found_when_plugged_in(jack, caplog):
    app = make_app()
    midi = MidiInput(app.store, parse_mapping({**MAPPING, "device": "dreamcam-late"}), retry_s=0.2)
    app.add_service(midi)
    with caplog.at_level(logging.WARNING, logger="dreamcam.plugin.midi_service"):
        app.start()  # does not fail
        try:
            time.sleep(1.0)  # several retries
            missing = [r.getMessage() for r in caplog.records if "no input port" in r.getMessage()]
            assert len(missing) == 1 and "'dreamcam-late'" in missing[0] and "dreamcam midi list" in missing[0]
            assert app.is_running and not midi.connected
            controller = virtual_controller("dreamcam-late")
            try:
                assert wait_for(lambda: midi.connected, 5)
                time.sleep(0.2)
                controller.send(mido.Message(CC, control=7, value=0))
                assert wait_for(lambda: app.store.current.strength == 0.0, 5)
            finally:
                controller.close()
        finally:
            app.stop()


def test_no_midi_system_is_one_line_and_no_retries(monkeypatch, caplog):
    monkeypatch.setenv("JACK_DEFAULT_SERVER", f"dreamcam-none-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("JACK_NO_START_SERVER", "1")
    with pytest.raises(MidiUnavailable, match="no MIDI system"):
        input_names(JACK)
    app = make_app()
    midi = MidiInput(app.store, parse_mapping(MAPPING), retry_s=0.1)
    app.add_service(midi)
    with caplog.at_level(logging.WARNING, logger="dreamcam.plugin.midi_service"):
        app.start()
        try:
            time.sleep(0.5)
            lines = [r.getMessage() for r in caplog.records]
            assert len(lines) == 1 and "no MIDI system" in lines[0] and "runs on without MIDI" in lines[0]
            assert app.is_running
        finally:
            app.stop()


def test_midi_list_and_learn_from_the_command_line(jack, tmp_path):
    controller = virtual_controller("dreamcam-learn")
    path = tmp_path / "midi.toml"
    path.write_text('# my controller\n[midi]\ncc.1 = "delta"\n', encoding="utf-8")
    try:
        listed = subprocess.run(dreamcam("midi", "list", "--api", "jack"), capture_output=True, text=True,
                                timeout=60, env=os.environ.copy())
        assert listed.returncode == 0 and "dreamcam-learn" in listed.stdout, listed.stderr
        proc = subprocess.Popen(dreamcam("midi", "learn", "strength", "--api", "jack", "--device", "dreamcam-learn",
                                         "--map", str(path), "--timeout", "30"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
        assert "listening to" in proc.stdout.readline()
        time.sleep(0.3)
        controller.send(mido.Message(NOTE, note=50, velocity=90))  # a note cannot scale: skipped
        controller.send(mido.Message(CC, control=14, value=64))
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "cc 14 -> strength" in " ".join(out.split())
    finally:
        controller.close()
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# my controller")
    mapping = load_mapping(path)
    assert mapping.cc[14].field == "strength" and mapping.cc[1].field == "delta"
    assert mapping.device == "dreamcam-learn"


# ---- the mapping, with mido messages into the port callback's handler --------------------------
def test_the_handler_scales_toggles_and_fires_once_per_press(presets):
    store = SettingsStore(StreamSettings())
    controller = MidiController(store, parse_mapping({**MAPPING, "channel": 2}))
    on_channel_2 = dict(channel=1)
    controller.handle(mido.Message(CC, control=7, value=64, channel=0))  # another channel: ignored
    assert store.current.strength == 0.5 and store.version == 0
    controller.handle(mido.Message(CC, control=7, value=127, **on_channel_2))
    assert store.current.strength == 1.0
    controller.handle(mido.Message(CC, control=64, value=127, **on_channel_2))
    assert store.current.paused is True
    controller.handle(mido.Message(CC, control=64, value=10, **on_channel_2))
    assert store.current.paused is False
    for value, preset in ((127, "Ink"), (127, "Ink"), (0, "Ink"), (127, "Oil")):  # rising edges only
        controller.handle(mido.Message(CC, control=65, value=value, **on_channel_2))
        assert store.current.preset == preset
    controller.handle(mido.Message(NOTE, note=37, velocity=0, **on_channel_2))  # a note off: nothing
    assert store.current.paused is False
    controller.handle(mido.Message(NOTE, note=40, velocity=1, **on_channel_2))
    assert store.current.strength == 0.8
    before = store.snapshot()
    controller.handle(mido.Message(CC, control=99, value=3, **on_channel_2))  # not mapped
    controller.handle(mido.Message("clock"))
    assert store.snapshot() == before


def test_a_refused_update_changes_nothing_and_names_the_field(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(cfg.CONFIG_ENV, str(tmp_path / "empty"))
    store = SettingsStore(StreamSettings())
    controller = MidiController(store, parse_mapping({"note": {"1": "steps=99", "2": "preset:next",
                                                               "3": "preset:Gone"}}))
    before = store.snapshot()
    for note, words in ((1, "steps: must be from 1 to 8"), (2, "no presets saved yet"), (3, "no preset named 'Gone'")):
        assert controller.handle(mido.Message(NOTE, note=note, velocity=100)) is None
        assert words in controller.last_error and f"note {note}" in controller.last_error
    assert store.snapshot() == before


@pytest.mark.parametrize("table, words", [
    ({"cc": {"200": "strength"}}, "midi.cc.200: the cc number must be from 0 to 127"),
    ({"cc": {"7": "prompt"}}, "midi.cc.7: 'prompt' has no range"),
    ({"cc": {"7": "loudness"}}, "midi.cc.7: loudness: not a setting"),
    ({"note": {"36": "strength"}}, "midi.note.36: 'strength' is not a true/false setting to toggle"),
    ({"note": {"36": "seed:sometimes"}}, "midi.note.36"),
    ({"api": "dbus"}, "midi.api: must be one of alsa, jack"),
    ({"channel": 17}, "midi.channel: must be a whole number from 1 to 16"),
    ({"knobs": {}}, "midi.knobs: unknown key"),
])
def test_a_bad_mapping_names_the_key(table, words):
    with pytest.raises(SettingsError) as caught:
        parse_mapping(table)
    assert words in str(caught.value)


def test_the_config_file_may_hold_the_midi_table(tmp_path):
    path = tmp_path / "dreamcam.toml"
    path.write_text('[app]\nsink = "null"\n[midi]\ndevice = "nano"\ncc.7 = "strength"\n', encoding="utf-8")
    app, stream = cfg.load_file(path)
    assert app == {"sink": "null"} and stream == {}
    assert load_mapping(path).cc[7].field == "strength"


def test_learn_takes_the_first_control_that_fits(tmp_path):
    moves = [mido.Message("clock"), mido.Message("note_off", note=3), mido.Message(NOTE, note=60, velocity=80),
             mido.Message(CC, control=21, value=5)]
    assert learn(iter(moves), "strength") == ("cc", 21)  # the note cannot scale strength: skipped
    assert learn(iter(moves), "preset:Ink") == ("note", 60)
    with pytest.raises(SettingsError, match="no control was moved"):
        learn(iter([mido.Message("clock")]), "paused")
    with pytest.raises(SettingsError, match="loudness"):
        check_learn_target("loudness")
    path = tmp_path / "new" / "midi.toml"
    write_entry(path, "note", 60, "preset:Ink", device="nano")
    write_entry(path, "cc", 21, "strength")
    mapping = load_mapping(path)
    assert mapping.note[60].value == "Ink" and mapping.cc[21].field == "strength" and mapping.device == "nano"


def test_run_refuses_a_broken_mapping_before_loading_anything(tmp_path):
    path = tmp_path / "midi.toml"
    path.write_text('[midi]\ncc.7 = "loudness"\n', encoding="utf-8")
    result = subprocess.run(dreamcam("run", "--sink", "null", "--midi-map", str(path)), capture_output=True,
                            text=True, timeout=60, env=os.environ.copy())
    assert result.returncode == 2 and "midi.cc.7: loudness: not a setting" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr
