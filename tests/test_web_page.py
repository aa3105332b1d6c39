"""The control page in a real headless Chromium (Debian's, through chromedriver) against the real
app on the tiny CPU model: the page is opened with the token, its prompt and a slider reach the
app's SettingsStore and change the preview, changes from the control port show up on the page, a
rejected value shows its error beside the field, presets round-trip, and a page of another origin
in the same browser cannot change anything."""

from __future__ import annotations

import http.server
import threading
import time

import pytest

from app_parts import RecordingSink, StillCamera
from dreamcam.plugin.app import DreamcamApp
from dreamcam.plugin.control_server import ControlServer, send_settings
from dreamcam.plugin.settings import AppSettings, StreamSettings
from plugin_helpers import wait_for
from web_helpers import chromium, running_page, screenshot_path

SIZE = 64
# the preview image's pixels, hashed in the page (the blob is same-origin: the canvas is readable)
PREVIEW_HASH = """
const img = document.getElementById('img-output');
if (!img.complete || !img.naturalWidth) return null;
const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
const g = c.getContext('2d'); g.drawImage(img, 0, 0);
const data = g.getImageData(0, 0, c.width, c.height).data;
let h = 2166136261;
for (let i = 0; i < data.length; i++) { h ^= data[i]; h = Math.imul(h, 16777619) >>> 0; }
return h + ':' + img.dataset.frames;
"""


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMCAM_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path / "config"


@pytest.fixture
def tiny_app(tiny_model_dir, config_dir):
    from dreamcam.plugin.pipeline import build_processor

    settings = AppSettings(model=str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd"), device="cpu",
                           dtype="float32", engine="eager", control_port=0)
    initial = StreamSettings(prompt="a grey stone wall", strength=0.5, similarity_filter=False, seed=3, width=SIZE,
                             height=SIZE)
    # a still scene with a fixed seed: once warmed up, the output is one picture until a setting changes
    return DreamcamApp(settings, initial, source=StillCamera(SIZE, SIZE, fps=10), sink=RecordingSink(),
                       processor=build_processor(settings, initial, local_files_only=True))


@pytest.fixture
def browser():
    driver = chromium()
    # the width of an OBS dock (headless windows are wider than they are asked to be)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 300, "height": 1200, "deviceScaleFactor": 1, "mobile": False})
    yield driver
    driver.quit()


def preview(driver) -> tuple[str, int] | None:
    value = driver.execute_script(PREVIEW_HASH)
    if value is None:
        return None
    pixels, frames = value.split(":")
    return pixels, int(frames)


def steady_preview(driver, timeout: float = 30) -> str:
    """The preview's pixels once two frames in a row were the same picture."""
    seen: list[tuple[str, int]] = []

    def steady() -> bool:
        now = preview(driver)
        if now and (not seen or now[1] > seen[-1][1]):
            seen.append(now)
        return len(seen) >= 3 and seen[-1][0] == seen[-2][0]
    assert wait_for(steady, timeout, 0.1), seen
    return seen[-1][0]


def preview_after_change(driver, old: str, timeout: float = 30) -> str:
    """The preview's new steady picture, once it differs from `old`."""
    assert wait_for(lambda: (preview(driver) or ("", 0))[0] not in ("", old), timeout, 0.1), "the preview did not change"
    return steady_preview(driver)


def click(driver, element_id: str):
    """Click as a user does, with the element scrolled to the middle (clear of the sticky bar)."""
    element = driver.find_element("id", element_id)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()
    return element


def value_of(driver, element_id: str):
    return driver.execute_script(f"return document.getElementById('{element_id}').value")


def text_of(driver, element_id: str) -> str:
    return driver.execute_script(f"return document.getElementById('{element_id}').textContent")


def open_page(driver, page) -> None:
    driver.get(page.url)
    base = f"http://127.0.0.1:{page.port}/"
    assert wait_for(lambda: driver.current_url == base, 15), driver.current_url  # the token left the address
    assert wait_for(lambda: driver.find_element("id", "link").get_attribute("data-state") == "live", 15)


