"""Settings from TOML + command line, presets in the config folder, bad values named."""

from __future__ import annotations

import pytest

from dreamcam.plugin import config as cfg
from dreamcam.plugin.control import SettingsStore
from dreamcam.plugin.settings import AppSettings, SettingsError, StreamSettings


@pytest.fixture(autouse=True)
def config_home(tmp_path, monkeypatch):
    monkeypatch.setenv(cfg.CONFIG_ENV, str(tmp_path / "cfg"))
    return tmp_path / "cfg"


def test_toml_file_then_command_line(tmp_path):
    path = tmp_path / "dreamcam.toml"
    path.write_text('[app]\nsource = "camera:1"\nfps = 24\n'
                    '[stream]\nprompt = "oil painting"\nstrength = 0.3\nwidth = 768\n')
    file_app, file_stream = cfg.load_file(path)
    app = cfg.build_app_settings(file_app, {"fps": 60.0, "sink": None})
    stream = cfg.build_stream_settings(file_stream, {"strength": 0.6, "seed": None, "height": 432})
    assert (app.source, app.fps, app.sink) == ("camera:1", 60.0, "vcam")
    assert (stream.prompt, stream.strength, stream.seed) == ("oil painting", 0.6, StreamSettings().seed)
    assert (stream.width, stream.height) == (768, 432)


def test_a_size_left_under_app_says_to_move_it_to_stream(tmp_path):
    """width and height were start-only ([app]) before they changed live: an older file is refused with
    the move to make, not read with its size silently dropped."""
    path = tmp_path / "old.toml"
    path.write_text('[app]\nsource = "camera:1"\nwidth = 768\nheight = 432\n')
    with pytest.raises(SettingsError, match=r"^height: .*old.toml: height is a live setting: move it from "
                                            r"\[app\] to \[stream\]$"):
        cfg.load_file(path)


def test_bad_file_values_name_the_field(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[stream]\nstrength = -0.5\n')
    with pytest.raises(SettingsError) as info:
        cfg.build_stream_settings(cfg.load_file(path)[1])
    assert info.value.field == "strength" and "0.0 to 1.0" in str(info.value)
    path.write_text('[app]\nengine = "warp"\n')
    with pytest.raises(SettingsError) as info:
        cfg.build_app_settings(cfg.load_file(path)[0])
    assert info.value.field == "engine" and "tensorrt" in str(info.value)
    path.write_text('[app]\ncolour = "red"\n')
    with pytest.raises(SettingsError, match="colour: unknown app setting"):
        cfg.build_app_settings(cfg.load_file(path)[0])
    path.write_text('[app]\nsource = 5\n')
    with pytest.raises(SettingsError, match="source: must be text"):
        cfg.build_app_settings(cfg.load_file(path)[0])
    path.write_text('[app]\nobs_enabled = "yes"\n')
    with pytest.raises(SettingsError, match="obs_enabled: must be true or false"):
        cfg.build_app_settings(cfg.load_file(path)[0])
    path.write_text('app = 3\n')
    with pytest.raises(SettingsError, match="app must be a table"):
        cfg.load_file(path)
    path.write_text('[app\n')
    with pytest.raises(SettingsError, match="not valid TOML"):
        cfg.load_file(path)
    with pytest.raises(SettingsError, match="does not exist"):
        cfg.load_file(tmp_path / "missing.toml")


def test_tiny_vae_none_keeps_the_models_own_vae(tmp_path):
    from dreamcam.plugin.pipeline import model_spec

    path = tmp_path / "vae.toml"
    path.write_text('[app]\ntiny_vae = "none"\n')
    from_file = cfg.build_app_settings(cfg.load_file(path)[0])
    from_cli = cfg.build_app_settings({}, {"tiny_vae": "None"})  # what `--tiny-vae None` passes
    for app in (from_file, from_cli):
        assert app.tiny_vae is None and model_spec(app, "cpu", "float32").tiny_vae is None
    assert model_spec(cfg.build_app_settings({}), "cpu", "float32").tiny_vae == "auto"


def test_bad_live_settings_are_rejected_and_the_previous_stay():
    store = SettingsStore(StreamSettings(prompt="kept"))
    for changes, field in (({"strength": -0.1}, "strength"), ({"prompt": "x" * 100_000}, "prompt"),
                           ({"prompt": "new", "seed": -1}, "seed")):
        with pytest.raises(SettingsError) as info:
            store.apply(changes, origin="test")
        assert info.value.field == field
    assert store.current.prompt == "kept" and store.version == 0
    with pytest.raises(SettingsError) as info:
        AppSettings(engine="turbo")
    assert info.value.field == "engine"


def test_presets_round_trip_in_the_config_folder(config_home):
    settings = StreamSettings(prompt="neon city", strength=0.7, steps=2, seed=11)
    path = cfg.save_preset("Neon City", settings)
    assert path.parent == config_home / "presets"
    assert cfg.list_presets() == ["Neon City"]
    loaded = cfg.build_stream_settings({"preset": "Neon City"})
    assert (loaded.prompt, loaded.strength, loaded.steps, loaded.seed, loaded.preset) == \
        ("neon city", 0.7, 2, 11, "Neon City")
    # explicit values on top of a preset win
    assert cfg.build_stream_settings({"preset": "Neon City", "seed": 3}).seed == 3
    assert cfg.delete_preset("Neon City") and cfg.list_presets() == []


def test_bad_presets_are_named(config_home):
    with pytest.raises(SettingsError, match="no preset named 'ghost'"):
        cfg.load_preset("ghost")
    with pytest.raises(SettingsError, match="preset: name"):
        cfg.save_preset("../escape", StreamSettings())
    (config_home / "presets").mkdir(parents=True)
    (config_home / "presets" / "Broken.json").write_text('{"strength": 9}')
    with pytest.raises(SettingsError) as info:
        cfg.load_preset("Broken")
    assert info.value.field == "strength"
