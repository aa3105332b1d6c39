"""The OBS bridge and the OBS script against a real OBS Studio under Xvfb (see obs_harness)."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

import pytest

from dreamcam.plugin.control import SettingsStore, Status, StatusBoard
from dreamcam.plugin.messages import MAX_MESSAGE_BYTES, encode
from dreamcam.plugin.obs_bridge import ObsBridge
from dreamcam.plugin.settings import StreamSettings
from obs_harness import ObsInstance, free_port, have_obs, wait_for

pytestmark = [pytest.mark.obs, pytest.mark.timeout(180)]

PANEL_PROMPT = "a red fox made of paper, set in the OBS panel"


@pytest.fixture(scope="module")
def obs_studio(tmp_path_factory):
    if not have_obs():
        pytest.fail("OBS Studio and Xvfb are needed: bash scripts/dev-setup.sh installs them")
    password = "pw-" + secrets.token_hex(8)
    port = free_port()
    # no port or password for the panel: it reads this OBS's own WebSocket settings
    inst = ObsInstance(tmp_path_factory.mktemp("obs"), port, password,
                       {"prompt": PANEL_PROMPT, "strength": 0.65,
                        "similarity_filter": False, "seed": 3})
    try:
        inst.start_xvfb()
        inst.start_obs()
        yield inst
    finally:
        inst.stop()


def make_bridge(inst: ObsInstance, store: SettingsStore, board: StatusBoard, password: str | None = None):
    return ObsBridge(store, board, "127.0.0.1", inst.port, inst.password if password is None else password,
                     status_interval=0.3)


def external_client(inst: ObsInstance):
    import obsws_python

    return obsws_python.ReqClient(host="127.0.0.1", port=inst.port, password=inst.password, timeout=5)


def panel_shows(inst: ObsInstance, **expected) -> bool:
    """The panel inside OBS holds these values in its controls' settings."""
    values = inst.panel_values().get("values") or {}
    return all(values.get(k) == v for k, v in expected.items())


def test_app_settings_show_in_the_panel_and_app_status_reaches_it(obs_studio):
    store, board = SettingsStore(StreamSettings(prompt="the app's own prompt", strength=0.3)), StatusBoard()
    board.publish(Status(running=True, fps_out=21.5, infer_fps=9.25, skip_ratio=0.5, latency_ms=123,
                         model="tiny-sd", engine="eager"))
    bridge = make_bridge(obs_studio, store, board)
    bridge.start()
    try:
        assert bridge.wait_connected(10), bridge.state
        # the panel (which holds PANEL_PROMPT from its last session) shows the app's values ...
        assert wait_for(lambda: panel_shows(obs_studio, prompt="the app's own prompt", strength=0.3), 10), \
            obs_studio.panel_values()
        # ... and never pushes its own: the app is the source of truth
        assert store.version == 0 and store.current.prompt == "the app's own prompt"
        assert wait_for(lambda: "21.5 fps out" in obs_studio.panel_status(), 10), obs_studio.panel_status()
        line = obs_studio.panel_status()
        assert "app running" in line and "skip 50%" in line and "latency 123 ms" in line
        assert "tiny-sd (eager)" in line
        short = obs_studio.panel_values()["short"]
        assert short.startswith("running | 21.5 fps | 123 ms") and len(short) <= 64
        # a change made elsewhere (here: the tray's path) shows in the panel
        store.apply({"seed": 4321, "guidance_scale": 2.5}, origin="tray")
        assert wait_for(lambda: panel_shows(obs_studio, seed=4321, guidance_scale=2.5), 10), \
            obs_studio.panel_values()
        assert obs_studio.panel_values()["in_force"]["seed"] == 4321
        # OBS loaded the script, built its panel and ran it without a single Python error
        log_text = obs_studio.script_log()
        assert "Loaded python script: dreamcam_obs.py" in log_text
        assert "Traceback" not in log_text and "building the panel failed" not in log_text
    finally:
        bridge.stop()
    assert bridge.state == "stopped"
    # the bridge said bye: the panel stops showing numbers at once
    assert wait_for(lambda: "waiting for the Dreamcam app" in obs_studio.panel_status(), 10)