def test_the_page_drives_the_running_app_and_shows_what_others_change(tiny_app, browser, tmp_path):
    from selenium.webdriver.common.keys import Keys

    control = ControlServer(tiny_app.store, tiny_app.board, port=0)
    tiny_app.add_service(control)
    with running_page(tiny_app) as page:
        open_page(browser, page)
        assert value_of(browser, "f-prompt") == "a grey stone wall"  # the settings in force
        before = steady_preview(browser)

        # the prompt: typing applies nothing; Apply does, and the preview changes
        prompt = browser.find_element("id", "f-prompt")
        prompt.clear()
        prompt.send_keys("a paper boat on a dark sea")
        time.sleep(1.0)
        assert tiny_app.store.current.prompt == "a grey stone wall"
        assert preview(browser)[0] == before
        click(browser, "f-prompt-apply")
        assert wait_for(lambda: tiny_app.store.current.prompt == "a paper boat on a dark sea", 15)
        after_prompt = preview_after_change(browser, before)
        assert tiny_app.runner.active_settings.prompt == "a paper boat on a dark sea"

        # a slider, moved with the keyboard as a user does: each step is one update
        strength = click(browser, "f-strength")  # the thumb sits in the middle: a click there keeps 0.5
        assert wait_for(lambda: tiny_app.store.current.strength == 0.5, 15)
        for _ in range(20):
            strength.send_keys(Keys.ARROW_RIGHT)
        assert wait_for(lambda: abs(tiny_app.store.current.strength - 0.7) < 1e-9, 15), tiny_app.store.current
        assert text_of(browser, "f-strength-value") == "0.70"
        preview_after_change(browser, after_prompt)

        # Enter applies the negative prompt (Shift+Enter would be a new line)
        negative = browser.find_element("id", "f-negative_prompt")
        negative.clear()
        negative.send_keys("people", Keys.ENTER)
        assert wait_for(lambda: tiny_app.store.current.negative_prompt == "people", 15)

        # changes from another surface (the control port, as `dreamcam set` sends them) show at once
        reply = send_settings({"prompt": "set from the terminal", "strength": 0.25, "cfg_type": "none"},
                              port=control.port)
        assert reply["ok"], reply
        assert wait_for(lambda: value_of(browser, "f-prompt") == "set from the terminal", 15), (
            value_of(browser, "f-prompt"), value_of(browser, "f-strength"), text_of(browser, "link"),
            browser.get_log("browser"))
        assert value_of(browser, "f-strength") == "0.25" and value_of(browser, "f-cfg_type") == "none"
        # ... but never overwrite what is being typed: the page offers the change instead
        prompt.send_keys(" and more")
        send_settings({"prompt": "set again"}, port=control.port)
        assert wait_for(lambda: "changed elsewhere" in text_of(browser, "f-prompt-note"), 15)
        assert value_of(browser, "f-prompt") == "set from the terminal and more"
        prompt.send_keys(Keys.ESCAPE)
        assert value_of(browser, "f-prompt") == "set again"

        # a rejected value: the error beside the field, the value in force kept, the widget back on it
        version = tiny_app.store.version
        indices = browser.find_element("id", "f-t_index_list")
        indices.send_keys("20,50", Keys.ENTER)
        assert wait_for(lambda: "t_index_list" in text_of(browser, "f-t_index_list-error"), 15)
        assert "49" in text_of(browser, "f-t_index_list-error")
        assert tiny_app.store.version == version and tiny_app.store.current.t_index_list is None
        assert value_of(browser, "f-t_index_list") == ""
        indices.send_keys("20,40", Keys.ENTER)
        assert wait_for(lambda: tiny_app.store.current.t_index_list == (20, 40), 15)
        # the store applies before the page hears back: wait for the page as for every other check here
        assert wait_for(lambda: text_of(browser, "f-t_index_list-error") == "", 15)

        # a toggle and a choice
        click(browser, "f-paused")
        assert wait_for(lambda: tiny_app.store.current.paused is True, 15)
        click(browser, "f-paused")
        assert wait_for(lambda: tiny_app.store.current.paused is False, 15)

        # the diffusion size, a live number field; the preview keeps the camera's aspect (the frames' size)
        width = browser.find_element("id", "f-width")
        assert width.get_attribute("step") == "8"
        driver_aspect = "return getComputedStyle(document.documentElement).getPropertyValue('--aspect').trim()"
        assert browser.execute_script(driver_aspect) == f"{SIZE} / {SIZE}"
        width.send_keys(Keys.CONTROL, "a")  # typed over, as a user does (clear() would send an empty value)
        width.send_keys(str(SIZE + 32), Keys.ENTER)
        assert wait_for(lambda: tiny_app.store.current.width == SIZE + 32, 15)
        assert wait_for(lambda: tiny_app.runner.history[-1][1]["size"] == (SIZE + 32, SIZE), 30)
        time.sleep(0.5)  # a preview frame or two at the new diffusion size
        assert browser.execute_script(driver_aspect) == f"{SIZE} / {SIZE}"

        # the status and its graph
        assert wait_for(lambda: text_of(browser, "st-fps_in") not in ("-", "0.0"), 15)
        assert text_of(browser, "st-latency_ms") != "-"
        assert tiny_app.settings.model.split("/")[-1] in text_of(browser, "engine")
        assert browser.execute_script("return document.documentElement.scrollWidth") <= 300  # no sideways scroll

        # the input beside the output, when asked
        click(browser, "show-input")
        assert wait_for(lambda: int(browser.execute_script(
            "return document.getElementById('img-input').dataset.frames || 0")) > 0, 15)
        click(browser, "show-input")

        browser.execute_script("window.scrollTo(0, 0)")
        browser.save_screenshot(str(screenshot_path(tmp_path / "control-page.png")))
        rejected = "/api/settings - Failed to load resource: the server responded with a status of 400"
        severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and rejected not in e["message"]]
        assert not severe, severe  # no script errors, nothing refused (CSP, missing files), but the bad list


