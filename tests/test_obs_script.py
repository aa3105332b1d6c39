"""The OBS script's pure logic and OBS glue, run with a stand-in obspython, and the contract test
that holds the script's copy of the message format to the app's (plugin.messages)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from dreamcam.plugin import messages
from dreamcam.plugin.control import SettingsStore, Status
from dreamcam.plugin.settings import STREAM_FIELDS, SettingsError, StreamSettings, apply_changes
from obs_harness import free_port, wait_for
from obs_standin import load_script


@pytest.fixture()
def script():
    module, obs = load_script()
    yield module, obs
    module.script_unload() if module._S.link is not None else None


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


# ---- contract ------------------------------------------------------------------------------
def test_panel_fields_are_app_settings_with_the_same_defaults(script):
    module, _ = script
    defaults = StreamSettings()
    assert set(module.FIELDS) <= STREAM_FIELDS
    for name, spec in module.FIELDS.items():
        assert spec["default"] == getattr(defaults, name), name
    assert module.FIELDS["cfg_type"]["choices"] == ["none", "full", "self", "initialize"]
    assert module.SCHEMA_ERROR == ""
    assert module.NAMESPACE == messages.NAMESPACE and module.PROTOCOL_VERSION == messages.PROTOCOL_VERSION


def test_panel_ranges_match_the_app_validation(script):
    module, _ = script
    for name, spec in module.FIELDS.items():
        if spec["type"] not in ("int", "float"):
            continue
        low, high = spec["min"], spec["max"]
        apply_changes(StreamSettings(), {name: low})  # both ends are accepted
        apply_changes(StreamSettings(), {name: high})
        assert module.field_problem(spec, low) == module.field_problem(spec, high) == ""
        for bad in (high + 1, low - 1, float("nan"), float("inf")):
            with pytest.raises(SettingsError):
                apply_changes(StreamSettings(), {name: bad})
            assert module.field_problem(spec, bad).startswith("must be"), (name, bad)


def test_script_settings_message_is_applied_by_the_app():
    module, _ = load_script()
    panel = {name: spec["default"] for name, spec in module.FIELDS.items()}
    panel.update(prompt="a fox in the snow", strength=0.73, steps=3, cfg_type="full", seed=77,
                 similarity_filter=False, paused=True, guidance_scale=2.5)
    event = module.settings_message(module.normalize(panel))
    json.dumps(event)  # travels as JSON through obs-websocket
    decoded = messages.decode(event)
    assert decoded is not None and decoded.kind == "settings"
    store = SettingsStore()
    assert messages.handle_event(store, event, "test") is None
    s = store.current
    assert (s.prompt, s.strength, s.steps, s.cfg_type, s.seed) == ("a fox in the snow", 0.73, 3, "full", 77)
    assert s.similarity_filter is False and s.paused is True and s.guidance_scale == 2.5


def test_app_status_is_read_by_the_script():
    module, _ = load_script()
    clock = Clock()
    panel = module.Panel(clock=clock)
    panel.connection = "connected"
    status = Status(running=True, fps_out=24.0, infer_fps=11.5, skip_ratio=0.25, latency_ms=88,
                    model="tiny", engine="eager", error="rejected update: strength: must be from 0.0 to 1.0")
    panel.on_event(messages.status_event(status))
    line = panel.status_line()
    for part in ("app running", "24.0 fps out", "11.5 fps processed", "skip 25%", "latency 88 ms",
                 "tiny (eager)", "error: rejected update: strength"):
        assert part in line
    clock.t += module.STATUS_STALE_S + 1
    assert "waiting for the Dreamcam app" in panel.status_line()


# ---- pure logic ----------------------------------------------------------------------------
def test_debouncer_waits_for_quiet_but_not_forever():
    module, _ = load_script()
    d = module.Debouncer(delay=0.4, max_wait=1.5)
    assert not d.due(0.0)
    d.touch(0.0)
    assert not d.due(0.3)
    assert d.due(0.4)
    d.reset()
    t = 10.0
    d.touch(t)
    while t < 11.4:  # a change every 0.1 s (typing): nothing due until max_wait
        t += 0.1
        d.touch(t)
        assert d.due(t) == (t - 10.0 >= 1.5)
    t += 0.2
    assert d.due(t)


def test_panel_sends_everything_once_then_only_debounced_changes():
    module, _ = load_script()
    clock = Clock()
    panel = module.Panel(clock=clock)
    assert panel.outgoing() is None  # nothing read from OBS yet
    values = {name: spec["default"] for name, spec in module.FIELDS.items()}
    panel.update(values)
    first = panel.outgoing()[module.NAMESPACE]
    assert set(first) == {"v", "kind", *module.FIELDS}
    assert panel.outgoing() is None
    for i, text in enumerate(["a", "a c", "a ca", "a cat"]):  # typing
        clock.t += 0.1
        panel.update(dict(values, prompt=text))
        assert panel.outgoing() is None
    clock.t += 0.5
    msg = panel.outgoing()[module.NAMESPACE]
    assert msg == {"v": 1, "kind": "settings", "prompt": "a cat"}
    clock.t += 5
    assert panel.outgoing() is None  # unchanged values send nothing
    panel.update(dict(values, prompt="a cat"))
    clock.t += 5
    assert panel.outgoing() is None
    panel.on_event(module.encode("hello", role="app"))  # a restarted app gets the whole panel
    assert set(panel.outgoing()[module.NAMESPACE]) == {"v", "kind", *module.FIELDS}


def test_normalize_and_diff():
    module, _ = load_script()
    assert module.normalize({"steps": 2.0, "strength": 0.1 + 0.2, "paused": 1, "bogus": 3}) == {
        "steps": 2, "strength": 0.3, "paused": True}
    assert module.diff_settings({"a": 1, "b": 2}, {"a": 1}) == {"b": 2}
    assert module.check_values({"prompt": "x" * 5000}).startswith("prompt is 5000 characters")


def test_decode_ignores_other_tools_and_versions():
    module, _ = load_script()
    assert module.decode({"other": 1}) is None
    assert module.decode({"dreamcam": {"v": 2, "kind": "status"}}) is None
    assert module.decode("junk") is None
    assert module.decode(module.encode("status", fps_out=1))["fps_out"] == 1


def test_connection_errors_are_explained():
    module, _ = load_script()
    text = module.describe_connect_error(Exception("failed to identify client with the server"), "h", 1)
    assert "rejected the password" in text
    text = module.describe_connect_error(ConnectionRefusedError(111, "Connection refused"), "h", 1)
    assert "no OBS WebSocket server at h:1" in text


# ---- OBS glue with the stand-in ------------------------------------------------------------
def test_properties_panel_has_every_control(script):
    module, obs = script
    settings = obs.obs_data_create()
    module.script_defaults(settings)
    module._S.settings = settings
    props = module.script_properties().props
    for name in module.FIELDS:
        assert name in props, name
    assert props["password"].extra["text_type"] == obs.OBS_TEXT_PASSWORD
    assert props["status"].extra["text_type"] == obs.OBS_TEXT_INFO
    assert [v for _, v in props["cfg_type"].items] == module.FIELDS["cfg_type"]["choices"]
    groups = [p for p in props.values() if p.kind == "group"]
    assert [g.desc for g in groups] == ["Prompt", "Diffusion", "Similarity filter", "Output"]
    assert set(groups[0].extra["box"].props) == {"prompt", "negative_prompt", "transition_frames"}
    assert props["guidance_scale"].kind == "float_slider" and props["guidance_scale"].extra["high"] == 20.0
    assert props["seed"].kind == "int" and props["seed"].extra["high"] == 2**31 - 1
    assert props["strength"].desc == "Strength (0 keeps the input, 1 ignores it)"
    for button in ("randomize_seed", "preset_load", "preset_save", "preset_delete"):
        assert props[button].kind == "button"
    assert {"Watercolor", "Anime"} <= {v for _, v in props["preset_pick"].items}
    assert "install_hint" not in props
    assert obs.obs_data_get_string(settings, "host") == "127.0.0.1"
    assert obs.obs_data_get_int(settings, "port") == 4455
    assert obs.obs_data_get_double(settings, "strength") == StreamSettings().strength


def test_missing_obsws_python_shows_how_to_install():
    module, obs = load_script(block_obsws=True)
    assert module.obsws_python is None
    props = module.script_properties().props
    hint = props["install_hint"].desc
    assert "Tools > Scripts > Python Settings" in hint and "-m pip install obsws-python" in hint
    assert "pip install obsws-python" in module.script_description()
    settings = obs.obs_data_create()
    module.script_defaults(settings)
    module.script_load(settings)
    module.script_update(settings)
    try:
        assert any("obsws-python" in line for line in obs.log)
        assert wait_for(lambda: "obsws-python is not installed" in module._S.panel.status_line(), 5)
    finally:
        module.script_unload()


def test_buttons_randomize_seed_and_manage_presets(script):
    module, obs = script
    settings = obs.obs_data_create()
    module.script_defaults(settings)
    obs.obs_data_set_bool(settings, "use_local_websocket", False)
    obs.obs_data_set_int(settings, "port", free_port())  # nothing listens there
    module.script_load(settings)
    module.script_update(settings)
    props = module.script_properties()
    seeds = set()
    for _ in range(3):
        assert props.props["randomize_seed"].extra["callback"](props, None) is True
        seeds.add(obs.obs_data_get_int(settings, "seed"))
    assert len(seeds) > 1 and module._S.panel._values["seed"] in seeds

    obs.obs_data_set_string(settings, "prompt", "my own look")
    obs.obs_data_set_double(settings, "strength", 0.8)
    obs.obs_data_set_string(settings, "preset_name", "Mine")
    assert props.props["preset_save"].extra["callback"](props, None) is True
    assert ("Mine", "Mine") in props.props["preset_pick"].items
    assert json.loads(obs.obs_data_get_string(settings, "presets_json"))["Mine"]["prompt"] == "my own look"

    obs.obs_data_set_string(settings, "preset_pick", "Anime")
    assert props.props["preset_load"].extra["callback"](props, None) is True
    assert obs.obs_data_get_string(settings, "prompt").startswith("anime style")
    obs.obs_data_set_string(settings, "preset_pick", "Mine")
    props.props["preset_load"].extra["callback"](props, None)
    assert obs.obs_data_get_string(settings, "prompt") == "my own look"
    assert obs.obs_data_get_double(settings, "strength") == 0.8
    assert module._S.panel._extra == {"preset": "Mine"}  # sent with the next message
    assert props.props["preset_delete"].extra["callback"](props, None) is True
    assert ("Mine", "Mine") not in props.props["preset_pick"].items

    # the status timer writes the line into the panel and the optional status file
    assert wait_for(lambda: "no OBS WebSocket server" in module._S.panel.status_line(), 5)
    module._refresh_status()
    assert "no OBS WebSocket server" in obs.obs_data_get_string(settings, "status")
    assert obs.log.count(next(line for line in obs.log if "no OBS WebSocket server" in line)) == 1


def test_presets_json_survives_bad_content():
    module, _ = load_script()
    assert "Watercolor" in module.load_presets("{not json")
    raw = module.save_preset("[1, 2]", "A", {"prompt": "p", "paused": True, "junk": 1})
    assert json.loads(raw) == {"A": {"prompt": "p"}}
    assert json.loads(module.delete_preset(raw, "A")) == {}


def test_status_messages_of_the_app_have_the_fields_the_panel_reads():
    fields = set(messages.status_event(Status())[messages.NAMESPACE])
    assert {"running", "fps_out", "infer_fps", "skip_ratio", "latency_ms", "model", "engine", "error"} <= fields
    assert {f.name for f in dataclasses.fields(Status)} - {"extra"} <= fields


def test_local_websocket_settings_are_read_from_obs_config(tmp_path):
    module, _ = load_script()
    assert module.local_websocket_settings(str(tmp_path)) is None
    (tmp_path / "global.ini").write_text(
        "\ufeff[General]\nFirstRun=false\n\n[OBSWebSocket]\nServerEnabled=true\nServerPort=4466\n"
        "AuthRequired=true\nServerPassword=p%ss;w=rd\n", encoding="utf-8")
    assert module.local_websocket_settings(str(tmp_path)) == (4466, "p%ss;w=rd")
    json_dir = tmp_path / "plugin_config" / "obs-websocket"
    json_dir.mkdir(parents=True)
    (json_dir / "config.json").write_text(json.dumps(
        {"server_port": 4477, "server_password": "newer", "auth_required": True}))
    assert module.local_websocket_settings(str(tmp_path)) == (4477, "newer")
    assert module.connection_settings(True, "h", 1, "x", str(tmp_path)) == ("127.0.0.1", 4477, "newer")
    assert module.connection_settings(False, "h", 1, "x", str(tmp_path)) == ("h", 1, "x")
    assert module.connection_settings(True, "h", 1, "x", str(tmp_path / "nope")) == ("h", 1, "x")


def test_script_imports_only_stdlib_obspython_and_obsws_python():
    import ast
    import sys

    from obs_standin import SCRIPT

    tree = ast.parse(SCRIPT.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    outside = {m for m in imported if m not in sys.stdlib_module_names} - {"obspython", "obsws_python"}
    assert outside == set(), outside
    assert "__future__" not in imported  # OBS may run Python 3.9; keep the syntax plain


def test_local_model_paths_are_shortened_in_the_status_line():
    module, _ = load_script()
    assert module.short_model_name("stabilityai/sd-turbo") == "stabilityai/sd-turbo"
    assert module.short_model_name("/home/me/models/my-sd15/") == "my-sd15"
    assert module.short_model_name("C:\\models\\dream.safetensors") == "dream.safetensors"


def test_dreamcam_obs_script_command_finds_and_copies_the_script(tmp_path):
    from typer.testing import CliRunner

    from dreamcam.plugin.cli import app
    from obs_standin import SCRIPT

    result = CliRunner().invoke(app, ["obs-script"])
    assert result.exit_code == 0 and result.output.strip() == str(SCRIPT)
    result = CliRunner().invoke(app, ["obs-script", "--copy-to", str(tmp_path / "obs")])
    assert result.exit_code == 0
    assert (tmp_path / "obs" / "dreamcam_obs.py").read_bytes() == SCRIPT.read_bytes()
    schema_copy = tmp_path / "obs" / "dreamcam_schema.json"
    assert schema_copy.read_bytes() == SCRIPT.with_name("dreamcam_schema.json").read_bytes()


def test_the_copied_script_reads_the_schema_beside_it(tmp_path):
    from dreamcam.plugin.obs_scene import copy_obs_script

    copied = copy_obs_script(tmp_path / "obs")
    module, _ = load_script(path=copied)
    assert module.SCHEMA_ERROR == "" and "guidance_scale" in module.FIELDS


def test_a_missing_schema_is_reported_and_the_panel_still_loads(tmp_path):
    import shutil

    from obs_standin import SCRIPT

    lone = tmp_path / "dreamcam_obs.py"
    shutil.copy2(SCRIPT, lone)
    module, obs = load_script(path=lone)
    assert module.FIELDS == {} and "dreamcam_schema.json" in module.SCHEMA_ERROR
    settings = obs.obs_data_create()
    module.script_defaults(settings)
    module._S.settings = settings
    props = module.script_properties().props
    assert "status" in props and "host" in props
    assert "dreamcam obs-script --copy-to" in module._S.panel.status_line()


def test_bad_preset_values_are_dropped_not_sent():
    module, _ = load_script()
    raw = json.dumps({"Odd": {"prompt": "fine", "guidance_scale": float("nan"), "seed": 2**40, "steps": "x",
                              "strength": 0.4, "delta": float("inf")}})
    assert module.load_presets(raw)["Odd"] == {"prompt": "fine", "strength": 0.4}
    assert module.normalize({"steps": float("nan"), "guidance_scale": float("inf")}) == {}
    assert module.check_values({"guidance_scale": 25.0}).startswith("guidance_scale must be a number from 0.0 to 20.0")
