"""Every surface agrees with the settings schema (CLI options, TOML keys, control protocol, OBS
JSON), the drifted limits are gone, and NaN, infinities, huge integers, bools and absurd nesting
get one clear line on every surface: real CLI runs, real TOML and preset files, a real socket."""

from __future__ import annotations

import json
import socket

import pytest
import typer
from typer.testing import CliRunner

from dreamcam.core.config import StreamConfig
from dreamcam.plugin import config as cfg
from dreamcam.plugin import messages, schema
from dreamcam.plugin.app import DreamcamApp
from dreamcam.plugin.cli import app as cli_app
from dreamcam.plugin.cli_options import default_text
from dreamcam.plugin.control import SettingsStore
from dreamcam.plugin.control_server import ControlServer, send_settings
from dreamcam.plugin.processor import PassThrough
from dreamcam.plugin.settings import AppSettings, SettingsError, StreamSettings, apply_changes
from dreamcam.plugin.sinks import NullSink
from obs_standin import load_script

RUN_OWN_OPTIONS = {"size", "config", "obs_camera", "frames", "verbose", "help", "overwrite",
                   "web_host", "controlnet", "lora"}  # not settings (web_host: only an explicit flag opens the page to others)


@pytest.fixture(autouse=True)
def config_home(tmp_path, monkeypatch):
    monkeypatch.setenv(cfg.CONFIG_ENV, str(tmp_path / "cfg"))
    return tmp_path / "cfg"


def cli(*args: str):
    result = CliRunner().invoke(cli_app, list(args), env={"COLUMNS": "250"})
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    return result


def assert_one_line_error(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], (word, lines[0])


def run_params() -> dict:
    command = typer.main.get_command(cli_app).commands["run"]
    return {p.name: p for p in command.params}


# ---- the surfaces agree with the schema ----------------------------------------------------
def test_cli_options_are_the_schema():
    params = run_params()
    assert set(params) - RUN_OWN_OPTIONS == {f.name for f in schema.SCHEMA if f.option}
    for f in schema.SCHEMA:
        if not f.option:
            assert f.name not in params, f.name
            continue
        p = params[f.name]
        assert f.option in p.opts, (f.name, p.opts)
        assert (f.cli_short in p.opts) if f.cli_short else all(len(o) > 2 for o in p.opts), f.name
        assert p.help.replace("\\[", "[").startswith(f.help), f.name
        if f.type in ("int", "float", "choice"):
            assert f.allowed() in p.help.replace("\\[", "["), f.name
        assert p.show_default == (default_text(f) or False), f.name
        assert p.default is None, f.name  # not given: the config file or the schema default wins
        if f.type in ("int", "float"):  # typed options: typer itself refuses words
            result = cli("run", "--sink", "null", f.option, "abc")
            assert result.exit_code == 2 and "Invalid value" in result.output and f.option in result.output
    assert "hunter2" not in cli("run", "--help").output
    help_text = " ".join(cli("run", "--help").output.split())
    assert "a number from 0.0 to 20.0" in help_text and "[default: (1.2)]" in help_text
    for f in schema.SCHEMA:
        if f.option and f.type == "bool":
            assert f"--no-{f.option[2:]}" in help_text, f.name


def test_toml_keys_are_the_schema(tmp_path):
    assert cfg.APP_FIELDS == schema.app_names() and cfg.STREAM_KEYS == schema.live_names()
    path = tmp_path / "all.toml"
    lines = ["[app]"] + [f"{f.name} = {json.dumps(f.default)}" for f in schema.app_fields() if f.default is not None]
    lines += ["[stream]"] + [f"{f.name} = {json.dumps(f.default)}" for f in schema.live_fields()
                             if f.default is not None]
    path.write_text("\n".join(lines) + "\n")
    app_table, stream_table = cfg.load_file(path)
    assert cfg.build_app_settings(app_table) == AppSettings()
    assert cfg.build_stream_settings(stream_table) == StreamSettings()
    for table, key in (("stream", "model"), ("stream", "guidance")):
        path.write_text(f"[{table}]\n{key} = 1\n")
        with pytest.raises(SettingsError, match=f"^{key}: unknown"):
            a, s = cfg.load_file(path)
            cfg.build_app_settings(a)
            cfg.build_stream_settings(s)
    for key in ("guidance_scale", "width"):  # a live key under [app] (width was start-only once)
        path.write_text(f"[app]\n{key} = 512\n")
        with pytest.raises(SettingsError, match=fr"^{key}: .*: move it from \[app\] to \[stream\]$"):
            cfg.load_file(path)


