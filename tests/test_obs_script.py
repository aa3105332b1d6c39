"""The OBS script's pure logic and OBS glue, run with a stand-in obspython, and the contract test
that holds the script's copy of the message format to the app's (plugin.messages)."""

from __future__ import annotations

import dataclasses
import json
import socket
import time

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


def state(module, sender_origin="control:dreamcam set", version=1, presets=(), **settings):
    """A `state` message as the app broadcasts it (plugin.messages.state_event)."""
    values = {name: spec["default"] for name, spec in module.FIELDS.items()}
    values.update(settings)
    return module.encode("state", settings=values, version=version, origin=sender_origin, presets=list(presets))


def test_the_app_state_is_shown_and_nothing_is_sent_back():
    module, _ = load_script()
    clock = Clock()
    panel = module.Panel(clock=clock)
    stored = {name: spec["default"] for name, spec in module.FIELDS.items()}
    stored.update(prompt="an old panel prompt", strength=0.9)
    panel.update(stored)  # what OBS kept from the last session
    assert panel.outgoing() is None  # never pushed to the app
    panel.on_event(state(module, prompt="X from the app", strength=0.2, presets=["Ink", "Neon"]))
    assert panel.take_shown() == {"prompt": "X from the app", "strength": 0.2}
    assert panel.take_shown() == {}
    clock.t += 5
    assert panel.outgoing() is None
    assert panel.presets == ["Ink", "Neon"] and panel.app_origin == "control:dreamcam set"
    # a later change from anywhere else follows
    panel.on_event(state(module, "tray", version=2, prompt="X from the app", strength=0.2, paused=True))
    assert panel.take_shown() == {"paused": True}
    # two states before OBS's timer writes the first: the second wins, no prompt counts as a draft
    panel.on_event(state(module, "tray", version=3, prompt="Y", strength=0.3))
    panel.on_event(state(module, "tray", version=4, prompt="Z", strength=0.3))
    assert panel.take_shown() == {"prompt": "Z", "strength": 0.3, "paused": False}
    assert panel.drafts() == []


def connected_panel(sender: str):
    """A panel with its defaults that has shown the app's first state: (module, clock, panel, values)."""
    module, _ = load_script()
    clock = Clock()
    panel = module.Panel(clock=clock, sender=sender)
    values = {name: spec["default"] for name, spec in module.FIELDS.items()}
    panel.update(values)
    panel.on_event(state(module))
    panel.take_shown()
    return module, clock, panel, values


def test_sliders_go_out_debounced_and_prompts_only_when_applied():
    module, clock, panel, values = connected_panel("obs-panel-test")
    for text in ["a", "a c", "a ca", "a cat"]:  # typing a prompt: nothing goes out, however long
        clock.t += 0.3
        panel.update(dict(values, prompt=text))
        assert panel.outgoing() is None
    clock.t += 10
    assert panel.outgoing() is None and panel.drafts() == ["prompt"]
    for strength in (0.51, 0.55, 0.6):  # dragging a slider: one message once it settles
        clock.t += 0.1
        panel.update(dict(values, prompt="a cat", strength=strength))
        assert panel.outgoing() is None
    clock.t += module.DEBOUNCE_S
    assert panel.outgoing()[module.NAMESPACE] == {"v": 1, "kind": "settings", "strength": 0.6,
                                                   "from": "obs-panel-test"}
    assert panel.apply() == ["prompt"]  # Apply (or Enter)
    assert panel.outgoing()[module.NAMESPACE] == {"v": 1, "kind": "settings", "prompt": "a cat",
                                                   "from": "obs-panel-test"}
    assert panel.outgoing() is None


def test_a_state_never_undoes_what_the_user_is_changing():
    module, clock, panel, values = connected_panel("obs-panel-me")
    panel.update(dict(values, strength=0.7, prompt="my draft"))  # dragging; a prompt typed
    panel.on_event(state(module, "tray", version=2, strength=0.1, prompt="from the tray", seed=9))
    assert panel.take_shown() == {"seed": 9}  # the drag and the draft stay
    clock.t += 1
    assert panel.outgoing()[module.NAMESPACE]["strength"] == 0.7
    # a state that predates our change keeps it; the app's echo of it confirms it
    panel.on_event(state(module, "tray", version=3, strength=0.1, prompt="from the tray", seed=9))
    assert panel.take_shown() == {}
    panel.on_event(state(module, "obs:obs-panel-me", version=4, strength=0.7, prompt="from the tray", seed=9))
    assert panel.take_shown() == {}
    # a change the app never confirms (it refused it) falls back to the app's value
    panel.update(dict(values, strength=0.3, prompt="my draft", seed=9))
    clock.t += 1
    assert panel.outgoing() is not None
    clock.t += module.IN_FLIGHT_S + 0.1
    assert panel.take_shown() == {"strength": 0.7}


