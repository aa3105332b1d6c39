"""ControlNet and LoRA slots from the settings to the running stream (tiny random models on the CPU,
real threads): loads run in the background while frames keep coming, the swap happens between two
frames, a failed load is one error line and changes nothing, weights and scales apply at once, and
`dreamcam set` over the real control socket moves a LoRA weight and a ControlNet scale."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
from typer.testing import CliRunner

from app_parts import RecordingSink, StillCamera
from dreamcam.plugin import config as cfg
from dreamcam.plugin.app import DreamcamApp
from dreamcam.plugin.cli import app as cli_app
from dreamcam.plugin.conditioner import Loaders, read_lora
from dreamcam.plugin.conditioning import absolute_source, conditioning_of, slot_options
from dreamcam.plugin.conditioning_loader import FAILED, LOADED, LOADING, BackgroundLoader, Request
from dreamcam.plugin.control_server import ControlServer
from dreamcam.plugin.pipeline import build_processor
from dreamcam.plugin.settings import AppSettings, SettingsError, StreamSettings
from dreamcam.plugin.sources import SourceError
from plugin_helpers import dreamcam_threads, wait_for

SIZE = 64


@pytest.fixture(autouse=True)
def config_home(tmp_path, monkeypatch):
    monkeypatch.setenv(cfg.CONFIG_ENV, str(tmp_path / "cfg"))


@pytest.fixture(scope="module")
def models(tiny_model_dir, tiny_sd15_dir, tmp_path_factory):
    from dreamcam.core.tiny import make_tiny_controlnet, make_tiny_lora

    root = tmp_path_factory.mktemp("conditioning")
    return {"lora_a": str(make_tiny_lora(tiny_model_dir, root / "a", seed=1)),
            "lora_b": str(make_tiny_lora(tiny_model_dir, root / "b", seed=2)),
            "lora_sd15": str(make_tiny_lora(tiny_sd15_dir, root / "sd15", seed=3)),
            "controlnet": str(make_tiny_controlnet(tiny_model_dir, root / "cn", seed=4))}


@pytest.fixture(scope="module")
def app_settings(tiny_model_dir):
    return AppSettings(model=str(tiny_model_dir), tiny_vae=str(tiny_model_dir / "taesd"), device="cpu",
                       dtype="float32", engine="eager", control_port=0, web_port=0)


class Gate:
    """A LoRA reader that waits until the test opens it, then reads for real (the slow edge is the
    file read; everything after it is the app's own code)."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.waiting = threading.Event()
        self.sources: list[str] = []

    def read(self, stack, source):
        self.sources.append(source)
        self.waiting.set()
        assert self.open.wait(60), "the test never opened the gate"
        return read_lora(stack, source)


def start(app_settings, initial, loaders=None, control_source=None):
    initial = dataclasses.replace(initial, width=SIZE, height=SIZE)
    processor = build_processor(app_settings, initial, local_files_only=True, loaders=loaders,
                                control_source=control_source)
    sink = RecordingSink()
    app = DreamcamApp(app_settings, initial, source=StillCamera(SIZE, SIZE, fps=30), sink=sink, processor=processor)
    app.start()
    return app, processor, sink


def settled(sink, app, count=3):
    """The output once `count` frames in a row are equal (a still camera, no filter: one image),
    among frames published after the one that may be on its way to the sink now."""
    start = sink.count() + 1

    def same():
        frames = [img for _, img in sink.frames[start:][-count:]]
        return len(frames) == count and all(np.array_equal(frames[0], f) for f in frames)
    assert wait_for(same, timeout=30), app.board.latest()
    return sink.last()


def frames_after(sink, n):
    start = sink.count()
    assert wait_for(lambda: sink.count() >= start + n, timeout=30)
    return sink.last()


# ---- settings, CLI shorthand -------------------------------------------------------------------
def test_slots_read_from_settings_and_the_cli_shorthand():
    s = StreamSettings(lora_2="b.safetensors", lora_2_weight=0.3, controlnet_1="canny:C:\\nets\\cn",
                       controlnet_1_scale=0.8)
    wanted = conditioning_of(s)
    assert [(l.slot, l.source, l.weight) for l in wanted.loras] == [(2, "b.safetensors", 0.3)]
    assert [(c.preprocessor, c.source, c.scale) for c in wanted.controlnets] == [("canny", "C:\\nets\\cn", 0.8)]
    assert wanted.key("controlnets") == ((1, "canny", "C:\\nets\\cn"),)  # no depth net: the depth model is no key
    assert conditioning_of(StreamSettings(lora_2_weight=0.9)).key("loras") == ()  # numbers are never keys
    assert slot_options("lora", ["style.safetensors@0.7", "owner/lora"], {}) == {
        "lora_1": "style.safetensors", "lora_1_weight": 0.7, "lora_2": "owner/lora"}
    assert slot_options("controlnet", ["canny:lllyasviel/sd-controlnet-canny@0.8"], {}) == {
        "controlnet_1": "canny:lllyasviel/sd-controlnet-canny", "controlnet_1_scale": 0.8}
    for kind, items, explicit, words in [
        ("lora", ["x@heavy"], {}, "SOURCE@NUMBER"), ("lora", ["a", "b", "c", "d", "e"], {}, "at most 4"),
        ("lora", ["x@3"], {}, "lora_1_weight: must be from -2.0 to 2.0"),
        ("lora", ["x"], {"lora_1": "y"}, "--lora-1 also sets"), ("controlnet", ["cany:x"], {}, "PREPROCESSOR:SOURCE")]:
        with pytest.raises(SettingsError, match=words):
            slot_options(kind, items, explicit)
    with pytest.raises(SettingsError, match="canny_low: must be at most canny_high"):
        conditioning_of(StreamSettings(canny_low=300.0, canny_high=200.0))


def test_dreamcam_status_lists_the_slots_in_use_and_folds_those_that_are_off():
    from dreamcam.plugin.live_status import state_lines

    values = StreamSettings(lora_1="a.safetensors", controlnet_2="canny:x").as_dict()
    lines = state_lines({"settings": values, "status": {}})
    shown = {line.split("=")[0].strip() for line in lines if line.startswith("  ") and "=" in line.split()[1:2]}
    assert {"lora_1", "lora_1_weight", "controlnet_2", "controlnet_2_scale", "canny_low", "prompt"} <= shown
    assert not shown & {"lora_2", "lora_2_weight", "controlnet_1", "depth_model", "ip_adapter_scale"}
    assert lines[-1] == ("  (off, not shown: controlnet_N (N = 1, 3), controlnet_N_scale (N = 1, 3), depth_model, "
                         "ip_adapter, ip_adapter_image, ip_adapter_scale, lora_N (N = 2-4), lora_N_weight (N = 2-4))")


def test_presets_keep_weights_and_scales_but_not_sources():
    result = CliRunner().invoke(cli_app, ["preset", "save", "Look", "lora_1=owner/style", "lora_1_weight=0.4",
                                          "controlnet_1_scale=0.6", "prompt=ink"])
    assert result.exit_code == 0 and "not in presets (not saved): lora_1" in result.output, result.output
    saved = cfg.load_preset("Look")
    assert saved["lora_1_weight"] == 0.4 and saved["controlnet_1_scale"] == 0.6 and "lora_1" not in saved


def test_dreamcam_set_sends_local_sources_as_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "style.safetensors").write_bytes(b"")
    (tmp_path / "nets").mkdir()
    assert absolute_source("lora_1", "style.safetensors") == str(tmp_path / "style.safetensors")
    assert absolute_source("controlnet_1", "canny:nets") == f"canny:{tmp_path / 'nets'}"
    assert absolute_source("lora_1", "owner/style") == "owner/style"  # not here: a hub id, sent as typed
    assert absolute_source("prompt", "nets") == "nets" and absolute_source("lora_1", None) is None


