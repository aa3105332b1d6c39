"""The local control server: authenticated JSON lines over real TCP sockets on 127.0.0.1, served
by a real running app (pass-through processor), driven as controllers, browsers and floods would."""

from __future__ import annotations

import http.client
import json
import socket
import stat
import threading
import time
import tracemalloc
import urllib.error
import urllib.request

import pytest

from dreamcam.plugin import config as cfg
from dreamcam.plugin import secret
from dreamcam.plugin.app import DreamcamApp
from dreamcam.plugin.control_server import (MAX_CONNECTIONS, ControlServer, bind_listener, send_event,
                                            send_settings)
from dreamcam.plugin.messages import MAX_MESSAGE_BYTES, encode
from dreamcam.plugin.processor import PassThrough
from dreamcam.plugin.settings import AppSettings, StreamSettings
from dreamcam.plugin.sinks import NullSink
from plugin_helpers import dreamcam_threads, wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(cfg.CONFIG_ENV, str(tmp_path / "cfg"))
    return tmp_path / "cfg"


def start_app(**server_options):
    app = DreamcamApp(AppSettings(control_port=0), StreamSettings(prompt="start", width=64, height=64),
                      sink=NullSink(), processor=PassThrough())
    server = ControlServer(app.store, app.board, port=0, **server_options)
    app.add_service(server)
    app.start()
    return app, server


@pytest.fixture
def running_app(config_dir):
    app, server = start_app()
    yield app, server.port
    app.stop()


@pytest.fixture
def quick_server(config_dir):
    """A server whose idle timeout is short, so the pool tests do not wait long."""
    app, server = start_app(idle_timeout=0.5)
    yield app, server
    app.stop()


def line(event: dict, token: str | None) -> bytes:
    data = dict(event) if token is None else {"token": token, **event}
    return (json.dumps(data) + "\n").encode()