def test_presets_from_the_page(tiny_app, browser, config_dir):
    with running_page(tiny_app) as page:
        open_page(browser, page)
        tiny_app.store.apply({"prompt": "moss on old stones", "strength": 0.4}, origin="test")
        assert wait_for(lambda: value_of(browser, "f-prompt") == "moss on old stones", 15)
        browser.find_element("id", "preset-name").send_keys("moss")
        click(browser, "preset-save")
        assert wait_for(lambda: (config_dir / "presets" / "moss.json").is_file(), 15)
        assert wait_for(lambda: value_of(browser, "preset-list") == "moss", 15)

        tiny_app.store.apply({"prompt": "something else", "strength": 0.9}, origin="test")
        assert wait_for(lambda: value_of(browser, "f-prompt") == "something else", 15)
        click(browser, "preset-load")
        assert wait_for(lambda: tiny_app.store.current.prompt == "moss on old stones", 15)
        assert tiny_app.store.current.strength == 0.4 and tiny_app.store.current.preset == "moss"
        assert wait_for(lambda: value_of(browser, "f-strength") == "0.4", 15)

        delete = click(browser, "preset-delete")
        assert delete.text == "Sure?" and (config_dir / "presets" / "moss.json").is_file()  # asks first
        delete.click()
        assert wait_for(lambda: not (config_dir / "presets" / "moss.json").exists(), 15)
        assert wait_for(lambda: value_of(browser, "preset-list") == "", 15)


class _EvilPage(http.server.BaseHTTPRequestHandler):
    """Another site on this machine (another port is another origin, yet the same site)."""

    target = 0

    def do_GET(self) -> None:
        body = f"""<!doctype html><script>
        window.results = {{}};
        const base = 'http://127.0.0.1:{self.target}';
        fetch(base + '/api/settings', {{method: 'POST', mode: 'no-cors', credentials: 'include',
              headers: {{'Content-Type': 'text/plain'}}, body: '{{"changes": {{"paused": true}}}}'}})
          .then(() => window.results.post = 'sent', e => window.results.post = 'error');
        fetch(base + '/api/state', {{credentials: 'include'}})
          .then(r => r.text()).then(t => window.results.read = t, e => window.results.read = 'blocked');
        const ws = new WebSocket('ws://127.0.0.1:{self.target}/ws');
        ws.onopen = () => {{ window.results.ws = 'open'; ws.send('{{"type": "preview", "kinds": ["input"]}}'); }};
        ws.onclose = () => {{ window.results.ws = window.results.ws || 'refused'; }};
        </script>""".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_a_page_of_another_origin_in_the_same_browser_changes_nothing(tiny_app, browser):
    with running_page(tiny_app) as page:
        open_page(browser, page)  # the browser holds the session cookie now
        before = tiny_app.store.snapshot()
        handler = type("Evil", (_EvilPage,), {"target": page.port})
        evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=evil.serve_forever, daemon=True).start()
        try:
            browser.get(f"http://127.0.0.1:{evil.server_address[1]}/")
            assert wait_for(lambda: len(browser.execute_script("return window.results") or {}) == 3, 15), \
                browser.execute_script("return window.results")
            results = browser.execute_script("return window.results")
        finally:
            evil.shutdown()
            evil.server_close()
        assert results["ws"] == "refused" and results["read"] == "blocked", results
        assert tiny_app.store.snapshot() == before and not tiny_app.store.current.paused
        assert page.feed.wanted == frozenset()  # no socket of the other page is open