def test_a_hotkey_toggles_pause(obs_studio, tmp_path, monkeypatch):
    """Settings > Hotkeys of the real OBS: the panel's pause hotkey, and one per app preset."""
    from dreamcam.plugin import config as cfg

    monkeypatch.setenv(cfg.CONFIG_ENV, str(tmp_path / "cfg"))
    cfg.save_preset("Paper", StreamSettings(prompt="paper cut-out", strength=0.45))
    store = SettingsStore(StreamSettings(prompt="hotkeys"))
    bridge = make_bridge(obs_studio, store, StatusBoard())
    bridge.start()
    try:
        assert bridge.wait_connected(10), bridge.state
        assert wait_for(lambda: panel_shows(obs_studio, prompt="hotkeys"), 10), obs_studio.panel_values()
        obs_studio.trigger_hotkey("dreamcam.pause")
        assert wait_for(lambda: store.current.paused, 10), store.current
        assert store.origin.startswith("obs:obs-panel-")
        obs_studio.trigger_hotkey("dreamcam.pause")
        assert wait_for(lambda: not store.current.paused, 10)
        assert wait_for(lambda: "dreamcam.preset.Paper" in obs_studio.panel_values().get("hotkeys", []), 10), \
            obs_studio.panel_values()
        obs_studio.trigger_hotkey("dreamcam.preset.Paper")
        assert wait_for(lambda: store.current.preset == "Paper", 10)
        assert (store.current.prompt, store.current.strength) == ("paper cut-out", 0.45)
        seed = store.current.seed
        obs_studio.trigger_hotkey("dreamcam.new_seed")
        assert wait_for(lambda: store.current.seed != seed, 10)
    finally:
        bridge.stop()