def test_presets_pause_and_seed_are_commands_to_the_app():
    module, _ = load_script()
    panel = module.Panel(sender="obs-panel-x")
    panel.on_event(state(module, presets=["Ink", "Neon", "Sea"], preset="Neon"))
    assert panel.preset_after(1) == "Sea" and panel.preset_after(-1) == "Ink"
    panel.on_event(state(module, version=2, presets=["Ink", "Neon", "Sea"], preset="Sea"))
    assert panel.preset_after(1) == "Ink"
    panel.command("preset_save", name="Mine")
    assert panel.outgoing()[module.NAMESPACE] == {"v": 1, "kind": "preset_save", "name": "Mine",
                                                   "from": "obs-panel-x"}
    store = SettingsStore()
    panel.command("settings", paused=True)
    assert messages.handle(store, panel.outgoing(), "obs").error is None
    assert store.current.paused and store.origin == "obs:obs-panel-x"


def test_normalize_and_diff():
    module, _ = load_script()
    assert module.normalize({"steps": 2.0, "strength": 0.1 + 0.2, "paused": 1, "bogus": 3}) == {
        "steps": 2, "strength": 0.3, "paused": True}
    assert module.normalize({"prompt": "a cat\t on\na mat\n"}) == {"prompt": "a cat  on a mat"}
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
def pump(module, store, presets=None):
    """The network between the panel and a real app store: what the panel sends is handled by
    plugin.messages, and the app's answer (its state) comes back, as over OBS."""
    panel = module._S.panel
    while True:
        message = panel.outgoing()
        if message is None:
            return
        handled = messages.handle(store, message, "obs", presets)
        if handled.wants_state or handled.kind == "settings":
            panel.on_event(messages.state_event(store, presets))


class Presets:
    """The app's preset store, in memory (plugin.messages.PresetStore)."""

    def __init__(self, **saved):
        self.saved = dict(saved)

    def list_presets(self):
        return sorted(self.saved)

    def load_preset(self, name):
        return {**self.saved[name], "preset": name}

    def save_preset(self, name, settings):
        self.saved[name] = {k: v for k, v in settings.as_dict().items() if k != "preset"}

    def delete_preset(self, name):
        return self.saved.pop(name, None) is not None


@pytest.fixture()
def dialog(script):
    from obs_standin import Dialog

    module, obs = script
    settings = obs.obs_data_create()
    module.script_defaults(settings)
    obs.obs_data_set_bool(settings, "use_local_websocket", False)
    obs.obs_data_set_int(settings, "port", free_port())  # nothing listens there
    obs.obs_data_set_string(settings, "status", "obsws-python is not installed")  # an old session's text
    obs.obs_data_set_string(settings, "prompt", "the panel's old prompt")
    module.script_load(settings)
    module.script_update(settings)
    return module, obs, settings, Dialog(module, obs, settings)


def test_properties_panel_has_every_control_in_folding_sections(dialog):
    module, obs, settings, view = dialog
    props = view.props.props
    for name in module.FIELDS:
        assert name in props, name
    assert props["password"].extra["text_type"] == obs.OBS_TEXT_PASSWORD
    assert props["status"].extra["text_type"] == obs.OBS_TEXT_INFO
    assert props["details"].extra["word_wrap"] is True  # long text wraps instead of widening the panel
    assert [v for _, v in props["cfg_type"].items] == module.FIELDS["cfg_type"]["choices"]
    groups = [p for p in props.values() if p.kind == "group"]
    assert [g.desc for g in groups] == ["Prompt", "Diffusion", "Similarity filter", "Blending", "Stability", "Output",
                                        "ControlNet", "IP-Adapter", "LoRA", "Presets", "Connection", "Details"]
    assert all(g.extra["group_type"] == obs.OBS_GROUP_CHECKABLE for g in groups)
    assert set(groups[0].extra["box"].props) == {"prompt", "negative_prompt", "apply_prompts", "transition_frames"}
    assert set(groups[3].extra["box"].props) == {"prompt_blend", "seed_blend", "apply_blending", "blend_method"}
    assert props["guidance_scale"].kind == "float_slider" and props["guidance_scale"].extra["high"] == 20.0
    assert props["seed"].kind == "int" and props["seed"].extra["high"] == 2**31 - 1
    assert props["width"].kind == "int" and (props["width"].extra["low"], props["width"].extra["step"]) == (32, 8)
    output_box = next(g for g in groups if g.desc == "Output").extra["box"].props
    assert {"paused", "width", "height"} <= set(output_box)
    for button in ("refresh_status", "apply_prompts", "randomize_seed", "preset_load", "preset_save", "preset_delete"):
        assert props[button].kind == "button"
    assert "install_hint" not in props
    # folded at first: similarity filter, presets, connection, details; open: prompt, diffusion, output
    assert props["prompt"].visible and props["strength"].visible and props["paused"].visible
    assert not props["similarity_threshold"].visible and not props["host"].visible
    # the model sections are folded at first; typed sources go out with their section's Apply button
    assert not props["lora_1"].visible and not props["controlnet_1_scale"].visible
    lora_box = next(g for g in groups if g.desc == "LoRA").extra["box"].props
    assert list(lora_box)[-1] == "apply_lora" and props["apply_lora"].kind == "button"
    assert props["lora_1_weight"].kind == "float_slider" and props["lora_1_weight"].extra["low"] == -2.0
    assert obs.obs_data_get_string(settings, "lora_1") == ""  # none (off) shows as an empty box
    view.user_sets("group_connection", True)  # tick the section's title: it unfolds
    assert view.props.props["host"].visible and view.redraws == 1
    view.user_sets("group_diffusion", False)
    assert not view.props.props["strength"].visible
    # the status at the top is one short line, never the text of an earlier session
    status = obs.obs_data_get_string(settings, "status")
    assert status and "obsws-python" not in status and len(status) <= module.SHORT_STATUS_CHARS


