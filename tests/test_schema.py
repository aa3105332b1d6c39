"""The settings schema: one entry per setting, the JSON copy the OBS script reads, the core's limits
shared with the app, and numbers that must be finite and in range."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from dreamcam.core import limits
from dreamcam.plugin import schema
from dreamcam.plugin.settings import AppSettings, SettingsError, StreamSettings, apply_changes

BAD_NUMBERS = [float("nan"), float("inf"), float("-inf"), 10**400, -(10**400), True, "3", None, [[[[1]]]]]


def deep_list(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def test_the_json_file_is_the_python_schema():
    on_disk = schema.JSON_PATH.read_text(encoding="utf-8")
    assert on_disk == schema.json_text(), "run: python -m dreamcam.plugin.schema --write"
    assert schema.main(["--check"]) == 0
    data = json.loads(on_disk)
    assert [f["name"] for f in data["fields"]] == [f.name for f in schema.SCHEMA]
    assert data["groups"] == list(schema.GROUPS)


def test_the_check_fails_when_the_json_differs(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "dreamcam_schema.json"
    stale.write_text(schema.json_text().replace('"max": 20.0', '"max": 50.0'))
    monkeypatch.setattr(schema, "JSON_PATH", stale)
    assert schema.main(["--check"]) == 1
    assert "--write" in capsys.readouterr().err
    schema.main(["--write"])
    assert schema.main(["--check"]) == 0


def test_every_field_is_well_formed():
    names = [f.name for f in schema.SCHEMA]
    assert len(names) == len(set(names))
    options = [f.option for f in schema.SCHEMA if f.option]
    assert len(options) == len(set(options))
    for f in schema.SCHEMA:
        assert f.type in schema.TYPES and f.widget in schema.WIDGETS and f.group in schema.GROUPS, f.name
        assert f.label and f.help, f.name
        assert (f.range is not None) == (f.type in ("int", "float", "int_list")), f.name
        assert bool(f.choices) == (f.type == "choice"), f.name
        if f.default is not None or not f.nullable:
            assert schema.validate(f.name, f.default) == f.default, f.name  # the default is allowed
        if f.type in ("int", "float"):
            assert f.step is not None, f.name


def test_the_dataclasses_are_the_schema():
    for cls, fields in ((StreamSettings, schema.live_fields()), (AppSettings, schema.app_fields())):
        assert [(f.name, f.default) for f in dataclasses.fields(cls)] == [(f.name, f.default) for f in fields]
        with pytest.raises(dataclasses.FrozenInstanceError):
            cls().__setattr__(fields[0].name, fields[0].default)
    assert "hunter2" not in repr(AppSettings(obs_password="hunter2"))
    secret = next(f for f in schema.to_json()["fields"] if f["name"] == "obs_password")
    assert secret["secret"] and secret["default"] == ""


def test_core_and_app_share_one_set_of_limits():
    """The stream parameters' ranges are the core's own objects: they cannot drift apart."""
    from dreamcam.core.config import StreamConfig

    for name in ("strength", "steps", "guidance_scale", "delta", "seed", "similarity_threshold",
                 "similarity_max_skip", "transition_frames", "width", "height"):
        assert schema.field(name).range is limits.RANGES[name], name
    assert schema.field("t_index_list").range is limits.RANGES["t_index"]
    assert schema.field("cfg_type").choices == limits.CFG_TYPES
    assert schema.field("resize").choices == limits.RESIZE_POLICIES
    assert schema.field("prompt").max_chars == limits.MAX_PROMPT_CHARS
    for name, value in (("guidance_scale", 20.5), ("delta", 5.5), ("seed", 2**31), ("transition_frames", 601),
                        ("similarity_max_skip", 1001), ("width", 4096)):
        with pytest.raises(ValueError, match=name):
            StreamConfig(**{name: value})
        with pytest.raises(SettingsError, match=name):
            schema.validate(name, value)
    top = limits.RANGES["seed"].high
    assert StreamConfig(seed=top).seed == top == StreamSettings(seed=top).seed


def test_the_core_generator_takes_the_largest_seed():
    torch = pytest.importorskip("torch")
    torch.Generator("cpu").manual_seed(limits.RANGES["seed"].high)


@pytest.mark.parametrize("value", BAD_NUMBERS, ids=repr)
@pytest.mark.parametrize("name", ["guidance_scale", "seed", "steps", "similarity_threshold"])
def test_bad_numbers_are_one_clear_line_everywhere_in_python(name, value):
    from dreamcam.core.config import StreamConfig

    with pytest.raises(SettingsError) as err:
        apply_changes(StreamSettings(), {name: value})
    text = str(err.value)
    assert err.value.field == name and text.startswith(f"{name}: must be") and "\n" not in text
    assert len(text) < 200 and str(schema.field(name).range.high) in text
    if value is None and name == "similarity_threshold":
        return  # the core's None turns the filter off
    with pytest.raises(ValueError, match=f"^{name}: must be"):
        StreamConfig(**{name: value})


def test_absurd_nesting_is_refused_in_one_line():
    with pytest.raises(SettingsError) as err:
        apply_changes(StreamSettings(), {"t_index_list": deep_list(10_000)})
    assert err.value.field == "t_index_list" and len(str(err.value)) < 200
    with pytest.raises(SettingsError, match="^prompt: must be text"):
        apply_changes(StreamSettings(), {"prompt": deep_list(10_000)})


def test_conversions_and_text_values():
    new, _ = apply_changes(StreamSettings(), {"steps": 2.0, "strength": 1, "t_index_list": [10, 40]})
    assert (new.steps, new.strength, new.t_index_list) == (2, 1.0, (10, 40))
    assert isinstance(new.steps, int) and isinstance(new.strength, float)
    assert AppSettings(tiny_vae="None").tiny_vae is None
    assert schema.from_text("prompt", "123") == "123"
    assert schema.from_text("paused", "true") is True
    assert schema.from_text("t_index_list", "32,45") == (32, 45)
    assert schema.from_text("t_index_list", "none") is None
    for name, text in (("seed", "NaN"), ("steps", "inf"), ("guidance_scale", "-Infinity"), ("seed", "9" * 500),
                       ("steps", "two"), ("paused", "maybe")):
        with pytest.raises(SettingsError, match=f"^{name}: must"):
            schema.from_text(name, text)
    with pytest.raises(SettingsError, match="unknown setting"):
        schema.field("guidance")


def test_the_schema_imports_no_torch():
    code = "import sys, dreamcam.plugin.schema, dreamcam.plugin.settings; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_json_ships_beside_the_obs_script():
    from dreamcam.plugin.obs_scene import obs_schema_path, obs_script_path

    assert obs_schema_path() == schema.JSON_PATH and obs_schema_path().parent == obs_script_path().parent
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]
    assert any(p == "*.json" for key in ("*", "dreamcam.obs_scripts") for p in patterns.get(key, []))