def test_presets_hold_the_schemas_preset_fields(config_home):
    path = cfg.save_preset("All", StreamSettings(paused=True, preset="Other", seed=5))
    assert set(json.loads(path.read_text())) == schema.preset_names()
    assert "paused" not in schema.preset_names() and "preset" not in schema.preset_names()


def test_control_protocol_fields_are_the_schema():
    assert messages.SETTINGS_FIELDS == schema.live_names()
    store = SettingsStore()
    changes = {f.name: f.default for f in schema.live_fields() if f.name != "preset"}
    assert messages.handle_event(store, messages.settings_event(dict(changes, seed=9)), "t") is None
    assert store.current.seed == 9
    error = messages.handle_event(store, messages.settings_event({"sede": 3, "prompt": "x"}), "t")
    assert error.startswith("rejected update: sede: unknown setting") and store.current.prompt != "x"


def test_obs_json_is_the_schema():
    data = json.loads(schema.JSON_PATH.read_text())
    module, _ = load_script()
    panel = [f.name for f in schema.SCHEMA if f.live and f.panel]
    assert list(module.FIELDS) == panel
    for f in schema.SCHEMA:
        entry = next(e for e in data["fields"] if e["name"] == f.name)
        assert (entry["label"], entry["help"], entry["group"], entry["widget"], entry["live"]) == \
            (f.label, f.help, f.group, f.widget, f.live), f.name
        if f.range is not None:
            assert (entry["min"], entry["max"], entry["integer"]) == (f.range.low, f.range.high, f.range.integer)
        if f.choices:
            assert entry["choices"] == list(f.choices)


@pytest.mark.parametrize("name, bad, good", [("guidance_scale", 20.5, 20.0), ("seed", 2**31, 2**31 - 1),
                                             ("delta", 5.01, 5.0), ("transition_frames", 601, 600)])
def test_the_drifted_limits_are_gone(name, bad, good):
    """The core, the app's settings, the CLI and the OBS panel refuse the same value the same way."""
    f = schema.field(name)
    with pytest.raises(ValueError, match=f"^{name}: must be from"):
        StreamConfig(**{name: bad})
    with pytest.raises(SettingsError, match=f"^{name}: must be from"):
        StreamSettings(**{name: bad})
    assert StreamConfig(**{name: good}) and StreamSettings(**{name: good})
    if f.option:
        assert_one_line_error(cli("run", "--sink", "null", f.option, str(bad)), f"{name}: must be from", str(good))
    module, _ = load_script()
    assert module.field_problem(module.FIELDS[name], bad).startswith("must be")
    assert module.field_problem(module.FIELDS[name], good) == ""
    assert module.FIELDS[name]["max"] == good


# ---- numbers are finite and in range on every surface ----------------------------------------
@pytest.mark.parametrize("args, words", [
    (["--guidance", "nan"], "guidance_scale: must be a number from 0.0 to 20.0, got nan"),
    (["--strength", "inf"], "strength: must be a number"),
    (["--delta", "-inf"], "delta: must be a number"),
    (["--seed", "9" * 400], "seed: must be from 0 to 2147483647, got a number of about"),
    (["--fps", "NaN"], "fps: must be a number from 1.0 to 240.0"),
    (["--t-index", "nan,40"], "t_index_list: each value must be a whole number"),
], ids=lambda v: str(v)[:40])
def test_cli_options_refuse_nan_and_huge_numbers(args, words):
    assert_one_line_error(cli("run", "--sink", "null", *args), words)


@pytest.mark.parametrize("line, words", [
    ("seed = nan", "seed: must be a whole number from 0 to 2147483647, got nan"),
    ("steps = inf", "steps: must be a whole number from 1 to 8, got inf"),
    ("guidance_scale = -inf", "guidance_scale: must be a number"),
    ("strength = +nan", "strength: must be a number"),
    ("seed = 99999999999999999999999999", "seed: must be from 0"),
    ("similarity_filter = 1", "similarity_filter: must be true or false"),
    ("guidance_scale = true", "guidance_scale: must be a number"),
    ("t_index_list = " + "[" * 3000 + "]" * 3000, "nested too deeply"),
    ("t_index_list = " + "[" * 50 + "]" * 50, "t_index_list: each value must be a whole number"),
], ids=lambda v: v[:40])
def test_toml_files_with_bad_numbers_give_one_line_from_the_cli(tmp_path, line, words):
    path = tmp_path / "bad.toml"
    path.write_text("[stream]\n" + line + "\n")
    assert_one_line_error(cli("run", "--sink", "null", "--config", str(path)), words)