def test_cli_lora_shorthand_loads_at_start_and_a_wrong_family_fails_with_one_line(app_settings, models, tmp_path):
    base = ["run", "--model", app_settings.model, "--tiny-vae", app_settings.tiny_vae, "--device", "cpu",
            "--engine", "eager", "--size", str(SIZE), "--control-port", "0", "--web-port", "0", "--sink",
            f"file:{tmp_path / 'out.mp4'}", "--frames", "2", "--similarity-filter"]
    runner = CliRunner()
    ok = runner.invoke(cli_app, base + ["--lora", f"{models['lora_a']}@0.5"], env={"HF_HUB_OFFLINE": "1"})
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(cli_app, base + ["--overwrite", "--lora", models["lora_sd15"]], env={"HF_HUB_OFFLINE": "1"})
    assert bad.exit_code == 1
    lines = [line for line in bad.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "SD 1.5 LoRA" in lines[0] and "use a LoRA trained for SD 2.1" in lines[0], bad.stderr


def swap_until(loader, state):
    """Swap (as the frame loop does between frames) until an outcome in `state` came; all outcomes."""
    outcomes = []
    assert wait_for(lambda: outcomes.extend(loader.swap()) or any(o.state == state for o in outcomes))
    return outcomes


# ---- the loader --------------------------------------------------------------------------------
def test_the_background_loader_loads_once_drops_superseded_results_and_installs_in_the_callers_thread():
    loader = BackgroundLoader()
    gate, calls, installed = threading.Event(), [], []

    def request(key, fail=False):
        def load():
            calls.append(key)
            assert gate.wait(10)
            if fail:
                raise ValueError(f"{key}: broken file")
            return key
        return Request(key, load, lambda value: installed.append((value, threading.current_thread())), what=key)

    try:
        loader.want("loras", request("A"))
        loader.want("loras", request("A"))  # the same key again: no second load
        assert wait_for(lambda: calls == ["A"])
        loader.want("loras", request("B"))  # while A loads: A's result will be dropped
        gate.set()
        outcomes = swap_until(loader, LOADED)
        assert [(o.state, o.what) for o in outcomes] == [(LOADING, "A"), ("dropped", "A"), (LOADING, "B"),
                                                         (LOADED, "B")]
        assert installed == [("B", threading.current_thread())] and loader.current("loras") == "B"
        loader.want("loras", request("C", fail=True))
        failed = swap_until(loader, FAILED)[-1]
        assert failed.error == "C: broken file" and loader.current("loras") == "B"
        assert not loader.busy() and calls == ["A", "B", "C"]  # a failed key is not tried again
    finally:
        loader.close()


# ---- LoRAs in a running stream ---------------------------------------------------------------
def test_a_slow_lora_load_keeps_frames_coming_swaps_between_frames_and_a_wrong_family_changes_nothing(
        app_settings, models):
    gate = Gate()
    app, processor, sink = start(app_settings, StreamSettings(similarity_filter=False), Loaders(lora=gate.read))
    try:
        plain = settled(sink, app)
        app.store.apply({"lora_1": models["lora_a"], "lora_1_weight": 0.7}, origin="test")
        assert gate.waiting.wait(30)
        t_load = sink.count()
        frames_after(sink, 5)  # the load waits: frames keep coming, with the settings in force
        assert wait_for(lambda: "loading LoRAs lora_1" in app.runner.error_text())
        assert all(np.array_equal(img, plain) for img in [i for _, i in sink.frames[t_load:]])
        gate.open.set()
        assert wait_for(lambda: app.runner.error_text() == "", timeout=30)  # loaded and swapped in
        styled = settled(sink, app)
        assert not np.array_equal(styled, plain)
        # every frame is the old output or the new one: the swap happened between two frames
        outputs = [0 if np.array_equal(img, plain) else 1 if np.array_equal(img, styled) else 2
                   for _, img in sink.frames[t_load:]]
        assert 2 not in outputs and outputs == sorted(outputs), outputs

        loads = processor.conditioner.loras.loads
        app.store.apply({"lora_1_weight": 0.0}, origin="test")  # a weight: at once, no file read
        assert np.array_equal(settled(sink, app), plain) and processor.conditioner.loras.loads == loads
        app.store.apply({"lora_1_weight": 0.7}, origin="test")
        assert np.array_equal(settled(sink, app), styled)

        app.store.apply({"lora_2": models["lora_sd15"]}, origin="test")  # the wrong family
        assert wait_for(lambda: "LoRAs not changed" in app.board.latest().error, timeout=30)
        error = app.board.latest().error
        assert "SD 1.5 LoRA" in error and "use a LoRA trained for SD 2.1" in error and "\n" not in error
        assert wait_for(lambda: app.store.current.lora_2 is None)  # the field is back to the value in force
        assert app.store.current.lora_1 == models["lora_a"] and app.store.origin == "loader"
        assert np.array_equal(frames_after(sink, 3), styled)  # the stream kept its weights and output
        assert list(processor.conditioner.loras.weights.values()) == [0.7]
    finally:
        assert app.stop()
    assert dreamcam_threads() == []


# ---- dreamcam set over the control socket ------------------------------------------------------
def test_dreamcam_set_changes_a_lora_weight_and_a_controlnet_scale_in_a_running_stream(app_settings, models):
    initial = StreamSettings(similarity_filter=False, lora_1=models["lora_a"], lora_1_weight=0.7,
                             controlnet_1=f"canny:{models['controlnet']}", controlnet_1_scale=1.0,
                             canny_low=20.0, canny_high=60.0)
    app, processor, sink = start(app_settings, initial)
    server = ControlServer(app.store, app.board, port=0)
    app.add_service(server)
    try:
        first = settled(sink, app)
        unit = processor.conditioner.nets[1].unit
        result = CliRunner().invoke(cli_app, ["set", "lora_1_weight=0.2", "controlnet_1_scale=0.4",
                                              "--port", str(server.port)])
        assert result.exit_code == 0 and "lora_1_weight=0.2" in result.output, result.output
        assert wait_for(lambda: unit.scale == 0.4 and list(processor.conditioner.loras.weights.values()) == [0.2])
        assert float(unit.scale_tensor) == pytest.approx(0.4)
        moved = settled(sink, app)
        assert not np.array_equal(moved, first)
        result = CliRunner().invoke(cli_app, ["set", "controlnet_1_scale=0", "--port", str(server.port)])
        assert result.exit_code == 0, result.output
        assert wait_for(lambda: not unit.active)  # scale 0: the net does no work
        assert not np.array_equal(settled(sink, app), moved)
        assert processor.conditioner.nets[1].unit is unit  # a scale never reloads the net
    finally:
        assert app.stop()
    assert dreamcam_threads() == []


def test_lora_fuse_folds_the_loras_live_and_weight_changes_stay_fused(app_settings, models):
    initial = StreamSettings(similarity_filter=False, lora_1=models["lora_a"], lora_1_weight=0.7)
    app, processor, sink = start(app_settings, initial)
    loras = processor.conditioner.loras
    try:
        live = settled(sink, app).astype(int)
        app.store.apply({"lora_fuse": True})
        assert wait_for(lambda: loras.fused)
        fused = settled(sink, app).astype(int)
        assert np.abs(fused - live).max() <= 1  # the same LoRA at the same weight, folded (float rounding)
        app.store.apply({"lora_1_weight": 0.1})
        assert wait_for(lambda: list(loras.weights.values()) == [0.1])
        moved = settled(sink, app).astype(int)
        assert loras.fused and not np.array_equal(moved, fused)  # refolded in place
        app.store.apply({"lora_fuse": False})
        assert wait_for(lambda: not loras.fused)
        assert np.abs(settled(sink, app).astype(int) - moved).max() <= 1
    finally:
        assert app.stop()


def test_a_controlnet_that_does_not_fit_is_one_error_and_the_stream_goes_on(app_settings, models, tiny_sd15_dir,
                                                                              tmp_path):
    from dreamcam.core.tiny import make_tiny_controlnet

    foreign = make_tiny_controlnet(tiny_sd15_dir, tmp_path / "cn15")
    app, processor, sink = start(app_settings, StreamSettings(similarity_filter=False))
    try:
        plain = settled(sink, app)
        app.store.apply({"controlnet_2": f"soft_edge:{foreign}"}, origin="test")
        assert wait_for(lambda: "ControlNets not changed" in app.board.latest().error, timeout=30)
        assert "SD 1.5 ControlNet" in app.board.latest().error
        assert wait_for(lambda: app.store.current.controlnet_2 is None)
        assert np.array_equal(frames_after(sink, 3), plain) and processor.conditioner.nets == {}
    finally:
        assert app.stop()


# ---- the external ControlNets' second source -------------------------------------------------
def test_the_control_source_keeps_the_newest_frame_and_says_when_it_is_lost_and_back():
    from dreamcam.plugin.control_feed import ControlFeed
    from plugin_helpers import UnpluggableSource

    source = UnpluggableSource(SIZE, SIZE, 30)
    feed = ControlFeed(source, "camera:1")
    feed.start()
    try:
        assert wait_for(lambda: feed.latest()[1] is not None)
        assert feed.latest()[1].shape == (SIZE, SIZE, 3) and feed.error == ""
        source.plugged.clear()
        assert wait_for(lambda: "control source camera:1 lost" in feed.error)
        index = feed.latest()[0]
        source.plugged.set()
        assert wait_for(lambda: feed.error == "" and feed.latest()[0] > index)
    finally:
        feed.close()
    assert "dreamcam-control-source" not in dreamcam_threads()


def test_an_external_controlnet_without_a_control_source_is_one_error(app_settings, models):
    app, processor, sink = start(app_settings, StreamSettings(similarity_filter=False))
    try:
        app.store.apply({"controlnet_1": f"external:{models['controlnet']}"}, origin="test")
        assert wait_for(lambda: "--control-source" in app.board.latest().error, timeout=30)
        assert wait_for(lambda: app.store.current.controlnet_1 is None) and processor.conditioner.nets == {}
    finally:
        assert app.stop()


# ---- IP-Adapter ------------------------------------------------------------------------------------
def test_ip_adapter_loads_in_the_background_a_new_image_is_only_encoded_and_a_bad_image_changes_nothing(
        tiny_sd15_dir, tmp_path):
    from PIL import Image

    from dreamcam.core.tiny import make_tiny_ip_adapter

    weights = make_tiny_ip_adapter(tiny_sd15_dir, tmp_path / "ip" / "models" / "ip-adapter_test.safetensors", seed=1)
    styles = []
    for seed in (1, 2):
        path = tmp_path / f"style{seed}.png"
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path)
        styles.append(str(path))
    (tmp_path / "notes.png").write_text("not an image")
    settings = AppSettings(model=str(tiny_sd15_dir), tiny_vae=str(tiny_sd15_dir / "taesd"), device="cpu",
                           dtype="float32", engine="eager", control_port=0, web_port=0)
    app, processor, sink = start(settings, StreamSettings(similarity_filter=False))
    try:
        plain = settled(sink, app)
        app.store.apply({"ip_adapter": str(weights), "ip_adapter_image": styles[0]}, origin="test")
        assert wait_for(lambda: processor.conditioner.ip_adapter is not None, timeout=60)
        first = settled(sink, app)
        assert not np.array_equal(first, plain)
        adapter = processor.conditioner.ip_adapter
        version = adapter.image_version
        app.store.apply({"ip_adapter_image": styles[1]}, origin="test")
        assert wait_for(lambda: adapter.image_version > version, timeout=60), app.runner.error_text()
        assert processor.conditioner.ip_adapter is adapter  # the same weights: only the image was encoded
        second = settled(sink, app)
        assert not np.array_equal(second, first)
        app.store.apply({"ip_adapter_image": str(tmp_path / "notes.png")}, origin="test")
        assert wait_for(lambda: "IP-Adapter not changed" in app.board.latest().error, timeout=60)
        assert wait_for(lambda: app.store.current.ip_adapter_image == styles[1])
        assert np.array_equal(frames_after(sink, 3), second)
    finally:
        assert app.stop()


