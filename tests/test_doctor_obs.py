"""`dreamcam doctor`'s OBS checks (OBS's own config files, as OBS writes them), help and doctor
output at 80 columns, and the one v4l2loopback command that README, docs/obs.md and doctor share."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dreamcam.plugin.doctor import check_obs_panel, fix_lines
from dreamcam.plugin.sinks.vcam import V4L2LOOPBACK_LOAD, install_hint

REPO = Path(__file__).resolve().parents[1]
OBS_29 = (29 << 24) | (0 << 16) | 2  # how OBS packs its version into [General] LastVersion


def obs_config(root: Path, script: Path | None, *, last_version: int = OBS_29, python: Path | None = None) -> Path:
    folder = root / "obs-studio"
    (folder / "basic" / "scenes").mkdir(parents=True)
    ini = f"[General]\nLastVersion={last_version}\n\n[Basic]\nSceneCollection=Live\nSceneCollectionFile=Live\n"
    if python is not None:
        ini += f"\n[Python]\nPath64bit={python}\n"
    (folder / "global.ini").write_text(ini)
    scripts = [{"path": str(script), "settings": {}}] if script else []
    (folder / "basic" / "scenes" / "Live.json").write_text(json.dumps({"name": "Live", "modules": {"scripts-tool": scripts}}))
    return folder


def test_doctor_finds_the_panel_in_the_scene_collection_and_its_vendored_obsws(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    checks = check_obs_panel("linux")
    assert checks[0].name == "OBS panel" and not checks[0].ok and "no OBS config folder" in checks[0].detail

    scripts = tmp_path / "obs-scripts"
    scripts.mkdir()
    obs_config(tmp_path / "config", None)
    panel, python = check_obs_panel("linux")
    assert not panel.ok and "not loaded in the scene collection 'Live'" in panel.detail
    assert "dreamcam obs-script --copy-to FOLDER" in panel.fix

    (tmp_path / "config").rename(tmp_path / "old")
    obs_config(tmp_path / "config", scripts / "dreamcam_obs.py")
    panel, python = check_obs_panel("linux")
    assert not panel.ok and "missing" in panel.detail
    (scripts / "dreamcam_obs.py").write_text("# the panel")
    panel, python = check_obs_panel("linux")
    assert not panel.ok and "dreamcam_schema.json is missing" in panel.detail
    (scripts / "dreamcam_schema.json").write_text("{}")
    panel, python = check_obs_panel("linux")
    assert panel.ok and str(scripts / "dreamcam_obs.py") in panel.detail
    if not python.ok:  # this machine's system python3 lacks obsws-python: the fix is the vendor folder
        assert f'--target "{scripts / "dreamcam_vendor"}" obsws-python' in python.fix
    (scripts / "dreamcam_vendor" / "obsws_python").mkdir(parents=True)
    panel, python = check_obs_panel("linux")
    assert python.ok and "dreamcam_vendor" in python.detail


def test_doctor_checks_the_python_windows_obs_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("APPDATA", str(tmp_path / "appdata"))
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "dreamcam_obs.py").write_text("#")
    (scripts / "dreamcam_schema.json").write_text("{}")
    obs_config(tmp_path / "appdata", scripts / "dreamcam_obs.py")
    _, python = check_obs_panel("win32")
    assert not python.ok and "Python Settings is empty" in python.detail and "3.9 to 3.10" in python.fix

    py312 = tmp_path / "Python312"
    py312.mkdir()
    (py312 / "python312.dll").write_bytes(b"")
    (tmp_path / "appdata").rename(tmp_path / "old")
    obs_config(tmp_path / "appdata", scripts / "dreamcam_obs.py", python=py312)
    _, python = check_obs_panel("win32")  # OBS 29 loads up to 3.10
    assert not python.ok and "is Python 3.12" in python.detail and "OBS 29.0" in python.fix

    (tmp_path / "appdata").rename(tmp_path / "old30")
    obs_config(tmp_path / "appdata", scripts / "dreamcam_obs.py", python=py312, last_version=30 << 24)
    _, python = check_obs_panel("win32")  # OBS 30 loads 3.12, which lacks the package
    assert not python.ok and "has no obsws-python" in python.detail
    assert fix_lines(python.fix) == [f'  "{py312 / "python.exe"}" -m pip install obsws-python']
    (py312 / "Lib" / "site-packages" / "obsws_python").mkdir(parents=True)
    assert check_obs_panel("win32")[1].ok


def test_fix_commands_are_printed_whole_on_their_own_lines():
    assert fix_lines(install_hint("linux")) == [
        "install v4l2loopback and load it:", "  sudo apt install v4l2loopback-dkms", f"  {V4L2LOOPBACK_LOAD}"]
    assert len(f"      {V4L2LOOPBACK_LOAD}") <= 80  # as doctor prints it: fits an 80-column terminal


def test_one_v4l2loopback_command_in_readme_docs_and_doctor():
    for doc in (REPO / "README.md", REPO / "docs" / "obs.md"):
        text = doc.read_text()
        assert V4L2LOOPBACK_LOAD in text, doc
        assert text.count("modprobe v4l2loopback") == text.count(V4L2LOOPBACK_LOAD), doc


def _cli(*args: str) -> str:
    env = dict(os.environ, COLUMNS="80", TERM="dumb")
    done = subprocess.run([sys.executable, "-m", "dreamcam.plugin.cli", *args], capture_output=True,
                          text=True, env=env, timeout=120)
    return done.stdout


def test_help_and_doctor_at_80_columns_keep_commands_whole():
    for args in (("--help",), ("run", "--help"), ("set", "--help"), ("status", "--help"), ("tray", "--help"),
                 ("doctor", "--help"), ("obs-script", "--help")):
        out = _cli(*args)
        assert out.strip(), args
        for line in out.splitlines():
            assert line.count("`") % 2 == 0, (args, line)  # no `command` split over two lines
            assert len(line) <= 80, (args, line)
    assert "Print the settings in force and the status of a running app." in _cli("--help")
    doctor = _cli("doctor")
    for line in doctor.splitlines():  # every command doctor suggests stands whole on its line
        if "pip install" in line or "modprobe" in line:
            assert line.startswith("      ") and "`" not in line, line