def converse(port: int, payload: bytes, timeout: float = 5.0) -> tuple[list[dict], bool]:
    """Send raw bytes on one connection; the replies read until the server closes, and whether it
    closed by itself (True) or we gave up waiting (False)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(payload)
        replies, closed = [], False
        reader = conn.makefile("rb")
        try:
            for raw in iter(reader.readline, b""):
                replies.append(json.loads(raw))
            closed = True
        except socket.timeout:
            pass
    return replies, closed


# ---- the secret ------------------------------------------------------------------------------
def test_the_secret_is_made_on_first_run_owner_only_and_rotates(config_dir):
    path = config_dir / secret.FILE_NAME
    assert not path.exists()
    app, server = start_app()
    try:
        assert path.is_file()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        token = path.read_text().strip()
        assert secret.TOKEN_FORMAT.match(token) and len(token) >= 43
        assert secret.load_or_create() == token  # read again, not replaced
        assert send_settings({"prompt": "with the token"}, port=server.port)["ok"]
        new = secret.rotate()
        assert new != token and stat.S_IMODE(path.stat().st_mode) == 0o600
        old_reply = send_settings({"prompt": "old token"}, port=server.port, token=token)
        assert not old_reply["ok"] and "unauthorized" in old_reply["error"]
        assert send_settings({"prompt": "new token"}, port=server.port, token=new)["ok"]  # no restart needed
        assert app.store.current.prompt == "new token"
    finally:
        app.stop()


def test_a_secret_others_could_read_or_that_is_not_ours_is_not_used(config_dir, monkeypatch):
    token = secret.load_or_create()
    path = secret.secret_path()
    path.chmod(0o644)
    assert secret.read() == token and stat.S_IMODE(path.stat().st_mode) == 0o600  # made private again
    path.write_text("not a token!\n")
    with pytest.raises(secret.SecretError, match="malformed.*dreamcam token --rotate"):
        secret.read()
    assert secret.TOKEN_FORMAT.match(secret.rotate())
    import os

    real_uid = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: real_uid + 1)  # as if another user planted the file
    with pytest.raises(secret.SecretError, match="belongs to another user"):
        secret.read()


def test_processes_creating_the_secret_at_once_agree(tmp_path):
    """Eight real processes create the secret in an empty folder at the same moment."""
    import os
    import subprocess
    import sys

    env = {**os.environ, cfg.CONFIG_ENV: str(tmp_path / "fresh")}
    code = "from dreamcam.plugin import secret; print(secret.load_or_create())"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(8)]
    tokens = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert len(tokens) == 1 and all(p.returncode == 0 for p in procs)
    assert (tmp_path / "fresh" / secret.FILE_NAME).read_text().strip() == tokens.pop()
    assert [p.name for p in (tmp_path / "fresh").iterdir()] == [secret.FILE_NAME]  # no temporary files left


# ---- authentication --------------------------------------------------------------------------
def test_every_message_needs_the_token_and_a_refusal_says_where_it_is(running_app, caplog):
    app, port = running_app
    token = secret.load_or_create()
    for sent in (None, "wrong", "", 12345, token[:-1], token + "x"):
        replies, closed = converse(port, line(encode("settings", prompt="intruder"), sent)
                                   + line(encode("settings", prompt="second line"), token))
        assert closed and len(replies) == 1, replies  # refused, and the rest of the connection with it
        assert not replies[0]["ok"] and "unauthorized" in replies[0]["error"]
        assert str(secret.secret_path()) in replies[0]["error"] and "dreamcam token" in replies[0]["error"]
        assert set(replies[0]) == {"ok", "error"}  # nothing about the settings for strangers
    assert app.store.current.prompt == "start"
    hello, closed = converse(port, line(encode("hello"), token) + line(encode("bye"), token))
    assert [r["ok"] for r in hello] == [True, True] and closed and hello[0]["settings"]["prompt"] == "start"
    assert token not in caplog.text


def test_an_http_post_from_a_browser_is_refused_and_its_body_never_applied(running_app):
    """What a web page's `fetch("http://127.0.0.1:7861", {method: "POST", body})` sends, byte for
    byte: even a body that holds the right token is never read."""
    app, port = running_app
    body = line(encode("settings", prompt="from a web page", paused=True), secret.load_or_create())
    request = (b"POST / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nOrigin: https://evil.example\r\n"
               b"Content-Type: text/plain;charset=UTF-8\r\nContent-Length: %d\r\n\r\n" % (port, len(body)) + body)
    replies, closed = converse(port, request)
    assert closed and len(replies) == 1 and not replies[0]["ok"]
    assert "HTTP" in replies[0]["error"]
    assert app.store.current.prompt == "start" and not app.store.current.paused
    assert app.store.version == 0


def test_browser_style_requests_with_urllib_get_no_http_answer(running_app):
    app, port = running_app
    body = json.dumps({"token": secret.load_or_create(), **encode("settings", prompt="urllib")}).encode()
    for request in (urllib.request.Request(f"http://127.0.0.1:{port}/", data=body, method="POST",
                                           headers={"Content-Type": "text/plain", "Origin": "null"}),
                    urllib.request.Request(f"http://127.0.0.1:{port}/?prompt=urllib")):
        with pytest.raises((urllib.error.URLError, http.client.HTTPException, OSError)) as failure:
            urllib.request.urlopen(request, timeout=5)
        assert not isinstance(failure.value, urllib.error.HTTPError)  # no HTTP reply at all
        assert "timed out" not in str(failure.value)
    assert app.store.current.prompt == "start" and app.store.version == 0


def test_the_first_invalid_line_closes_the_connection(running_app):
    app, port = running_app
    token = secret.load_or_create()
    good = line(encode("settings", prompt="never"), token)
    for bad, words in ((b"this is not json\n", "not JSON"), (b'["a list"]\n', "expected a JSON object"),
                       (line({"other": 1}, token), "other: unknown key"),
                       (line({}, token), "not a dreamcam message"),
                       (line(encode("status"), token), "kind 'status' is not accepted"),
                       (line(encode("launch"), token), "kind 'launch' is not accepted"),
                       (line({"dreamcam": {"v": 2, "kind": "settings"}}, token), "protocol version"),
                       (line({"extra": 1, **encode("hello")}, token), "extra: unknown key")):
        replies, closed = converse(port, bad + good)
        assert closed and len(replies) == 1, (bad, replies)
        assert not replies[0]["ok"] and words in replies[0]["error"], replies[0]
    assert app.store.current.prompt == "start"


# ---- settings over the socket ----------------------------------------------------------------
def test_settings_update_over_the_socket(running_app):
    app, port = running_app
    reply = send_settings({"prompt": "a cat", "strength": 0.3}, port=port)
    assert reply["ok"] and reply["settings"]["prompt"] == "a cat"
    assert app.store.current.strength == 0.3
    assert "fps_out" in reply["status"]


def test_refused_updates_change_nothing_name_the_field_and_keep_the_connection(running_app):
    app, port = running_app
    token = secret.load_or_create()
    replies, closed = converse(port, line(encode("settings", prompt="half", colour="red"), token)
                               + line(encode("settings", prompt="half", strength=-1), token)
                               + line(encode("settings", prompt="z" * 5000), token)
                               + line(encode("settings", prompt="applied"), token) + line(encode("bye"), token))
    assert closed and [r["ok"] for r in replies] == [False, False, False, True, True]
    assert replies[0]["error"].startswith("rejected update: colour: unknown setting (known: ")
    assert "strength" in replies[0]["error"] and "prompt" in replies[0]["error"]
    assert "strength" in replies[1]["error"] and "prompt" in replies[2]["error"]
    assert replies[0]["settings"]["prompt"] == "start"  # the reply shows what is in force
    assert app.store.current.prompt == "applied" and app.store.current.strength == 0.5
    assert app.store.version == 1


def test_numbers_that_are_not_numbers_get_a_reply_and_no_traceback(running_app, caplog):
    """NaN and Infinity are bad values (refused by the schema, the connection kept); what cannot be
    read as JSON at all (an integer of 5000 digits, deep nesting) is a bad line (closed)."""
    app, port = running_app
    token = secret.load_or_create()

    def request(raw: bytes) -> bytes:
        return b'{"token": "%s", "dreamcam": {"v": 1, "kind": "settings", %s}}\n' % (token.encode(), raw)

    replies, closed = converse(port, request(b'"seed": NaN') + request(b'"strength": Infinity')
                               + request(b'"guidance_scale": -Infinity') + request(b'"strength": 1e400')
                               + line(encode("bye"), token))
    assert closed and [r["ok"] for r in replies] == [False, False, False, False, True], replies
    assert [r["error"].split(":")[1].strip() for r in replies[:4]] == ["seed", "strength", "guidance_scale", "strength"]
    for raw, words in ((b'"seed": ' + b"9" * 5000, "not JSON"),
                       (b'"t_index_list": ' + b"[" * 20000 + b"]" * 20000, "nested too deeply")):
        replies, closed = converse(port, request(raw) + line(encode("settings", prompt="never"), token))
        assert closed and len(replies) == 1 and words in replies[0]["error"], (raw[:40], replies)
    assert app.store.version == 0 and "Traceback" not in caplog.text


def test_preset_by_name(running_app):
    app, port = running_app
    cfg.save_preset("Ink", StreamSettings(prompt="black ink", seed=9))
    reply = send_settings({"preset": "Ink"}, port=port)
    assert reply["ok"] and app.store.current.prompt == "black ink" and app.store.current.preset == "Ink"
    reply = send_settings({"preset": "Nope"}, port=port)
    assert not reply["ok"] and "no preset named 'Nope'" in reply["error"]


# ---- limits ----------------------------------------------------------------------------------
def test_an_endless_line_is_refused_with_flat_memory(running_app):
    app, port = running_app
    assert not send_settings({"prompt": "y" * 100_000}, port=port)["ok"]
    flood = b"x" * 20_000_000  # no newline: 300 times the limit
    tracemalloc.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            sender = threading.Thread(target=_send_quietly, args=(conn, flood), daemon=True)
            sender.start()
            reply = json.loads(conn.makefile("rb").readline())
            sender.join(10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not reply["ok"] and f"longer than {MAX_MESSAGE_BYTES} bytes" in reply["error"]
    assert peak < 4 * MAX_MESSAGE_BYTES + 1_000_000, peak  # the server held about one line, not the flood
    assert send_settings({"prompt": "still fine"}, port=port)["ok"]


def _send_quietly(conn: socket.socket, data: bytes) -> None:
    try:
        conn.sendall(data)
    except OSError:  # the server hung up, as it should
        pass


def test_the_pool_is_bounded_busy_is_answered_and_idle_connections_time_out(quick_server):
    app, server = quick_server
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(MAX_CONNECTIONS)]
    try:
        assert wait_for(lambda: server.open_connections == MAX_CONNECTIONS, 5)
        replies, closed = converse(server.port, line(encode("hello"), secret.load_or_create()))
        assert closed and len(replies) == 1 and replies[0]["busy"] and "busy" in replies[0]["error"]
        for conn in idle:  # each idle one is told why and closed after the idle timeout
            reply = json.loads(conn.makefile("rb").readline())
            assert not reply["ok"] and reply["error"].startswith("idle:")
            assert conn.recv(1) == b""
    finally:
        for conn in idle:
            conn.close()
    assert wait_for(lambda: server.open_connections == 0, 5)
    assert send_event(encode("hello"), port=server.port)["ok"]


def test_two_thousand_idle_sockets_make_no_threads_and_the_server_still_answers(quick_server):
    import resource

    app, server = quick_server
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    threads_before = threading.active_count()
    sockets = []
    try:
        for _ in range(2000):
            sockets.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        assert wait_for(lambda: server.refused + server.admitted >= 2000, 30), (server.refused, server.admitted)
        assert server.refused > 1000  # answered "busy" and closed, not queued
        assert threading.active_count() <= threads_before
        assert server.open_connections <= MAX_CONNECTIONS
    finally:
        for conn in sockets:
            conn.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert send_settings({"prompt": "after the flood"}, port=server.port)["ok"]
    assert app.store.current.prompt == "after the flood"


def test_a_burst_of_200_clients_is_all_answered(running_app):
    app, port = running_app
    token = secret.load_or_create()
    results: list = [None] * 200
    go = threading.Event()

    def client(i: int) -> None:
        go.wait()
        try:
            results[i] = send_settings({"prompt": f"client {i}"}, port=port, timeout=10, token=token)
        except Exception as exc:  # noqa: BLE001 - recorded and asserted below
            results[i] = exc

    threads = [threading.Thread(target=client, args=(i,)) for i in range(200)]
    for thread in threads:
        thread.start()
    go.set()
    for thread in threads:
        thread.join(60)
    failures = [r for r in results if not isinstance(r, dict)]
    assert failures == []  # no timeouts, no resets
    applied = [r for r in results if r["ok"]]
    busy = [r for r in results if not r["ok"]]
    assert all(r.get("busy") for r in busy)  # only "busy", after the client's retries
    assert len(applied) >= 190, len(busy)
    assert app.store.version == len(applied)


# ---- lifecycle -------------------------------------------------------------------------------
def test_server_stops_with_the_app(running_app):
    app, port = running_app
    app.stop()
    assert dreamcam_threads() == []
    with pytest.raises(ConnectionError, match="no dreamcam app answers"):
        send_settings({"prompt": "late"}, port=port, timeout=1)


def test_a_taken_port_is_one_clear_error(config_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"control port 127.0.0.1:{port} is in use: another Dreamcam.*--control-port"):
            bind_listener("127.0.0.1", port)
    listener = bind_listener("127.0.0.1", 0)  # reuse of the address is set on this socket only
    listener.close()
    assert not getattr(__import__("socketserver").TCPServer, "allow_reuse_address")