def test_wrong_password_is_reported_once_and_never_logged(obs_studio, caplog):
    caplog.set_level(logging.DEBUG)
    store = SettingsStore()
    wrong = "wrong-" + secrets.token_hex(6)
    bridge = make_bridge(obs_studio, store, StatusBoard(), password=wrong)
    bridge.max_backoff = 0.3  # retry fast, so several attempts happen during the test
    bridge.start()
    try:
        assert wait_for(lambda: "rejected the password" in bridge.state, 10), bridge.state
        assert wait_for(lambda: bridge._thread is not None and bridge.connections == 0, 1)
        import time

        time.sleep(2.0)
    finally:
        bridge.stop()
    warnings = [r for r in caplog.records if "rejected the password" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert "DREAMCAM_OBS_PASSWORD" in warnings[0].getMessage()
    assert wrong not in caplog.text and obs_studio.password not in caplog.text
    assert wrong not in repr(bridge)
    assert store.version == 0


def test_missing_server_is_reported_once(caplog):
    caplog.set_level(logging.DEBUG)
    bridge = ObsBridge(SettingsStore(), StatusBoard(), "127.0.0.1", free_port(), "x", max_backoff=0.2)
    bridge.start()
    try:
        assert wait_for(lambda: "No OBS WebSocket server" in bridge.state, 5), bridge.state
        import time

        time.sleep(1.5)
    finally:
        bridge.stop()
    assert sum("No OBS WebSocket server" in r.getMessage() for r in caplog.records) == 1
    assert "Traceback" not in caplog.text


def test_bad_events_change_nothing_and_are_logged_once(obs_studio, caplog):
    caplog.set_level(logging.INFO)
    store = SettingsStore()
    bridge = make_bridge(obs_studio, store, StatusBoard())
    bridge.start()
    client = None
    try:
        assert bridge.wait_connected(10), bridge.state
        assert wait_for(lambda: panel_shows(obs_studio, prompt=store.current.prompt), 10)
        before, version = store.current, store.version
        client = external_client(obs_studio)
        bad = {
            "not an object": {"dreamcam": "prompt=cat"},
            "wrong version": {"dreamcam": {"v": 99, "kind": "settings", "prompt": "v99"}},
            "no kind": {"dreamcam": {"v": 1, "prompt": "nokind"}},
            "unknown kind": encode("explode", prompt="unknown kind"),
            "out of range": encode("settings", prompt="half applied?", strength=7.5),
            "prompt too long": encode("settings", prompt="x" * 5000),
            "oversized": encode("settings", prompt="big", blob="y" * (MAX_MESSAGE_BYTES + 10)),
            "wrong type": encode("settings", seed="abc"),
            "unknown field": encode("settings", seed=1, unknown_field=1),
        }
        for data in bad.values():
            client.broadcast_custom_event({"eventData": data})
        client.broadcast_custom_event({"eventData": {"some_other_tool": {"x": 1}}})  # passes by quietly
        # events arrive in order: once this one is applied, all the bad ones were handled
        client.broadcast_custom_event({"eventData": encode("settings", seed=4242)})
        assert wait_for(lambda: store.current.seed == 4242, 10)
        assert store.version == version + 1
        assert store.current == type(before)(**{**before.__dict__, "seed": 4242})
        # each bad event: one log line, no traceback
        dreamcam_lines = [r.getMessage() for r in caplog.records if r.name.startswith("dreamcam")]
        rejected = [m for m in dreamcam_lines if "rejected dreamcam message" in m]
        assert len(rejected) == 8, dreamcam_lines
        assert sum("unknown kind 'explode'" in m for m in dreamcam_lines) == 1
        assert sum("unknown_field" in m for m in dreamcam_lines) == 1
        assert "Traceback" not in caplog.text
        assert bridge.rejected == 8
        # the last rejection reaches the panel, then a good update clears it
        client.broadcast_custom_event({"eventData": encode("settings", strength=-1)})
        assert wait_for(lambda: "error: rejected update: strength" in obs_studio.panel_status(), 10), \
            obs_studio.panel_status()
        client.broadcast_custom_event({"eventData": encode("settings", strength=0.4)})
        assert wait_for(lambda: "error" not in obs_studio.panel_status(), 10), obs_studio.panel_status()
        assert store.current.strength == 0.4
    finally:
        if client is not None:
            client.disconnect()
        bridge.stop()


def test_obs_killed_and_restarted_bridge_reconnects(tmp_path, caplog, tiny_model_dir):
    """The real app runs on; OBS starts after it, is killed (SIGKILL) and started again: the
    bridge reconnects each time and control from OBS works again."""
    import time

    import numpy as np

    from app_parts import RecordingSink, StillCamera
    from dreamcam.plugin.app import DreamcamApp
    from dreamcam.plugin.pipeline import build_processor
    from dreamcam.plugin.settings import AppSettings, StreamSettings

    caplog.set_level(logging.INFO)
    if not have_obs():
        pytest.fail("OBS Studio and Xvfb are needed: bash scripts/dev-setup.sh installs them")
    password = "pw-" + secrets.token_hex(8)
    port = free_port()
    inst = ObsInstance(tmp_path, port, password, {"use_local_websocket": False, "host": "127.0.0.1", "port": port,
                                                  "password": password, "prompt": "before",
                                                  "similarity_filter": False})
    app_settings = AppSettings(model=str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd"),
                               device="cpu", dtype="float32", engine="eager")
    initial = StreamSettings(similarity_filter=False, width=64, height=64)
    sink = RecordingSink()
    camera = StillCamera(64, 64, fps=15)
    app = DreamcamApp(app_settings, initial, source=camera, sink=sink,
                      processor=build_processor(app_settings, initial, local_files_only=True))
    store = app.store
    bridge = ObsBridge(store, app.board, "127.0.0.1", port, password, status_interval=0.3, max_backoff=0.5)
    app.add_service(bridge)
    try:
        inst.start_xvfb()
        app.start()  # before OBS: the bridge waits for it
        assert wait_for(lambda: "No OBS WebSocket server" in bridge.state, 10), bridge.state
        inst.start_obs()
        assert wait_for(lambda: panel_shows(inst, prompt=store.current.prompt), 20), inst.panel_values()
        assert wait_for(lambda: "app running" in inst.panel_status(), 10), inst.panel_status()
        assert store.version == 0  # the panel's stored "before" never reached the app

        inst.kill_obs()  # SIGKILL: no goodbye from OBS
        assert wait_for(lambda: not bridge.state.startswith("connected"), 10), bridge.state
        frames = sink.count()
        assert wait_for(lambda: sink.count() > frames + 2, 20)  # the stream runs on without OBS
        inst.status_file.unlink(missing_ok=True)
        store.apply({"prompt": "changed while OBS was down"}, origin="control:dreamcam set")
        inst.script_settings["prompt"] = "a stale panel value"
        inst.start_obs()
        assert wait_for(lambda: bridge.connections == 2, 20), bridge.state
        assert wait_for(lambda: panel_shows(inst, prompt="changed while OBS was down"), 20), inst.panel_values()
        assert store.current.prompt == "changed while OBS was down"
        assert wait_for(lambda: app.runner.active_settings.prompt == "changed while OBS was down", 20)
        assert wait_for(lambda: "app running" in inst.panel_status(), 10), inst.panel_status()
        client = external_client(inst)
        try:
            client.broadcast_custom_event({"eventData": encode("settings", paused=True)})
            assert wait_for(lambda: store.current.paused, 10)
            paused_at = time.monotonic()
            assert wait_for(lambda: len(sink.since(paused_at)) >= 3, 20)
            assert np.array_equal(sink.last(), camera.image)  # paused: the input passes through
        finally:
            client.disconnect()
    finally:
        app.stop()
        inst.stop()
    messages_ = [r.getMessage() for r in caplog.records if r.name == "dreamcam.plugin.obs_bridge"]
    assert sum("connected to OBS" in m for m in messages_) == 2
    assert sum("No OBS WebSocket server" in m for m in messages_) <= 2  # once before start, once while down


def test_a_preset_hotkey_in_obs_changes_the_next_frame_of_the_running_app(obs_studio, tiny_model_dir,
                                                                           tmp_path, monkeypatch):
    """End to end: the real app (tiny model, CPU) runs; the OBS bridge joins and the panel keeps
    the app's settings; an OBS hotkey of the panel applies one of the app's presets, and the
    frames that follow differ; the app's status shows in OBS."""
    import dataclasses
    import time

    from dreamcam.plugin import config as cfg

    import numpy as np

    from app_parts import RecordingSink, StillCamera
    from dreamcam.plugin.app import DreamcamApp
    from dreamcam.plugin.pipeline import build_processor
    from dreamcam.plugin.settings import AppSettings, StreamSettings

    app_settings = AppSettings(model=str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd"),
                               device="cpu", dtype="float32", engine="eager")
    initial = StreamSettings(prompt="a grey stone wall", strength=0.65, similarity_filter=False, seed=3, width=64,
                             height=64)
    monkeypatch.setenv(cfg.CONFIG_ENV, str(tmp_path / "cfg"))
    cfg.save_preset("Fox", dataclasses.replace(initial, prompt=PANEL_PROMPT))
    sink = RecordingSink()
    app = DreamcamApp(app_settings, initial, source=StillCamera(64, 64, fps=15), sink=sink,
                      processor=build_processor(app_settings, initial, local_files_only=True))
    app.start()
    bridge = None
    try:
        # a still scene with a fixed seed: once warmed up, every output frame is the same picture
        assert wait_for(lambda: sink.count() >= 6, 60)
        before = sink.last()
        assert all(np.array_equal(img, before) for img in sink.since(time.monotonic() - 0.2)[-2:])

        bridge = make_bridge(obs_studio, app.store, app.board)
        app.add_service(bridge)  # started at once: the app is running
        assert wait_for(lambda: panel_shows(obs_studio, prompt="a grey stone wall"), 15), obs_studio.panel_values()
        assert app.store.version == 0  # joining changed nothing
        assert wait_for(lambda: "dreamcam.preset.Fox" in obs_studio.panel_values().get("hotkeys", []), 10)
        obs_studio.trigger_hotkey("dreamcam.preset.Fox")
        assert wait_for(lambda: app.store.current.prompt == PANEL_PROMPT, 15), bridge.state
        # the preset's other fields equal the app's, so the prompt is the only change
        assert app.store.current == dataclasses.replace(initial, prompt=PANEL_PROMPT, preset="Fox")
        changed_at = time.monotonic()
        assert wait_for(lambda: len(sink.since(changed_at)) >= 3, 30)
        after = sink.since(changed_at)[-1]
        assert not np.array_equal(after, before)  # the panel's prompt changed the picture
        assert app.runner.active_settings.prompt == PANEL_PROMPT

        assert wait_for(lambda: "app running" in obs_studio.panel_status()
                        and f"| {tiny_model_dir.name} (eager)" in obs_studio.panel_status(), 15), obs_studio.panel_status()
    finally:
        app.stop()
    assert bridge is not None and bridge.state == "stopped"  # the app stops its services


def test_capture_source_is_added_to_the_current_scene(obs_studio):
    from dreamcam.plugin.obs_scene import CaptureKind, SceneError, add_capture_source, capture_kind

    client = external_client(obs_studio)
    try:
        scene = client.get_current_program_scene().current_program_scene_name

        def scene_sources():
            return [i["sourceName"] for i in client.get_scene_item_list(scene).scene_items]

        # no camera device on this machine: a clear error, and the scene is left as it was
        assert capture_kind("linux").input_kind == "v4l2_input"
        with pytest.raises(SceneError, match="no video device named like 'Dreamcam'"):
            add_capture_source(client, "Dreamcam", kind=capture_kind("linux"))
        # OBS removes inputs a moment after RemoveInput returns
        assert wait_for(lambda: "Dreamcam" not in scene_sources(), 5)
        assert all(i["inputName"] != "Dreamcam" for i in client.get_input_list().inputs)

        # the same code path with a device list this machine has: the X screens of Xvfb
        screen = CaptureKind("xshm_input", "screen")
        name = add_capture_source(client, "screen", kind=screen, source_name="Dreamcam")
        assert "Screen" in name or "screen" in name
        assert "Dreamcam" in scene_sources()
        assert add_capture_source(client, "screen", kind=screen, source_name="Dreamcam") == "Dreamcam"
        assert scene_sources().count("Dreamcam") == 1
        client.remove_input("Dreamcam")
        assert wait_for(lambda: "Dreamcam" not in scene_sources(), 5)
    finally:
        client.disconnect()


def test_bridge_option_to_add_the_camera_reports_a_missing_device_once(obs_studio, caplog):
    caplog.set_level(logging.INFO)
    store = SettingsStore()
    bridge = ObsBridge(store, StatusBoard(), "127.0.0.1", obs_studio.port, obs_studio.password,
                       add_camera="Dreamcam")  # this machine has no video devices at all
    bridge.start()
    try:
        assert bridge.wait_connected(10), bridge.state
        assert wait_for(lambda: bridge.camera_result, 10)
        assert "no video device named like 'Dreamcam'" in bridge.camera_result
        assert wait_for(lambda: panel_shows(obs_studio, prompt=store.current.prompt), 10)  # the bridge works on
    finally:
        bridge.stop()
    assert sum("could not add the camera source" in r.getMessage() for r in caplog.records) == 1


def load_panel_outside_obs(inst: ObsInstance, **values):
    """The OBS script's real network code (obsws-python to a real OBS), with a stand-in obspython
    for the panel: lets a test type into the panel like a user."""
    from obs_standin import load_script

    module, obs = load_script()
    settings = obs.obs_data_create()
    module.script_defaults(settings)
    obs.obs_data_set_bool(settings, "use_local_websocket", False)
    obs.obs_data_set_string(settings, "host", "127.0.0.1")
    obs.obs_data_set_int(settings, "port", inst.port)
    obs.obs_data_set_string(settings, "password", inst.password)
    for name, value in values.items():
        obs.obs_data_set_string(settings, name, value) if isinstance(value, str) else \
            obs.obs_data_set_double(settings, name, value)
    module.script_load(settings)
    module.script_update(settings)
    return module, obs, settings


def test_a_prompt_does_not_go_out_until_applied(obs_studio):
    """The script's real network code through the real OBS, typed into like a user: a half-typed
    prompt never reaches the app; Apply (or Enter) sends it; a slider acts at once."""
    import time

    from obs_standin import Dialog

    store = SettingsStore(StreamSettings(prompt="the app's prompt"))
    received: list[tuple] = []
    store.subscribe(lambda settings, origin: received.append((settings.prompt, origin)))
    bridge = make_bridge(obs_studio, store, StatusBoard())
    bridge.start()
    module, obs, settings = load_panel_outside_obs(obs_studio, prompt="an old panel prompt")
    view = Dialog(module, obs, settings)
    try:
        assert bridge.wait_connected(10)
        panel = module._S.panel
        assert wait_for(lambda: panel.app_value("prompt") == "the app's prompt", 10), panel.status_line()
        module._tick()  # OBS's timer puts the app's values into the controls
        assert obs.obs_data_get_string(settings, "prompt") == "the app's prompt"
        text = "a neon cyberpunk city at night"
        for i in range(1, len(text) + 1):  # ~20 keystrokes a second
            view.user_sets("prompt", text[:i])
            time.sleep(0.05)
        time.sleep(2.0)
        assert store.current.prompt == "the app's prompt" and received == []  # nothing went out
        assert "Not applied yet: prompt" in module._S.panel.details()
        view.press("apply_prompts")
        assert wait_for(lambda: store.current.prompt == text, 5)
        assert received == [(text, "obs:" + panel.sender)]  # one update, with who sent it
        view.user_sets("prompt", "a calm sea\n")  # Enter applies too, without the newline
        assert wait_for(lambda: store.current.prompt == "a calm sea", 5)
        view.user_sets("strength", 0.9)  # a slider needs no Apply
        assert wait_for(lambda: store.current.strength == 0.9, 5)
        assert store.current.prompt == "a calm sea" and len(received) == 3
    finally:
        module.script_unload()
        bridge.stop()


def test_panel_reconnects_after_obs_restart(tmp_path):
    """The script's own reconnect loop (run outside OBS with a stand-in obspython)."""
    import time

    password = "pw-" + secrets.token_hex(8)
    port = free_port()
    inst = ObsInstance(tmp_path, port, password, {"prompt": "same"})
    store, board = SettingsStore(), StatusBoard()
    board.publish(Status(running=True, fps_out=7.0))
    bridge = ObsBridge(store, board, "127.0.0.1", port, password, status_interval=0.3, max_backoff=0.5)
    module = None
    try:
        inst.start_xvfb()
        inst.start_obs()
        bridge.start()
        module, obs, settings = load_panel_outside_obs(inst, prompt="same")
        panel = module._S.panel
        assert wait_for(lambda: "7.0 fps out" in panel.status_line(), 15), panel.status_line()
        inst.kill_obs()
        assert wait_for(lambda: not panel.status_line().startswith("connected"), 10), panel.status_line()
        inst.status_file.unlink(missing_ok=True)
        inst.start_obs()
        assert wait_for(lambda: "7.0 fps out" in panel.status_line(), 20), panel.status_line()
        # the panel inside OBS sends its whole state when it connects; let that pass first
        assert wait_for(lambda: "7.0 fps out" in inst.panel_status(), 20), inst.panel_status()
        time.sleep(0.3)
        obs.obs_data_set_double(settings, "strength", 0.3)
        module.script_update(settings)
        assert wait_for(lambda: store.current.strength == 0.3, 10), (bridge.state, store.current)
        log_lines = [line for line in obs.log if "[dreamcam]" in line]
        assert len(log_lines) == len(set(log_lines)) or len(log_lines) <= 5, log_lines  # no line per retry
    finally:
        if module is not None:
            module.script_unload()
        bridge.stop()
        inst.stop()


def test_script_without_obsws_python_tells_how_to_install_it(tmp_path):
    inst = ObsInstance(tmp_path, free_port(), "pw-" + secrets.token_hex(4), give_obsws=False)
    try:
        inst.start_xvfb()
        inst.start_obs()
        assert wait_for(lambda: "obsws-python is missing" in inst.script_log(), 15), inst.script_log()[-2000:]
        log_text = inst.script_log()
        assert "-m pip install obsws-python" in log_text and "Python Settings" in log_text
        assert wait_for(lambda: "obsws-python is not installed" in inst.panel_status(), 10)
    finally:
        inst.stop()


def test_a_dreamcam_vendor_folder_beside_the_script_gives_obs_its_obsws(tmp_path):
    """Debian 12 / venv set-up of docs/obs.md: `dreamcam obs-script --copy-to FOLDER`, then
    `pip install --target FOLDER/dreamcam_vendor obsws-python` (here: the same two pure-Python
    packages put there); OBS's own Python has no obsws-python, and the panel works."""
    import shutil

    import obsws_python
    import websocket

    from dreamcam.plugin.obs_scene import copy_obs_script

    script = copy_obs_script(tmp_path / "obs-scripts")
    vendor = script.parent / "dreamcam_vendor"
    for module in (obsws_python, websocket):
        shutil.copytree(Path(module.__file__).parent, vendor / Path(module.__file__).parent.name)
    inst = ObsInstance(tmp_path / "obs", free_port(), "pw-" + secrets.token_hex(4), give_obsws=False, script=script)
    inst.workdir.mkdir()
    try:
        inst.start_xvfb()
        inst.start_obs()
        assert wait_for(lambda: "waiting for the Dreamcam app" in inst.panel_status(), 20), \
            (inst.panel_status(), inst.script_log()[-2000:])
        assert "obsws-python is missing" not in inst.script_log()
    finally:
        inst.stop()


def test_dreamcam_run_obs_is_controlled_from_obs(obs_studio, tiny_model_dir, tmp_path, monkeypatch):
    """The user's command line: `dreamcam run --obs --prompt X --strength 0.2` (password from the
    environment) in its own process: the panel (which holds other values) shows X and 0.2 and the
    app keeps running them; `dreamcam set` changes show in the panel; its status shows in the
    panel; an update sent through OBS reaches it; without -v it says when OBS control connects
    and logs each applied change."""
    import os
    import signal
    import subprocess
    import sys

    from dreamcam.plugin import config as cfg
    from dreamcam.plugin.control_server import get_state

    monkeypatch.setenv(cfg.CONFIG_ENV, str(tmp_path / "cfg"))  # this test reads the app's control token
    control_port = free_port()
    env = dict(os.environ, DREAMCAM_OBS_PASSWORD=obs_studio.password, HF_HUB_OFFLINE="1",
               DREAMCAM_CONFIG_DIR=str(tmp_path / "cfg"))
    prompt = "X: a lighthouse in a storm"
    cmd = [sys.executable, "-m", "dreamcam.plugin.cli", "run", "--obs", "--obs-port", str(obs_studio.port),
           "--source", "pattern", "--sink", "null", "--model", str(tiny_model_dir),
           "--tiny-vae", str(tiny_model_dir / "taesd"), "--device", "cpu", "--size", "64", "--engine", "eager",
           "--control-port", str(control_port), "--web-port", "0", "--obs-camera", "No Such Camera",
           "--prompt", prompt, "--strength", "0.2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = None
    try:
        assert wait_for(lambda: "app running" in obs_studio.panel_status() or proc.poll() is not None, 90), \
            obs_studio.panel_status()
        assert proc.poll() is None, proc.stdout.read()
        assert f"| {tiny_model_dir.name} (" in obs_studio.panel_status()
        # the app's values show in the panel, and the app still runs them
        assert wait_for(lambda: panel_shows(obs_studio, prompt=prompt, strength=0.2), 10), obs_studio.panel_values()
        in_force = get_state(port=control_port)
        assert (in_force["settings"]["prompt"], in_force["settings"]["strength"]) == (prompt, 0.2)
        assert in_force["version"] == 0
        # a `dreamcam set` change appears in the panel
        done = subprocess.run([sys.executable, "-m", "dreamcam.plugin.cli", "set", "strength=0.35",
                               "--port", str(control_port)], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert wait_for(lambda: panel_shows(obs_studio, strength=0.35, prompt=prompt), 10), obs_studio.panel_values()
        client = external_client(obs_studio)
        for _ in range(30):  # repeat until the app has connected (the panel may still show an earlier app)
            client.broadcast_custom_event({"eventData": encode("settings", steps=99)})
            if wait_for(lambda: "error: rejected update: steps" in obs_studio.panel_status(), 2):
                break
        assert "error: rejected update: steps" in obs_studio.panel_status(), obs_studio.panel_status()
        # let the first (warm-up) frame finish, so the stop below is not racing it on a busy CPU
        assert wait_for(lambda: ", 0.0 fps processed" not in obs_studio.panel_status(), 60), \
            obs_studio.panel_status()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert obs_studio.password not in out  # the password is never printed or logged
        assert "connected to OBS" in out  # shown without --verbose
        assert "settings from control:dreamcam set: strength 0.2 -> 0.35" in out
        assert "no video device named like 'No Such Camera'" in out  # --obs-camera reports, never stops the app
        assert wait_for(lambda: "waiting for the Dreamcam app" in obs_studio.panel_status(), 10)
    finally:
        if client is not None:
            client.disconnect()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