def test_toml_deep_nesting_and_broken_files_give_one_line(tmp_path):
    path = tmp_path / "deep.toml"
    path.write_text("[stream]\nprompt = " + "[" * 100_000 + "\n")
    assert_one_line_error(cli("run", "--config", str(path)), "config:", "not valid TOML")
    assert_one_line_error(cli("run", "--config", str(tmp_path)), "is a folder")
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe\x00garbage")
    assert_one_line_error(cli("run", "--config", str(tmp_path / "binary.toml")), "not a text file")


@pytest.mark.parametrize("pair, words", [
    ("seed=NaN", "seed: must be a whole number from 0 to 2147483647, got nan"),
    ("guidance_scale=Infinity", "guidance_scale: must be a number"),
    ("steps=-inf", "steps: must be a whole number"),
    ("seed=" + "9" * 5000, "seed: must be from 0"),
    ("t_index_list=" + "[" * 10_000, "t_index_list"),
    ("paused=2", "paused: must be true or false"),
], ids=lambda v: v[:40])
def test_preset_save_refuses_bad_numbers_and_writes_nothing(config_home, pair, words):
    assert_one_line_error(cli("preset", "save", "X", pair), words)
    assert cfg.list_presets() == []


@pytest.mark.parametrize("content, words", [
    ('{"seed": NaN}', "seed: must be a whole number"),
    ('{"steps": Infinity}', "steps: must be a whole number"),
    ('{"guidance_scale": -Infinity}', "guidance_scale: must be a number"),
    ('{"seed": ' + "9" * 5000 + "}", "preset: "),
    ('{"t_index_list": ' + "[" * 100_000 + "]" * 100_000 + "}", "preset: "),
    ('{"strength": true}', "strength: must be a number"),
    ('{"sede": 3}', "sede: unknown preset setting"),
], ids=lambda v: v[:40])
def test_hand_edited_preset_files_give_one_line(config_home, content, words):
    folder = config_home / "presets"
    folder.mkdir(parents=True)
    (folder / "Hand.json").write_text(content)
    assert_one_line_error(cli("preset", "show", "Hand"), words)
    assert_one_line_error(cli("run", "--sink", "null", "--preset", "Hand"), words)
    with pytest.raises(SettingsError):
        cfg.load_preset("Hand")


def test_set_refuses_nan_before_connecting():
    # nothing listens on port 1: a refusal here is the local check, not the app's
    assert_one_line_error(cli("set", "seed=NaN", "--port", "1"), "seed: must be a whole number")
    assert_one_line_error(cli("set", "sede=3", "--port", "1"), "sede: unknown setting")


@pytest.fixture
def control_app(tmp_path):
    app = DreamcamApp(AppSettings(control_port=0), StreamSettings(prompt="start", width=64, height=64),
                      sink=NullSink(), processor=PassThrough())
    server = ControlServer(app.store, app.board, port=0)
    app.add_service(server)
    app.start()
    yield app, server.port
    app.stop()


RAW_LINES = [
    ('{"dreamcam": {"v": 1, "kind": "settings", "prompt": "x", "seed": NaN}}', "seed: must be a whole number"),
    ('{"dreamcam": {"v": 1, "kind": "settings", "prompt": "x", "guidance_scale": Infinity}}', "guidance_scale"),
    ('{"dreamcam": {"v": 1, "kind": "settings", "prompt": "x", "delta": -Infinity}}', "delta: must be"),
    ('{"dreamcam": {"v": 1, "kind": "settings", "prompt": "x", "strength": 1e400}}', "strength: must be"),
    ('{"dreamcam": {"v": 1, "kind": "settings", "prompt": "x", "seed": ' + "9" * 400 + "}}", "seed: must be from"),
    ('{"dreamcam": {"v": 1, "kind": "settings", "prompt": "x", "seed": ' + "9" * 5000 + "}}", "not JSON"),
    ('{"dreamcam": {"v": 1, "kind": "settings", "prompt": "x", "steps": true}}', "steps: must be"),
    ('{"dreamcam": {"v": 1, "kind": "settings", "prompt": "x", "t_index_list": ' + "[" * 10_000 + "]" * 10_000
     + "}}", "nested too deeply"),
    ('{"dreamcam": {"v": 1, "kind": "settings", "prompt": "x", "t_index_list": ' + "[" * 500 + "]" * 500 + "}}",
     "t_index_list"),
    ('{"dreamcam": {"v": NaN, "kind": "settings", "prompt": "x"}}', "protocol version"),
    ('{"dreamcam": {"v": 1, "kind": "settings", "prompt": "x", "preset": NaN}}', "preset"),
    ('{"dreamcam": {"v": 1, "kind": "settings", "prompt": "x", "sede": 3}}', "sede: unknown setting"),
]