def test_panel_shows_the_app_settings_sends_only_changes_and_prompts_on_apply(dialog):
    module, obs, settings, view = dialog
    store = SettingsStore(StreamSettings(prompt="X", strength=0.2))
    module._S.panel.on_event(messages.state_event(store))  # the app's answer to the panel's hello
    module._tick()
    assert obs.obs_data_get_string(settings, "prompt") == "X"  # the app's values, not the panel's
    assert obs.obs_data_get_double(settings, "strength") == 0.2
    pump(module, store)
    assert store.version == 0  # nothing went back to the app
    view.user_sets("prompt", "a neon cyberpunk city at")  # half typed
    time.sleep(module.DEBOUNCE_S + 0.1)
    pump(module, store)
    assert store.current.prompt == "X"
    view.user_sets("prompt", "a neon cyberpunk city at\tnight")  # Tab: taken out, not sent
    assert obs.obs_data_get_string(settings, "prompt") == "a neon cyberpunk city at night"
    pump(module, store)
    assert store.current.prompt == "X"
    view.user_sets("prompt", "a neon cyberpunk city at night\n")  # Enter applies it
    assert obs.obs_data_get_string(settings, "prompt") == "a neon cyberpunk city at night"
    pump(module, store)
    assert store.current.prompt == "a neon cyberpunk city at night"
    assert store.origin == "obs:" + module._S.panel.sender
    view.user_sets("negative_prompt", "blurry, text")
    view.press("apply_prompts")
    pump(module, store)
    assert store.current.negative_prompt == "blurry, text"
    view.user_sets("strength", 0.45)  # sliders act without Apply
    time.sleep(module.DEBOUNCE_S + 0.1)
    pump(module, store)
    assert store.current.strength == 0.45 and store.current.prompt == "a neon cyberpunk city at night"
    view.user_sets("width", 640)  # the diffusion size is live like the numbers above
    time.sleep(module.DEBOUNCE_S + 0.1)
    pump(module, store)
    assert store.current.width == 640
    # a change made elsewhere (dreamcam set, the tray) shows in the panel
    store.apply({"guidance_scale": 3.5, "seed": 77}, origin="control:dreamcam set")
    module._S.panel.on_event(messages.state_event(store))
    module._tick()
    assert obs.obs_data_get_double(settings, "guidance_scale") == 3.5
    assert obs.obs_data_get_int(settings, "seed") == 77
    assert "last change from control:dreamcam set" in obs.obs_data_get_string(settings, "details")


