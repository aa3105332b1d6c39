"""The control page's door, with real sockets against the running app (PassThrough processor: the
model is not the point): the token becomes a cookie, foreign Host and Origin headers and requests
without the cookie are refused and change nothing, secrets never leave, stop frees the port."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading

import pytest

from dreamcam.plugin.app import DreamcamApp
from dreamcam.plugin.processor import PassThrough
from dreamcam.plugin.settings import AppSettings, StreamSettings
from dreamcam.plugin.web_guard import COOKIE
from plugin_helpers import wait_for
from web_helpers import Http, page_hello, running_page, token_of

SECRET_PASSWORD = "obs-password-that-must-never-leave"


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMCAM_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path / "config"


@pytest.fixture
def app(config_dir):
    settings = AppSettings(source="pattern", sink="null", fps=20, control_port=0,
                           obs_password=SECRET_PASSWORD)
    return DreamcamApp(settings, StreamSettings(prompt="a quiet lake", width=64, height=64), processor=PassThrough())


def test_the_token_becomes_an_httponly_strict_cookie_and_leaves_the_address(app, config_dir):
    with running_page(app) as page:
        http = Http(page.port)
        token = token_of(page)
        assert token == (config_dir / "control-token").read_text().strip()  # the per-install secret
        assert (config_dir / "control-token").stat().st_mode & 0o077 == 0
        status, headers, _ = http.request("GET", f"/?token={token}")
        assert status == 303 and headers["location"] == "/"  # the token is taken out of the address
        cookie = headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
        value = cookie.split(";")[0].split("=", 1)[1]
        assert token not in value  # the cookie is not the control-port secret itself
        status, headers, body = http.request("GET", "/", cookie=value)
        assert status == 200 and b"Dreamcam" in body
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert f"connect-src 'self' ws://127.0.0.1:{page.port};" in headers["content-security-policy"]
        assert headers["referrer-policy"] == "no-referrer"

        status, headers, _ = http.request("GET", "/?token=" + "x" * len(token))
        assert status == 403 and "set-cookie" not in headers


def test_requests_without_the_cookie_or_from_elsewhere_are_refused_and_change_nothing(app):
    with running_page(app) as page:
        http = Http(page.port)
        cookie = http.login(token_of(page))
        before, version = app.store.snapshot()
        change = {"changes": {"prompt": "taken over", "paused": True}}
        port = page.port
        refused = {
            "no cookie": dict(),
            "a wrong cookie": dict(cookie="0" * 64),
            "a foreign Origin": dict(cookie=cookie, origin="http://evil.example"),
            "another local port as Origin": dict(cookie=cookie, origin=f"http://127.0.0.1:{port + 1}"),
            "Origin null (a sandboxed frame, a file)": dict(cookie=cookie, origin="null"),
            "a rebound DNS name as Host": dict(cookie=cookie, host=f"evil.example:{port}"),
            "the right name on another port as Host": dict(cookie=cookie, host=f"localhost:{port + 1}"),
            "a cross-site fetch": dict(cookie=cookie, headers={"Sec-Fetch-Site": "cross-site"}),
            "a same-site fetch from another port": dict(cookie=cookie, headers={"Sec-Fetch-Site": "same-site"}),
        }
        for why, options in refused.items():
            status, _, body = http.request("POST", "/api/settings", change, **options)
            assert status == 403, (why, status, body)
            assert http.request("GET", "/api/state", **options)[0] == 403, why
            assert http.request("PUT", "/api/presets/mine", **options)[0] == 403, why
            assert http.upgrade(**options) == 403, why  # the WebSocket upgrade too
        assert app.store.snapshot() == (before, version)  # nothing changed
        assert not (page.feed.wanted or app.store.current.paused)

        # the same request from the page itself goes through (the names it may be opened by)
        for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
            origin = f"http://{host}"
            assert http.upgrade(cookie=cookie, host=host, origin=origin) == 101
            status, _, body = http.request("POST", "/api/settings", {"changes": {"prompt": host}}, cookie=cookie,
                                           host=host, origin=origin, headers={"Sec-Fetch-Site": "same-origin"})
            assert status == 200, body
            assert app.store.current.prompt == host


def test_a_rotated_secret_locks_out_the_old_cookie_at_once(app):
    tokens = ["A" * 43]
    with running_page(app, token=lambda: tokens[0]) as page:
        http = Http(page.port)
        cookie = http.login(tokens[0])
        assert http.request("GET", "/api/presets", cookie=cookie)[0] == 200
        tokens[0] = "B" * 43
        assert http.request("GET", "/api/presets", cookie=cookie)[0] == 403
        assert http.request("GET", "/?token=" + "A" * 43)[0] == 403
        assert http.request("GET", "/api/presets", cookie=http.login(tokens[0]))[0] == 200


def test_bad_values_are_refused_naming_the_field_and_keep_the_settings(app):
    with running_page(app) as page:
        http = Http(page.port)
        cookie = http.login(token_of(page))
        before = app.store.snapshot()
        for changes, field in (({"strength": 2.0}, "strength"), ({"strength": 0.2, "seed": -1}, "seed"),
                               ({"colour": "red"}, "colour"), ({"cfg_type": "lots"}, "cfg_type")):
            status, _, body = http.request("POST", "/api/settings", {"changes": changes}, cookie=cookie)
            assert status == 400 and f'"field":"{field}"' in body.decode(), body
        for raw in (b'{"changes": {"strength": NaN}}', b'{"changes": {"seed": Infinity}}', b"not json",
                    b'{"changes": ' * 10000):
            status, _, body = http.request("POST", "/api/settings", raw, cookie=cookie)
            assert status in (400, 413), (raw[:30], status, body)
        status, _, _ = http.request("POST", "/api/settings", b'{"changes": {"paused": true}}', cookie=cookie,
                                    headers={"Content-Type": "text/plain"})  # a form's "simple" request
        assert status == 415
        assert app.store.snapshot() == before  # all or nothing: strength 0.2 was not applied with the bad seed


def test_the_obs_password_never_reaches_the_page(app):
    with running_page(app) as page:
        http = Http(page.port)
        cookie = http.login(token_of(page))
        _, _, state = http.request("GET", "/api/state", cookie=cookie)
        status, _, schema = http.request("GET", "/api/schema", cookie=cookie)
        assert status == 200 and b'"prompt"' in schema
        hello = asyncio.run(page_hello(page.port, cookie))
        for text in (state.decode(), schema.decode(), str(hello)):
            assert SECRET_PASSWORD not in text
            assert '"obs_password"' not in text and "'obs_password'" not in text  # not even the field
        assert hello["app"]["obs_port"] == 4455 and hello["settings"]["width"] == 64  # the rest is shown


def test_presets_are_saved_loaded_and_deleted_through_the_preset_store(app, config_dir):
    with running_page(app) as page:
        http = Http(page.port)
        cookie = http.login(token_of(page))
        app.store.apply({"prompt": "foggy harbour", "strength": 0.3}, origin="test")
        status, _, body = http.request("PUT", "/api/presets/harbour", cookie=cookie)
        assert status == 200 and (config_dir / "presets" / "harbour.json").is_file(), body
        app.store.apply({"prompt": "something else", "strength": 0.9}, origin="test")
        status, _, body = http.request("POST", "/api/presets/harbour/load", cookie=cookie)
        assert status == 200, body
        assert (app.store.current.prompt, app.store.current.strength, app.store.current.preset) == \
            ("foggy harbour", 0.3, "harbour")
        status, _, body = http.request("POST", "/api/presets/nothing-here/load", cookie=cookie)
        assert status == 404 and b"no preset named" in body
        status, _, body = http.request("PUT", "/api/presets/bad*name", cookie=cookie)
        assert status == 400 and b'"field":"preset"' in body
        assert http.request("PUT", "/api/presets/..%2Fescape", cookie=cookie)[0] == 404  # no route, no file
        assert sorted(p.name for p in config_dir.rglob("*.json")) == ["harbour.json"]
        assert http.request("DELETE", "/api/presets/harbour", cookie=cookie)[0] == 200
        assert not (config_dir / "presets" / "harbour.json").exists()
        assert http.request("DELETE", "/api/presets/harbour", cookie=cookie)[0] == 404


def test_stop_closes_the_port_and_ends_the_server_thread(app):
    with running_page(app) as page:
        http = Http(page.port)
        cookie = http.login(token_of(page))
        assert http.upgrade(cookie=cookie) == 101
        port = page.port
    assert wait_for(lambda: "dreamcam-web" not in [t.name for t in threading.enumerate()], 5)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with socket.socket() as again:  # the next app can listen there at once
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))


def test_a_taken_port_is_one_clear_line_before_the_model_loads(tmp_path, config_dir):
    from test_cli import dreamcam

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run(dreamcam("run", "--sink", "null", "--model", str(tmp_path / "no-model"),
                                         "--control-port", "0", "--web-port", str(port)),
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert f"control page: cannot listen on 127.0.0.1:{port}" in result.stderr and "--web-port" in result.stderr
    assert "Traceback" not in result.stderr and "no-model" not in result.stderr  # refused before the model load


def test_dreamcam_run_prints_the_page_address_with_the_token(tiny_model_dir, config_dir):
    """The address `dreamcam run` prints opens the page (the token in it is the install's secret)."""
    import os
    import re
    import signal

    from test_cli import dreamcam, free_port

    port = free_port()
    proc = subprocess.Popen(
        dreamcam("run", "--model", str(tiny_model_dir), "--tiny-vae", str(tiny_model_dir / "taesd"), "--device", "cpu",
                 "--engine", "eager", "--size", "64", "--sink", "null", "--control-port", "0", "--web-port", str(port)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        address = None
        for line in proc.stdout:
            found = re.search(r"control page: (http://\S+)", line)
            if found:
                address = found.group(1)
                break
        assert address is not None, proc.stderr.read() if proc.poll() is not None else "no address printed"
        token = (config_dir / "control-token").read_text().strip()
        assert address == f"http://127.0.0.1:{port}/?token={token}"
        http = Http(port)
        cookie = http.login(token)
        status, _, body = http.request("GET", "/api/state", cookie=cookie)
        assert status == 200 and b'"web_port":' + str(port).encode() in body.replace(b" ", b"")
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