CLOSING = ("not JSON", "nested too deeply", "protocol version")  # bad lines, not bad values: the port hangs up


def test_the_control_socket_answers_every_bad_number_on_the_same_connection(control_app):
    """Bad values keep the connection; a line that is not a valid message is answered, then closed
    (docs/control-protocol.md), and the next line goes on a new connection."""
    from dreamcam.plugin import secret

    app, port = control_app
    token = secret.load_or_create()
    conn = None
    try:
        for line, words in RAW_LINES:
            if conn is None:
                conn = socket.create_connection(("127.0.0.1", port), timeout=10)
                reader = conn.makefile("rb")
            conn.sendall(line.replace('{"dreamcam"', '{"token": "%s", "dreamcam"' % token, 1).encode() + b"\n")
            reply = reader.readline()
            assert reply, f"no reply to {line[:80]}"
            reply = json.loads(reply)
            assert reply["ok"] is False and words in reply["error"], (line[:80], reply.get("error"))
            assert "\n" not in reply["error"] and len(reply["error"]) < 400
            if words in CLOSING:
                assert reader.readline() == b"", line[:80]
                conn.close()
                conn = None
        if conn is None:
            conn = socket.create_connection(("127.0.0.1", port), timeout=10)
            reader = conn.makefile("rb")
        event = {"token": token, **messages.settings_event({"prompt": "after", "seed": 2**31 - 1})}
        conn.sendall(json.dumps(event).encode() + b"\n")
        assert json.loads(reader.readline())["ok"] is True
    finally:
        if conn is not None:
            conn.close()
    assert (app.store.current.prompt, app.store.current.seed) == ("after", 2**31 - 1)
    assert app.store.version == 1  # none of the bad lines changed anything


def test_send_settings_with_nan_gets_the_apps_refusal(control_app):
    app, port = control_app
    reply = send_settings({"seed": float("nan"), "prompt": "no"}, port=port)  # json.dumps writes NaN
    assert not reply["ok"] and "seed: must be a whole number" in reply["error"]
    assert app.store.current.prompt == "start"


def test_the_size_is_a_live_setting_of_the_protocol_and_stays_out_of_presets(control_app, config_home):
    app, port = control_app
    reply = send_settings({"width": 96, "height": 48}, port=port)
    assert reply["ok"] and (reply["settings"]["width"], reply["settings"]["height"]) == (96, 48)
    for bad, words in (({"width": 100}, "width: must be a multiple of 8, got 100"),
                       ({"height": 4096, "prompt": "no"}, "height: must be from 32 to 2048, got 4096"),
                       ({"width": 96.5}, "width: must be a whole number")):
        reply = send_settings(bad, port=port)
        assert not reply["ok"] and words in reply["error"], reply
    assert (app.store.current.width, app.store.current.height, app.store.current.prompt) == (96, 48, "start")
    path = cfg.save_preset("Sized", app.store.current)
    assert "width" not in json.loads(path.read_text())  # a preset is a look, not a size (the camera's stays)
    assert send_settings({"preset": "Sized", "width": 128}, port=port)["ok"] and app.store.current.width == 128
    assert send_settings({"preset": "Sized"}, port=port)["ok"] and app.store.current.width == 128


def test_a_preset_with_nan_named_over_the_socket_is_refused(control_app, config_home):
    app, port = control_app
    (config_home / "presets").mkdir(parents=True)
    (config_home / "presets" / "Bad.json").write_text('{"prompt": "bad", "guidance_scale": NaN}')
    reply = send_settings({"preset": "Bad"}, port=port)
    assert not reply["ok"] and "guidance_scale: must be a number" in reply["error"]
    assert app.store.current.prompt == "start"


def test_apply_changes_stays_all_or_nothing():
    start = StreamSettings(prompt="kept")
    with pytest.raises(SettingsError):
        apply_changes(start, {"prompt": "new", "strength": 0.2, "seed": float("nan")})
    assert start.prompt == "kept"