def test_hotkeys_pause_step_presets_and_new_seed(dialog):
    from obs_standin import press_hotkey

    module, obs, settings, view = dialog
    presets = Presets(Ink={"prompt": "black ink", "strength": 0.7}, Neon={"prompt": "neon city"})
    store = SettingsStore()
    names = {entry[0] for entry in obs.hotkeys.values()}
    assert {"dreamcam.pause", "dreamcam.next_preset", "dreamcam.previous_preset", "dreamcam.new_seed"} <= names
    module._S.panel.on_event(messages.state_event(store, presets))
    module._tick()  # one hotkey per app preset appears
    assert {"dreamcam.preset.Ink", "dreamcam.preset.Neon"} <= {e[0] for e in obs.hotkeys.values()}
    press_hotkey(obs, "dreamcam.pause")
    pump(module, store, presets)
    assert store.current.paused is True
    press_hotkey(obs, "dreamcam.pause")
    pump(module, store, presets)
    assert store.current.paused is False
    press_hotkey(obs, "dreamcam.next_preset")
    pump(module, store, presets)
    assert store.current.preset == "Ink" and store.current.prompt == "black ink"
    press_hotkey(obs, "dreamcam.next_preset")
    pump(module, store, presets)
    assert store.current.preset == "Neon"
    press_hotkey(obs, "dreamcam.previous_preset")
    pump(module, store, presets)
    assert store.current.preset == "Ink"
    press_hotkey(obs, "dreamcam.preset.Neon")
    pump(module, store, presets)
    assert store.current.prompt == "neon city"
    seed = store.current.seed
    press_hotkey(obs, "dreamcam.new_seed")
    pump(module, store, presets)
    assert store.current.seed != seed
    # the keys the user bound are saved with the script's settings and loaded next time
    (pause_id,) = [i for i, e in obs.hotkeys.items() if e[0] == "dreamcam.pause"]
    obs.hotkeys[pause_id][3] = [{"key": "OBS_KEY_F9"}]
    module.script_save(settings)
    module.script_unload()
    assert obs.hotkeys == {}
    module.script_load(settings)
    bound = {e[0]: e[3] for e in obs.hotkeys.values()}
    assert bound["dreamcam.pause"] == [{"key": "OBS_KEY_F9"}]
    assert "dreamcam.preset.Neon" in bound  # registered at load, before the app is reached


def test_the_app_preset_store_is_the_panels(dialog):
    module, obs, settings, view = dialog
    presets = Presets(Ink={"prompt": "black ink"})
    store = SettingsStore(StreamSettings(prompt="my look", strength=0.66))
    module._S.panel.on_event(messages.state_event(store, presets))
    view.press("refresh_status")
    assert [v for _, v in view.props.props["preset_pick"].items] == ["Ink"]
    view.user_sets("group_presets", True)
    view.user_sets("preset_name", "Mine")
    view.press("preset_save")
    pump(module, store, presets)
    assert presets.saved["Mine"]["prompt"] == "my look" and store.current.preset == "Mine"
    view.press("refresh_status")
    assert [v for _, v in view.props.props["preset_pick"].items] == ["Ink", "Mine"]
    view.user_sets("preset_pick", "Ink")
    view.press("preset_load")
    pump(module, store, presets)
    assert store.current.prompt == "black ink" and store.current.preset == "Ink"
    view.press("preset_delete")
    pump(module, store, presets)
    assert "Ink" not in presets.saved


def test_missing_obsws_python_shows_how_to_install():
    module, obs = load_script(block_obsws=True)
    assert module.obsws_python is None
    props = module.script_properties().props
    hint = props["install_hint"].desc
    assert "Tools > Scripts > Python Settings" in hint and "-m pip install obsws-python" in hint
    assert "--target" in hint and "dreamcam_vendor" in hint and "pip install --user" not in hint  # PEP 668
    description = module.script_description()
    assert "&lt;that folder&gt;" in description  # the pane is HTML: placeholders must not vanish
    assert "<that folder>" not in description
    settings = obs.obs_data_create()
    module.script_defaults(settings)
    module.script_load(settings)
    module.script_update(settings)
    try:
        assert any("obsws-python" in line for line in obs.log)
        assert wait_for(lambda: "obsws-python is not installed" in module._S.panel.status_line(), 5)
    finally:
        module.script_unload()


def test_status_line_tells_an_app_that_cannot_reach_obs_from_no_app():
    module, _ = load_script()
    panel = module.Panel()
    panel.connection = "connected"
    assert "waiting for the Dreamcam app" in panel.status_line()
    assert panel.wants_app_probe()
    with socket.socket() as listener:  # an app's control port on this computer
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        assert module.app_listens(listener.getsockname()[1])
        panel.app_elsewhere = module.app_listens(listener.getsockname()[1])
    assert "is not: check the OBS WebSocket password" in panel.status_line()
    assert panel.short_line() == "app runs but is not on OBS: see Details"
    assert not module.app_listens(free_port())


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
    ast.parse(SCRIPT.read_text(), feature_version=(3, 6))  # the syntax of Windows OBS 28/29's oldest Python


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


def test_bad_values_are_dropped_not_sent():
    module, _ = load_script()
    assert module.normalize({"steps": float("nan"), "guidance_scale": float("inf")}) == {}
    assert module.check_values({"guidance_scale": 25.0}).startswith("guidance_scale must be a number from 0.0 to 20.0")


def test_the_apps_state_message_is_read_by_the_script():
    module, _ = load_script()
    store = SettingsStore(StreamSettings(prompt="from the app", seed=5))
    store.apply({"strength": 0.3}, origin="tray")
    panel = module.Panel()
    panel.on_event(messages.state_event(store, Presets(A={})))
    assert panel.app_settings == module.normalize(store.current.as_dict())
    assert (panel.app_version, panel.app_origin, panel.presets) == (1, "tray", ["A"])
    assert set(module.KINDS_SENT) <= set(messages.KINDS)