class UnpluggableStill(StillCamera):
    """A second camera on a still scene that can be unplugged (reads and re-opens fail meanwhile)."""

    name = "camera:1"

    def __init__(self) -> None:
        super().__init__(SIZE, SIZE, fps=30, seed=9)
        self.plugged = threading.Event()
        self.plugged.set()

    def open(self) -> None:
        if not self.plugged.is_set():
            raise SourceError("camera:1 is unplugged")
        super().open()

    def read(self):
        if not self.plugged.is_set():
            raise SourceError("camera:1 stopped sending frames")
        return super().read()


def test_an_external_controlnet_follows_its_source_and_goes_off_while_the_source_is_lost(app_settings, models):
    second = UnpluggableStill()
    initial = StreamSettings(similarity_filter=False, controlnet_1=f"external:{models['controlnet']}")
    app, processor, sink = start(app_settings, initial, control_source=second)
    try:
        controlled = settled(sink, app)
        unit = processor.conditioner.nets[1].unit
        assert unit.active
        second.plugged.clear()
        assert wait_for(lambda: "control source camera:1 lost" in app.board.latest().error, timeout=30)
        assert "the external ControlNet is off" in app.board.latest().error
        assert wait_for(lambda: not unit.active)
        without = settled(sink, app)  # the stream goes on without that net
        assert not np.array_equal(without, controlled)
        second.plugged.set()
        assert wait_for(lambda: unit.active and "control source" not in app.board.latest().error, timeout=30)
        assert np.array_equal(settled(sink, app), controlled)
        assert app.store.current.controlnet_1 == initial.controlnet_1  # the setting never changed
    finally:
        assert app.stop()
    assert dreamcam_threads() == []
